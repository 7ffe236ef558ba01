"""The Explain dock widget: Grad-CAM, SHAP and uncertainty heat maps over the image."""

from __future__ import annotations

import hashlib
import time

import napari  # noqa: F401 (names the viewer annotation napari looks for)
import numpy as np
from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton
from napari.layers import Image, Labels, Shapes
from napari.utils.notifications import show_error
from qtpy.QtWidgets import QFrame

from napari_histoseg.backends.local import LocalBackend
from napari_histoseg.explanations.cost import SECONDS_PER_MPX, estimate
from napari_histoseg.explanations.methods import ATTRIBUTIONS, DEFAULT_SALIENCY, DEFAULT_UNCERTAINTY
from napari_histoseg.plugin.widgets._layers import (
    Scrolling,
    level_data,
    placement,
    put_image,
    unwrap,
    visible_region,
)
from napari_histoseg.plugin.widgets._model_choice import ModelChoice, local_backend
from napari_histoseg.plugin.widgets._runner import Runner, RunsWork
from napari_histoseg.plugin.widgets._shapes import rasterise

_METHODS = [("Grad-CAM x input gradient", "gradcam-ixg"), ("Grad-CAM", "gradcam"), ("HiResCAM", "hirescam"),
            ("Input x gradient", "inputxgrad"), ("SHAP (GradientShap)", "shap"),
            ("SHAP over superpixels (Kernel SHAP)", "superpixel-shap"),
            ("Uncertainty: flips/turns + outline", "tta-boundary"), ("Uncertainty: flips/turns entropy", "tta-entropy"),
            ("Uncertainty: flips/turns spread", "tta"), ("Uncertainty: entropy", "entropy"),
            ("Uncertainty: MC dropout", "mc-dropout")]
#: the dropdown: the default saliency first, then the best uncertainty map, then the others
METHODS = sorted(_METHODS, key=lambda m: (m[1] != DEFAULT_SALIENCY, m[1] != DEFAULT_UNCERTAINTY,
                                          m[1] not in ATTRIBUTIONS))
TARGETS = [("predicted tumour", "mask"), ("a shape I drew", "shape"), ("everything shown", "all")]
#: value range of each method's map, and what high (red) and, for signed maps, negative (blue) mean
LEGEND = {
    "gradcam-ixg": ((0.0, 1.0), "", "drove the tumour call (areas, and the structures in them)"),
    "gradcam": ((0.0, 1.0), "", "drove the tumour call"),
    "hirescam": ((0.0, 1.0), "", "drove the tumour call"),
    "inputxgrad": ((-1.0, 1.0), "pushes towards not tumour", "pushes towards tumour"),
    "shap": ((-1.0, 1.0), "pushes towards not tumour", "pushes towards tumour"),
    "superpixel-shap": ((-1.0, 1.0), "region pushes towards not tumour", "region pushes towards tumour"),
    "entropy": ((0.0, 1.0), "", "model is unsure (p near 0.5)"),
    "tta-entropy": ((0.0, 1.0), "", "unsure over flips and turns (mean p near 0.5)"),
    "tta-boundary": ((0.0, 1.0), "", "unsure over flips/turns, or near the predicted outline: likely errors"),
    "mc-dropout": ((0.0, 0.25), "", "answer changes under dropout"),
    "tta": ((0.0, 0.25), "", "answer changes when the tile is flipped or turned"),
}


def heat_colormap(signed: bool):
    """One convention for every map: clear where the value is near 0, more opaque and red the
    higher it is (blue for a signed map's negative side), so the H&E stays readable."""
    from napari.utils.colormaps import Colormap

    if signed:
        return Colormap([[0.1, 0.3, 1, 0.7], [0.1, 0.3, 1, 0.0], [1, 0.1, 0, 0.0], [1, 0.1, 0, 0.7]],
                        controls=[0, 0.45, 0.55, 1], name="histoseg signed heat")
    return Colormap([[1, 0.9, 0, 0.0], [1, 0.6, 0, 0.0], [1, 0.45, 0, 0.45], [1, 0.05, 0, 0.7]],
                    controls=[0, 0.15, 0.5, 1], name="histoseg heat")


