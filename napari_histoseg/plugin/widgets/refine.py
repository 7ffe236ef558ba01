"""The Refine dock widget: seed strokes and clicks redraw the tumour boundary.

Paint on the ``seeds`` layer (1 = tumour, 2 = not tumour) or, in click mode, click
(Shift-click: not tumour). Every finished stroke or click refines the mask layer in a
worker; strokes that arrive during a solve are merged into the next one. Undo/redo
(Ctrl+Z, Ctrl+Shift+Z on the seeds and mask layers), Reset and Accept. Pixels a person
changed by hand on the mask are never overwritten by a refinement.
"""

from __future__ import annotations

import napari  # noqa: F401 (names the viewer annotation napari looks for)
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, Label, PushButton
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QTimer
from superqt import QCollapsible

from napari_histoseg.plugin.widgets._layers import (
    Scrolling,
    image_under,
    mask_window,
    seeds_colormap,
    unwrap,
    visible_region,
)
from napari_histoseg.plugin.widgets._runner import Runner

SEEDS = "seeds"
CLICK_RADIUS = 5
BIG = 2048 * 2048  # above this many pixels, refine only the region in view
NO_MASK = "Segment an image first, then press Start refining."
METHOD_TIPS = {  # what each refinement method does (napari_histoseg.refinement.params.METHODS)
    "confined": "a click takes its colour region; a stroke only its surroundings, or a region closed "
                "by colour edges (a lumen); a confident model holds far from both (default)",
    "region": "as confined, and a click inside a region the model got wrong overrides the model around it "
              "(fewer clicks than confined where the model is confidently wrong)",
    "lgc": "plain label propagation: every seed reaches as far as colour lets it",
}
AFFINITY_TIPS = {  # what the superpixel graph compares (napari_histoseg.refinement.params.AFFINITIES)
    "colour": "colour and its local contrast (default)",
    "mixed": "colour, contrast and the segmentation model's own features (one pass of the model that "
             "made the prior at Start; on the test tiles more clicks than colour)",
    "features": "the segmentation model's features alone (one pass of the model at Start; on the test "
                "tiles more clicks than colour, strokes as local)",
}


