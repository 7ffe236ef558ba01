"""The Explain dock widget: Grad-CAM, SHAP and uncertainty heat maps over the image."""

from __future__ import annotations

import hashlib

import napari  # noqa: F401 (names the viewer annotation napari looks for)
import numpy as np
from magicgui.widgets import ComboBox, Container, Label, LineEdit, PushButton
from napari.layers import Image, Shapes
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFrame

from napari_histoseg.backends.local import LocalBackend
from napari_histoseg.plugin.widgets._layers import (
    Scrolling,
    level_data,
    placement,
    put_image,
    unwrap,
    visible_region,
)
from napari_histoseg.plugin.widgets._model_choice import ModelChoice
from napari_histoseg.plugin.widgets._runner import Runner, RunsWork
from napari_histoseg.plugin.widgets._shapes import rasterise

METHODS = [("Grad-CAM", "gradcam"), ("SHAP (GradientShap)", "shap"),
           ("Uncertainty: entropy", "entropy"), ("Uncertainty: MC dropout", "mc-dropout")]
TARGETS = [("predicted tumour", "mask"), ("a shape I drew", "shape"), ("everything shown", "all")]
#: value range of each method's map, and what its two ends mean to a reader
LEGEND = {
    "gradcam": ((0.0, 1.0), "not looked at", "drove the tumour call"),
    "shap": ((-1.0, 1.0), "pushes towards not tumour", "pushes towards tumour"),
    "entropy": ((0.0, 1.0), "model is sure", "model is unsure (p near 0.5)"),
    "mc-dropout": ((0.0, 0.25), "stable answer", "answer changes under dropout"),
}


class ExplainWidget(RunsWork, Scrolling, Container):
    """Why the model decided, and where it is unsure, as layers over the image.

    Red is high and blue low for every method (one colour map, ``bwr``); the legend
    under the buttons says what high and low mean for the chosen method. Results are
    cached, so switching back to a map already computed costs nothing.
    """

    def __init__(self, viewer: napari.viewer.Viewer, backend=None):
        super().__init__(labels=True, scrollable=True)
        self.viewer = viewer = unwrap(viewer)
        self.backend = backend or LocalBackend()
        self.cache: dict[str, np.ndarray] = {}

        self.image = ComboBox(label="Image", choices=self._choices(Image, rgb=True))
        self.method = ComboBox(label="Method", choices=METHODS, value="gradcam",
                               tooltip="On a 2-core CPU, per 1024 x 1024 view: Grad-CAM ~12 s, entropy ~4 s, "
                                       "MC dropout ~25 s, SHAP ~3 min (see BENCHMARKS.md)")
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
        self.status = Label(value="Choose a method and press Explain.")
        self.status.native.setWordWrap(True)
        self.runner = Runner(self.status, self.run_button, self.cancel_button)
        self._bar = QFrame()
        self._bar.setFixedHeight(12)
        self._bar.setStyleSheet("background: qlineargradient(x1:0, y1:0, x2:1, y2:0, "
                                "stop:0 #0000ff, stop:0.5 #ffffff, stop:1 #ff0000); border: 1px solid #555;")
        self.extend([self.image, self.method, self.target, self.shapes, self.region,
                     *self.model_choice.backend_widgets, *self.model_choice.widgets, self.layer,
                     Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False)])
        self.extend([self.legend, self.status])
        layout = self.body.layout()  # the colour bar goes right above its legend
        layout.insertWidget(next(i for i in range(layout.count()) if layout.itemAt(i).widget() is not None
                                 and layout.itemAt(i).widget().isAncestorOf(self.legend.native)), self._bar)
        self.fit(460)
        self.method.changed.connect(self._on_method)
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
        self.legend.value = f"blue {lo:g}: {low}  ·  red {hi:g}: {high}"
        self.target.enabled = method in ("gradcam", "shap")
        self.layer.visible = method == "gradcam"

    # -- running ------------------------------------------------------------------
    def _request(self):
        layer = self.image.value
        if layer is None:
            raise ValueError("open an H&E image first")
        level = layer.data_level if layer.multiscale else 0
        data = level_data(layer, level)
        if self.region.value == "visible area":
            y0, x0, h, w = visible_region(layer, level)
        else:
            y0, x0, (h, w) = 0, 0, data.shape[:2]
        method = self.method.value
        target = self.target.value if method in ("gradcam", "shap") else "mask"
        if target == "shape":
            target = self._shape_mask(layer, level, (y0, x0, h, w))
        opts = {"region": (y0, x0, h, w), "target": target}
        if method == "gradcam" and self.layer.value.strip():
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
        if self.runner.running:
            show_info("An explanation is already running.")
            return None
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
        return self.runner.start(lambda *_: backend.explain(data, ref, method, **opts),
                                 lambda heat: self._on_result(heat, key, method, place), what="Explanation",
                                 label="Explaining", cancelled="Cancelled; nothing was added.",
                                 message=f"Computing {dict((v, k) for k, v in METHODS)[method]}…")

    def _on_result(self, heat, key, method, place):
        self.cache[key] = heat
        self._show(heat, method, place)
        return "Done. Toggle the layer's eye to compare with the tissue."

    def _show(self, heat, method, place):
        (lo, hi), _, _ = LEGEND[method]
        name = f"explain: {dict((v, k) for k, v in METHODS)[method]}"
        put_image(self.viewer, name, heat, place, colormap="bwr", contrast_limits=(lo, hi),
                  opacity=0.6, metadata={"method": method})
        layer = self.viewer.layers[name]
        layer.colormap, layer.contrast_limits = "bwr", (lo, hi)