class ExplainWidget(RunsWork, Scrolling, Container):
    """Why the model decided, and where it is unsure, as layers over the image.

    Every map is clear where its value is low and red (more opaque) where it is high; a
    signed map is blue where it pushes the other way. The legend under the buttons says what
    red means for the chosen method; the map goes under the mask layers, so their outline
    stays visible. Results are
    cached, so switching back to a map already computed costs nothing.
    """

    def __init__(self, viewer: napari.viewer.Viewer, backend=None):
        super().__init__(labels=True, scrollable=True)
        self.viewer = viewer = unwrap(viewer)
        self.backend = backend or local_backend()
        self.cache: dict[str, np.ndarray] = {}

        self.image = ComboBox(label="Image", choices=self._choices(Image, rgb=True))
        self.method = ComboBox(label="Method", choices=METHODS, value=DEFAULT_SALIENCY,
                               tooltip="The estimate under the buttons says what the chosen method costs "
                                       "for the region before it runs (BENCHMARKS.md has measured times)")
        self.target = ComboBox(label="Explain", choices=TARGETS, value="mask",
                               tooltip="Which pixels' tumour score to explain (Grad-CAM and SHAP)")
        self.shapes = ComboBox(label="Shape layer", choices=self._choices(Shapes), visible=False)
        self.region = ComboBox(label="Region", choices=["visible area", "whole image"], value="visible area")
        self.model_choice = ModelChoice()
        self.layer = LineEdit(label="Grad-CAM layer", value="",
                              tooltip="A module path inside the network; empty: the default layer")
        self.run_button, self.cancel_button = PushButton(text="Explain"), PushButton(text="Cancel", enabled=False)
        self.legend = Label(value="")
        self.legend.native.setWordWrap(True)
        self.cost = Label(value="")
        self.cost.native.setWordWrap(True)
        self.rate = SECONDS_PER_MPX  # s per Mpx forward pass, learnt from this widget's runs
        self._timed = 0
        self.status = Label(value="Choose a method and press Explain.")
        self.status.native.setWordWrap(True)
        self.runner = Runner(self.status, self.run_button, self.cancel_button)
        self._bar = QFrame()
        self._bar.setFixedHeight(12)
        self._bar.setStyleSheet("background: qlineargradient(x1:0, y1:0, x2:1, y2:0, "
                                "stop:0 #1a4dff, stop:0.45 #ffffff, stop:0.55 #ffffff, stop:1 #ff1a00); "
                                "border: 1px solid #555;")
        self.extend([self.image, self.method, self.target, self.shapes, self.region,
                     *self.model_choice.backend_widgets, *self.model_choice.widgets, self.layer,
                     Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)])
        self.extend([self.cost, self.legend, self.status])
        for label, lines in ((self.cost, 3), (self.legend, 3), (self.status, 3)):  # wrapped text is never cut
            label.native.setMinimumHeight(lines * label.native.fontMetrics().lineSpacing() + 4)
        layout = self.body.layout()  # the colour bar goes right above its legend
        layout.insertWidget(next(i for i in range(layout.count()) if layout.itemAt(i).widget() is not None
                                 and layout.itemAt(i).widget().isAncestorOf(self.legend.native)), self._bar)
        self.fit(460)
        self.method.changed.connect(self._on_method)
        for w in (self.image, self.region):
            w.changed.connect(self._update_cost)
        viewer.camera.events.zoom.connect(self._update_cost)
        self.target.changed.connect(lambda v: setattr(self.shapes, "visible", v == "shape"))
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda e=None: self.reset_choices())
        self._on_method()

    def _choices(self, kind, rgb=False):
        return lambda _w=None: [(ly.name, ly) for ly in self.viewer.layers
                                if isinstance(ly, kind) and (not rgb or ly.rgb)]

    def _on_method(self, _=None):
        method = self.method.value
        (lo, hi), low, high = LEGEND[method]
        clear = "clear 0: no effect" if lo < 0 else f"clear {lo:g}: low"
        self.legend.value = (f"red {hi:g}: {high}  ·  {clear}" + (f"  ·  blue {lo:g}: {low}" if lo < 0 else ""))
        half = "stop:0 #1a4dff, stop:0.45 #ffffff, " if lo < 0 else "stop:0 #ffffff, stop:0.15 #ffffff, "
        self._bar.setStyleSheet(f"background: qlineargradient(x1:0, y1:0, x2:1, y2:0, {half}"
                                "stop:1 #ff1a00); border: 1px solid #555;")
        self.target.enabled = method in ATTRIBUTIONS
        self.layer.visible = method in ("gradcam", "hirescam", "gradcam-ixg")
        self._update_cost()

    def _update_cost(self, _=None):
        """What the chosen method will cost for the region, before it runs."""
        try:
            self.cost.value = self._cost_text()
        except Exception:  # noqa: BLE001 - an estimate never stops the widget (nor a closed one)
            pass

    def _cost_text(self) -> str:
        layer = self.image.value
        if layer is None:
            return ""
        shape, region = self._extent(layer)
        c = estimate(self.method.value, shape, region, seconds_per_mpx=self.rate)
        secs = c["seconds"]
        when = f"~{secs:.0f} s" if secs < 120 else f"~{secs / 60:.0f} min"
        where = ("the whole view at once" if self.method.value == "superpixel-shap"
                 else f"{c['tiles']} tile" + ("s" if c["tiles"] > 1 else ""))
        return (f"Estimated {when} on this computer for {region[3]} x {region[2]} px "
                f"({c['passes']:g} forward passes per pixel, {where})")

    # -- running ------------------------------------------------------------------
    def _extent(self, layer):
        """The shape of the level explained and the region (y, x, h, w) in its pixels."""
        level = layer.data_level if layer.multiscale else 0
        shape = level_data(layer, level).shape
        if self.region.value == "visible area":
            return shape, tuple(visible_region(layer, level))
        return shape, (0, 0, shape[0], shape[1])

    def _request(self):
        layer = self.image.value
        if layer is None:
            raise ValueError("open an H&E image first")
        level = layer.data_level if layer.multiscale else 0
        data = level_data(layer, level)
        y0, x0, h, w = self._extent(layer)[1]
        method = self.method.value
        target = self.target.value if method in ATTRIBUTIONS else "mask"
        if target == "shape":
            target = self._shape_mask(layer, level, (y0, x0, h, w))
        opts = {"region": (y0, x0, h, w), "target": target}
        if method in ("gradcam", "hirescam", "gradcam-ixg") and self.layer.value.strip():
            opts["layer"] = self.layer.value.strip()
        return layer, level, data, method, opts

    def _shape_mask(self, layer, level, region):
        shapes = self.shapes.value
        if shapes is None or len(shapes.data) == 0:
            raise ValueError("draw a shape (Shapes layer) around the region to explain")
        mask = rasterise(shapes, layer, level, region)
        if not mask.any():
            raise ValueError("the drawn shape is outside the region explained")
        return mask

    @staticmethod
    def _key(layer, level, method, opts, ref):
        target = opts["target"]
        t = hashlib.blake2b(target.tobytes(), digest_size=8).hexdigest() if isinstance(target, np.ndarray) else target
        return f"{layer.name}|{level}|{method}|{opts['region']}|{t}|{opts.get('layer')}|{ref}"

    def run(self):
        try:
            layer, level, data, method, opts = self._request()
            ref = self.model_choice.ref()
            self.backend = self.model_choice.backend(self.backend)  # this computer or a server
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot explain: {e}")
            return None
        key = self._key(layer, level, method, opts, ref)
        place = placement(layer, level, opts["region"][:2])
        if key in self.cache:
            self._show(self.cache[key], method, place)
            self.status.value = "Shown from the cache (computed earlier)."
            return None

        backend = self.backend
        planned = estimate(method, data.shape, opts["region"], seconds_per_mpx=1.0)
        started = time.perf_counter()
        return self.runner.start(lambda *_: backend.explain(data, ref, method, **opts),
                                 lambda heat: self._on_result(heat, key, method, place, planned, started),
                                 what="Explanation",
                                 label="Explaining", cancelled="Cancelled; nothing was added.",
                                 message=f"Computing {dict((v, k) for k, v in METHODS)[method]}…")

    def _on_result(self, heat, key, method, place, planned=None, started=None):
        self.cache[key] = heat
        took = None
        if planned is not None and started is not None and isinstance(self.backend, LocalBackend):
            took = time.perf_counter() - started
            self._timed += 1
            if planned["seconds"] > 0 and self._timed > 1:  # learn this computer's speed (not from
                self.rate = float(np.clip(took / planned["seconds"], 0.05, 20.0))  # the run that loaded the model)
                self._update_cost()
        self._show(heat, method, place)
        return self.status.value + (f" (took {took:.0f} s)" if took is not None else "")

    def _show(self, heat, method, place):
        (lo, hi), _, _ = LEGEND[method]
        title = dict((v, k) for k, v in METHODS)[method]
        name = f"explain: {title}"
        cmap = heat_colormap(signed=lo < 0)
        put_image(self.viewer, name, heat, place, colormap=cmap, contrast_limits=(lo, hi),
                  opacity=1.0, blending="translucent", metadata={"method": method})
        layers = self.viewer.layers
        layer = layers[name]
        layer.colormap, layer.contrast_limits, layer.opacity = cmap, (lo, hi), 1.0
        masks = [i for i, ly in enumerate(layers) if isinstance(ly, Labels)]
        if masks and layers.index(layer) > masks[0]:  # under the masks: their outline stays on top
            layers.move(layers.index(layer), masks[0])
        self.status.value = f"Showing {title}; toggle its eye to compare with the tissue."