class RefineWidget(Scrolling, Container):
    """Interactive refinement of a tumour mask by label propagation."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__(labels=True, scrollable=True)
        self.viewer = viewer = unwrap(viewer)
        self.session = None
        self.seeds: Labels | None = None
        self._mask: Labels | None = None
        self._pending = False
        self._gestures: set = set()  # "click" / "stroke": what the pending seeds were drawn with
        self._clicking = False
        self.edits = None      # MaskEdits: history, base, pixels a person edited by hand
        from napari_histoseg.refinement.features import FeatureCache

        self._features = FeatureCache()  # the model's features of the last image, for the next Start
        self._backend = None   # the widgets' shared backend, held once the features need a model

        self.image = ComboBox(label="Image", choices=self._layers_of(Image, rgb=True))
        self.mask = ComboBox(label="Mask", choices=self._layers_of(Labels), tooltip="The tumour mask to correct")
        self.prior = ComboBox(label="Prior", choices=self._prior_choices,
                              tooltip="The model's probability: refinement leans on it away from your seeds")
        self.start_button = PushButton(text="Start refining")
        self.tumour_brush = PushButton(text="Paint tumour (yellow)")
        self.not_tumour_brush = PushButton(text="Paint not tumour (cyan)")
        self.click_mode = CheckBox(text="Click to refine (click: tumour, Shift-click: not tumour)")
        self.undo_button, self.redo_button = PushButton(text="Undo"), PushButton(text="Redo")
        self.reset_button, self.accept_button = PushButton(text="Reset"), PushButton(text="Accept")
        self.prior_strength = FloatSlider(label="Prior strength", min=0.0, max=1.0, step=0.05, value=0.5,
                                          tooltip="How much the model's probability counts against colour")
        self.colour_sensitivity = FloatSlider(label="Colour sensitivity", min=0.1, max=3.0, step=0.1, value=1.0,
                                              tooltip="Higher: boundaries follow smaller colour differences")
        self.method = ComboBox(label="Method", choices=list(METHOD_TIPS), value="confined",
                               tooltip="\n".join(f"{k}: {v}" for k, v in METHOD_TIPS.items())
                               + "\nA new method applies from the next Start refining.")
        self.affinity = ComboBox(label="Compare by", choices=list(AFFINITY_TIPS), value="colour",
                                 tooltip="What tells two neighbouring regions apart:\n"
                                 + "\n".join(f"{k}: {v}" for k, v in AFFINITY_TIPS.items())
                                 + "\nApplies from the next Start refining.")
        self.status = Label(value=NO_MASK)
        self.status.native.setWordWrap(True)
        self.runner = Runner(self.status)
        self.runner.ended.connect(self._after_run)
        advanced = Container(widgets=[self.method, self.affinity, self.prior_strength, self.colour_sensitivity])
        fold = QCollapsible("Advanced")
        fold.addWidget(advanced.native)
        row = lambda *w: Container(widgets=list(w), layout="horizontal", labels=False)  # noqa: E731
        self.extend([
            self.image, self.mask, self.prior, self.start_button,
            row(self.tumour_brush, self.not_tumour_brush), self.click_mode,
            row(self.undo_button, self.redo_button), row(self.reset_button, self.accept_button),
        ])
        self.append(self.status)
        layout = self.body.layout()
        row_of_status = next(i for i in range(layout.count())
                             if layout.itemAt(i).widget() is not None
                             and layout.itemAt(i).widget().isAncestorOf(self.status.native))
        layout.insertWidget(row_of_status, fold)
        self.fit(460)

        self.start_button.clicked.connect(self.start)
        self.tumour_brush.clicked.connect(lambda: self.select_brush(1))
        self.not_tumour_brush.clicked.connect(lambda: self.select_brush(2))
        self.undo_button.clicked.connect(self.undo)
        self.redo_button.clicked.connect(self.redo)
        self.reset_button.clicked.connect(self.reset)
        self.accept_button.clicked.connect(self.accept)
        self.prior_strength.changed.connect(self._params_changed)
        self.colour_sensitivity.changed.connect(self._params_changed)
        self.method.changed.connect(self._method_changed)
        self.affinity.changed.connect(self._method_changed)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda e=None: self.reset_choices())
        self.reset_choices()
        self._enable(False)

    # -- choices ---------------------------------------------------------------
    def _layers_of(self, kind, rgb=False):
        def choices(_w=None):
            return [(ly.name, ly) for ly in self.viewer.layers
                    if isinstance(ly, kind) and ly.name != SEEDS and (not rgb or ly.rgb)]
        return choices

    def _prior_choices(self, _w=None):
        return [("none", None)] + [(ly.name, ly) for ly in self.viewer.layers
                                   if isinstance(ly, Image) and not ly.rgb and ly.ndim == 2]

    def reset_choices(self, *_):
        super().reset_choices()
        if "tumour" in self.viewer.layers and self.mask.value is None:
            self.mask.value = self.viewer.layers["tumour"]
        if "tumour probability" in self.viewer.layers and self.prior.value is None:
            self.prior.value = self.viewer.layers["tumour probability"]
        if self.session is None and self._worker is None:
            self.status.value = (f"Press Start refining to correct '{self.mask.value.name}'."
                                 if self.mask.value is not None else NO_MASK)

    def _enable(self, on: bool):
        for w in (self.tumour_brush, self.not_tumour_brush, self.click_mode, self.undo_button,
                  self.redo_button, self.reset_button, self.accept_button):
            w.enabled = on

    def params(self) -> dict:
        """The refinement parameters the controls set (``method`` and ``affinity`` apply at Start)."""
        return {"prior_weight": float(self.prior_strength.value),
                "colour_sensitivity": float(self.colour_sensitivity.value), "method": self.method.value,
                "affinity": self.affinity.value}

    # -- starting ---------------------------------------------------------------
    def start(self):
        """Build the refinement session for the chosen mask (in a worker)."""
        try:
            image, mask = self.image.value, self.mask.value
            if image is None or mask is None:
                raise ValueError("choose an RGB image and the mask to refine (run Segment first)")
            rgb = image_under(mask, image)
            # which features a Start needs: the image layer's data object and the part under the mask
            source = (image.data, (mask_window(mask, image), rgb.shape))
            prior_layer = self.prior.value
            prior = None
            # the network's features come from the model that made the prior (else the bundled one)
            model_ref = (prior_layer.metadata or {}).get("model") if prior_layer is not None else None
            if prior_layer is not None:
                if prior_layer.data.shape != mask.data.shape:
                    raise ValueError(f"'{prior_layer.name}' and '{mask.name}' differ in shape")
                prior = np.asarray(prior_layer.data, np.float32)
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot start refining: {e}")
            return None
        from napari_histoseg.refinement.edits import MaskEdits

        self._mask = mask
        self.edits = MaskEdits(mask.data)
        self._make_seeds(mask)
        params = self.params()
        what = "colour graph" if params["affinity"] == "colour" else "colour graph and the model's features"
        return self._run(f"Preparing the image ({what})…", self._build_session, rgb, prior, params, model_ref,
                         source)

    def _build_session(self, rgb, prior, params, model_ref=None, source=None):
        from napari_histoseg.refinement import RefineSession

        features = None
        if params.get("affinity", "colour") != "colour":
            from napari_histoseg.models.bundled import BUNDLED
            from napari_histoseg.models.segmenter import choose_engine
            from napari_histoseg.plugin.widgets._model_choice import local_backend
            from napari_histoseg.refinement.features import session_features

            # PyTorch as 'auto' would run it (bfloat16 on a CPU that computes it, unless turned off:
            # 2.3x faster, the features correlate 0.998 with fp32's); ONNX has no layer to read
            engine = choose_engine("auto")[0]
            try:  # PyTorch: the features are read from a layer of the network
                # held, since the shared backend lives only while a widget holds it: else every Start
                # would load the model again (and so compute its features again)
                self._backend = self._backend or local_backend()
                model = self._backend.model(model_ref or BUNDLED, device="auto", engine=engine)
                if source is None:
                    features = session_features(rgb, model)
                else:  # a second Start on the same image with the model the backend holds reuses them
                    data, where = source
                    features = self._features.get(data, (where, model), lambda: session_features(rgb, model))
            except Exception as e:  # noqa: BLE001
                raise RuntimeError(f"the model's features for 'Compare by: {params['affinity']}' could not be "
                                   f"computed ({e}); choose 'colour' or a local model") from e
        return ("session", RefineSession(rgb, prior=prior, features=features, **params))

    def _make_seeds(self, mask: Labels):
        shape = mask.data.shape
        if SEEDS in self.viewer.layers and self.viewer.layers[SEEDS].data.shape == shape:
            seeds = self.viewer.layers[SEEDS]
            seeds.data = np.zeros(shape, np.uint8)
        else:
            if SEEDS in self.viewer.layers:
                self.viewer.layers.remove(SEEDS)
            seeds = self.viewer.add_labels(np.zeros(shape, np.uint8), name=SEEDS, scale=mask.scale,
                                           translate=mask.translate, opacity=0.9)
        seeds.colormap = seeds_colormap()
        seeds.brush_size = 12
        seeds.events.paint.connect(self._on_paint)
        for layer in (seeds, mask):
            layer.bind_key("Control-z", lambda _l: self.undo(), overwrite=True)
            layer.bind_key("Control-Shift-z", lambda _l: self.redo(), overwrite=True)
        if self._on_click not in seeds.mouse_drag_callbacks:
            seeds.mouse_drag_callbacks.append(self._on_click)
        self.seeds = seeds

    def select_brush(self, label: int):
        if self.seeds is None:
            return
        self.viewer.layers.selection.active = self.seeds
        self.seeds.selected_label = label
        self.seeds.mode = "paint"
        self.click_mode.value = False

    # -- seeds arrive -----------------------------------------------------------
    def _on_click(self, layer, event):
        """Click mode: a click (no drag) drops a disk seed; Shift marks not tumour."""
        if not self.click_mode.value or layer.mode != "pan_zoom":
            return
        start = event.position
        yield
        while event.type == "mouse_move":
            yield
        if np.linalg.norm(np.subtract(event.position, start)) > 3 * float(np.min(layer.scale)):
            return  # a drag pans, it is no click
        label = 2 if "Shift" in event.modifiers else 1
        self.add_click(layer.world_to_data(event.position)[-2:], label)

    def add_click(self, yx, label: int):
        """Put a click seed (a disk of radius 5 px) at data position ``yx``."""
        from skimage.draw import disk

        rr, cc = disk(tuple(np.round(yx).astype(int)), CLICK_RADIUS, shape=self.seeds.data.shape)
        self._clicking = True
        try:
            self.seeds.data_setitem((rr, cc), label)  # records undo and emits paint
        finally:
            self._clicking = False

    def _on_paint(self, _event=None):
        # napari emits paint before some edits reach the array (data_setitem), so solve
        # on the next turn of the event loop; strokes until then are merged.
        self._gestures.add("click" if self._clicking else "stroke")
        if self._pending:
            return
        self._pending = True
        if self.session is not None and self._worker is None:
            QTimer.singleShot(0, self._solve)

    def _solve(self):
        if self._worker is not None:
            return  # still busy: _on_returned comes back here
        self._pending = False
        seeds = np.asarray(self.seeds.data).copy()
        if not seeds.any():  # every seed erased: back to the mask refinement started from
            self._gestures = set()
            self._write(self.edits.base.copy(), seeds)
            return
        view = None
        if seeds.size > BIG:
            view = visible_region(self._mask)
        # a brush stroke (or dab) stays local, a click reaches its colour region; both
        # merged into one solve: told by their shape
        gesture = next(iter(self._gestures)) if len(self._gestures) == 1 else None
        self._gestures = set()
        self._run("Refining…", self._update, seeds, view, gesture)

    def _update(self, seeds, view, gesture=None):
        return ("labels", seeds, self.session.update(seeds, view=view, gesture=gesture))

    # -- results --------------------------------------------------------------------
    @property
    def _worker(self):
        return self.runner.worker

    def _run(self, message, fn, *args):
        return self.runner.start(lambda *_: fn(*args), self._on_returned, what="Refinement", message=message)

    def _on_returned(self, out):
        if out[0] == "session":
            self.session = out[1]
            self._enable(True)
            self.select_brush(1)
            return "Paint tumour (1, yellow) or not tumour (2, cyan) where the mask is wrong."
        _, seeds, labels = out
        self._write(labels, seeds)
        return None

    def _after_run(self, _outcome):
        """Strokes made during a solve are solved next (also after a failed one)."""
        if self._pending and self.session is not None:
            QTimer.singleShot(0, self._solve)

    def _write(self, labels, seeds):
        mask = self._mask
        if mask is None or mask not in self.viewer.layers:
            return
        result, hand = self.edits.apply(mask.data, labels, seeds)
        if hand:
            show_info("Your own edits on the mask are kept: refinement leaves those pixels alone.")
        self._set_mask(result)
        self.status.value = (f"Refined: {self.edits.changed(result):,} px differ from the starting mask. "
                             "Accept keeps them.")

    def _set_mask(self, data):
        # the digest of what Segment wrote stays: a refined mask counts as edited
        self.edits.wrote(data)
        self._mask.data = data

    # -- history -----------------------------------------------------------------
    def undo(self):
        step = self.edits and self.edits.undo(self.seeds.data, self._mask.data)
        if step is not None:
            self._restore(*step)

    def redo(self):
        step = self.edits and self.edits.redo(self._mask.data)
        if step is not None:
            self._restore(*step)

    def _restore(self, seeds, mask):
        with self.seeds.events.paint.blocker():
            self.seeds.data = seeds
        self._set_mask(mask)
        self.status.value = f"{len(self.edits.history)} step(s) to undo, {len(self.edits.future)} to redo."

    def reset(self):
        """Forget all seeds and refinements since Start (or the last Accept)."""
        if self.edits is not None:
            self._restore(*self.edits.reset(self.seeds.data))

    def accept(self):
        """Keep the refined mask: record which pixels changed, clear the seeds, and
        continue from here (Reset then returns to this mask)."""
        if self._mask is None:
            return
        edits = self.edits.accept(self._mask.data, self._mask.metadata.get("histoseg_edits"))
        self._mask.metadata["histoseg_edits"] = edits
        with self.seeds.events.paint.blocker():
            self.seeds.data = np.zeros_like(self.seeds.data)
        show_info(f"Accepted: {int(edits.sum()):,} px of '{self._mask.name}' now differ from the model.")
        self.status.value = "Accepted. Keep painting to refine further, or export the mask."

    def _params_changed(self, _=None):
        if self.session is not None and hasattr(self.session, "set_params"):
            params = self.params()
            params.pop("method")  # a new method or affinity needs a new session
            params.pop("affinity")
            self.session.set_params(**params)

    def _method_changed(self, _=None):
        if self.session is None:
            return
        params = getattr(self.session, "params", {})
        for name, box in (("method", self.method), ("affinity", self.affinity)):
            current = params.get(name)
            if current is not None and current != box.value:
                show_info(f"{box.label} '{box.value}' applies when you next press Start refining "
                          f"(this session keeps '{current}').")
