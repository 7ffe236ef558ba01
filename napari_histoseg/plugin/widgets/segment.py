"""The Segment dock widget: run the tumour model over an image layer."""

from __future__ import annotations

import napari  # noqa: F401 (names the viewer annotation napari looks for)
import numpy as np
from magicgui.widgets import CheckBox, ComboBox, Container, FloatSlider, FloatSpinBox, Label, PushButton, SpinBox
from napari.layers import Image
from napari.utils.notifications import show_error, show_warning

from napari_histoseg.core.device import available_devices
from napari_histoseg.plugin.widgets._layers import (
    Scrolling,
    heading,
    level_data,
    model_colour,
    placement,
    put_image,
    put_labels,
    span,
    tumour_colormap,
    unwrap,
    visible_region,
)
from napari_histoseg.plugin.widgets._model_choice import (  # noqa: F401 (MODEL_FILE re-exported)
    MODEL_FILE,
    ModelChoice,
    local_backend,
)
from napari_histoseg.plugin.widgets._runner import Runner, RunsWork
from napari_histoseg.plugin.widgets._wholeslide import WHOLE_SLIDE, WholeSlideOptions, run_whole_slide

STAIN_CHOICES = [("none", None), ("Macenko", "macenko"), ("Reinhard", "reinhard")]


def _has_onnxruntime() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


def _engine_choices() -> list[tuple[str, str]]:
    out = [("auto (fastest for this computer)", "auto"), ("PyTorch (float32 on a CPU)", "torch"),
           ("PyTorch bfloat16", "torch-bf16")]
    if _has_onnxruntime():
        out += [("ONNX Runtime (CPU)", "onnx"), ("ONNX Runtime int8 (CPU)", "onnx-int8")]
    return out


class SegmentWidget(RunsWork, Scrolling, Container):
    """Choose an image, a model and the tiling; Run segments in a worker, Cancel stops it.

    Results: an Image layer ``tumour probability`` (float32, 0–1) and a Labels layer
    ``tumour`` (1 = tumour), placed on the image (same scale and translate).
    """

    def __init__(self, viewer: napari.viewer.Viewer, backend=None):
        super().__init__(labels=True, scrollable=True)
        self.viewer = viewer = unwrap(viewer)
        self.backend = backend or local_backend()

        self.image = ComboBox(label="Image", choices=self._image_choices,
                              tooltip="The H&E image layer to segment")
        self.region = ComboBox(label="Region", choices=["whole image", "visible area", WHOLE_SLIDE], value="whole image",
                               tooltip="visible area: only what the canvas shows now (fast on a whole slide); "
                                       f"{WHOLE_SLIDE}: stream the slide's file through the model (tissue only)")
        self.wsi = WholeSlideOptions()
        self.region.changed.connect(lambda v: setattr(self.wsi, "visible", v == WHOLE_SLIDE))
        self.level = SpinBox(label="Pyramid level", min=0, max=0, value=0, visible=False,
                             tooltip="0 = full resolution; higher levels are coarser and faster")
        self.model_choice = ModelChoice(on_change=self._sync_to_model)
        self.model, self.model_file = self.model_choice.widgets
        self.device = ComboBox(label="Device", choices=available_devices(), value="auto",
                               tooltip="auto: cuda, then mps, then cpu")
        self.engine = ComboBox(label="Engine", choices=_engine_choices(), value="auto",
                               tooltip="auto: the fastest engine measured to keep the model's accuracy on this "
                                       "computer: ONNX Runtime int8 on a CPU with int8 instructions (VNNI) for a "
                                       "model whose int8 part was checked (the bundled one; the first run "
                                       "prepares it, once), else PyTorch in bfloat16 on a CPU with bfloat16 "
                                       "instructions, else PyTorch (float32 on a CPU, float16 on a GPU). The "
                                       "message after a run names it. BENCHMARKS.md › Inference has the figures")
        self.tile = SpinBox(label="Tile (px)", min=64, max=4096, step=32, value=512,
                            tooltip="Edge of the square windows the model sees (multiple of 32)")
        self.overlap = SpinBox(label="Overlap (px)", min=0, max=512, step=8, value=64,
                               tooltip="Neighbouring tiles overlap by this much and are blended")
        self.threshold = FloatSlider(label="Threshold", min=0.05, max=0.95, step=0.05, value=0.5,
                                     tooltip="Probability at or above which a pixel is tumour")
        self.mpp = FloatSpinBox(label="Pixel size (µm/px)", min=0.0, max=20.0, step=0.01, value=0.0,
                                tooltip="The image's µm per pixel at full resolution, filled in from its file "
                                        "where known; 0 = unknown. 40x is about 0.25, 20x about 0.5, 10x "
                                        "about 1.0. The image is resampled to the model's scale for the "
                                        "prediction; the mask comes back on the image's pixels.")
        self.tta = CheckBox(text="Flip test-time augmentation (about 3x slower)", value=False,
                            tooltip="Average the prediction over 4 flips of every tile: about 3x the CPU time "
                                    "for +0.00 to +0.03 Dice on the held-out tiles (model card)")
        self.stain = ComboBox(label="Stain normalisation", choices=STAIN_CHOICES, value=None)
        self.clahe = CheckBox(text="CLAHE (local contrast)", value=False)
        self.standardise = CheckBox(text="Per-channel standardisation", value=False)
        self.run_button = PushButton(text="Run")
        self.cancel_button = PushButton(text="Cancel", enabled=False)
        self.status = Label(value="Choose an image and press Run.")
        self.status.native.setWordWrap(True)
        self.runner = Runner(self.status, self.run_button, self.cancel_button)
        self.preprocessing = heading("Preprocessing (optional)", "what the chosen model was trained with is set for you")
        self.extend([
            self.image, self.region, self.wsi, self.level, *self.model_choice.backend_widgets, self.model, self.model_file, self.device, self.engine, self.tile,
            self.overlap, self.threshold, self.mpp, self.tta, self.preprocessing, self.stain, self.clahe, self.standardise,
            Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
            self.status,
        ])
        span(self.preprocessing)
        self._model_pre: dict = {}
        self._model_mpp = None
        self._warned_scale: set = set()
        self.image.changed.connect(self._on_image)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda e=None: self.image.reset_choices())
        self.image.reset_choices()
        self._on_image()
        self._sync_to_model()
        self.fit(460)

    # -- choices -----------------------------------------------------------------
    def _image_choices(self, _widget=None):
        return [(layer.name, layer) for layer in self.viewer.layers if isinstance(layer, Image)]

    def _on_image(self, _=None):
        layer = self.image.value
        n = len(layer.data) if (layer is not None and layer.multiscale) else 1
        self.level.max = n - 1
        self.level.visible = n > 1
        mpp = ((layer.metadata or {}).get("mpp") if layer is not None else None) or 0.0
        self.mpp.value = float(mpp) if 0 < float(mpp) <= self.mpp.max else 0.0

    def image_mpp(self, layer, level: int):
        """µm per pixel of ``level`` of ``layer`` (the Pixel size field, times the level's
        downsample), None when unknown; says once per layer that the scale is unknown."""
        if self.mpp.value > 0:
            base = float(self.mpp.value)
            if layer.multiscale and level:
                base *= layer.data[0].shape[0] / layer.data[level].shape[0]
            return base
        if self._model_mpp and layer.name not in self._warned_scale:
            self._warned_scale.add(layer.name)
            show_warning(f"'{layer.name}' does not say its pixel size, so it is segmented as it is; the model "
                         f"works at {self._model_mpp:g} µm/px. If the image is at another scale the map will be "
                         "wrong: set 'Pixel size' (0.25 for 40x, 0.5 for 20x) and run again.")
        return None

    def _sync_to_model(self, _=None):
        """Take the tile size and preprocessing the chosen model was trained with."""
        try:
            meta = self.model_choice.meta()
        except Exception as e:  # noqa: BLE001 - shown in the status line
            self.status.value = f"Model: {e}"
            return
        self._model_pre = {k: v for k, v in (meta.preprocessing or {}).items() if k != "temperature"}
        self._model_mpp = getattr(meta, "mpp", None)
        self.tile.value = int(meta.tile_size)
        self.stain.value = self._model_pre.get("stain_norm")
        self.clahe.value = bool(self._model_pre.get("clahe", False))
        self.standardise.value = bool(self._model_pre.get("standardise", False))
        at = f" at {meta.mpp:g} µm/px" if getattr(meta, "mpp", None) else ""
        self.status.value = (f"Model: {meta.name} v{meta.model_version} ({meta.arch}), trained on "
                             f"{meta.tile_size} px tiles{at}")

    def model_ref(self) -> str:
        return self.model_choice.ref()

    def preprocessor(self, data):
        """A fitted Preprocessor for the chosen options, or None when all are off."""
        if self.stain.value is None and not self.clahe.value and not self.standardise.value:
            return None
        from napari_histoseg.colour.preprocess import PreprocessConfig, Preprocessor

        config = PreprocessConfig.from_dict({**self._model_pre, "stain_norm": self.stain.value,
                                             "clahe": self.clahe.value, "standardise": self.standardise.value})
        step = max(1, max(data.shape[:2]) // 1024)
        return Preprocessor(config).fit(np.asarray(data[::step, ::step]))

    # -- running -----------------------------------------------------------------
    def run(self):
        """Start segmenting the chosen image in a worker (returns the worker)."""
        layer = self.image.value
        if layer is None:
            show_warning("Open an H&E image first: there is no image layer to segment.")
            return None
        if self.region.value == WHOLE_SLIDE:
            return run_whole_slide(self, layer)
        try:
            if not layer.rgb:
                raise ValueError(
                    f"'{layer.name}' is not an RGB image; napari-histoseg needs an RGB H&E image"
                )
            level = int(self.level.value)
            data = level_data(layer, level)
            offset = (0, 0)
            if self.region.value == "visible area":
                y0, x0, h, w = visible_region(layer, level)
                data, offset = data[y0:y0 + h, x0:x0 + w], (y0, x0)
            ref = self.model_ref()
            self.backend = self.model_choice.backend(self.backend)  # this computer or a server
            pre = self.preprocessor(data)
            mpp = self.image_mpp(layer, level)
        except Exception as e:  # shown, never raised into Qt
            show_error(f"Cannot segment: {e}")
            return None
        opts = dict(device=self.device.value, engine=self.engine.value, tile=self.tile.value, overlap=self.overlap.value,
                    threshold=self.threshold.value, preprocess=pre, mpp=mpp)
        if self.tta.value:
            opts["tta"] = True
        place = placement(layer, level, offset)
        backend = self.backend
        return self.runner.start(lambda *_: backend.segment(data, ref, **opts),
                                 lambda pred: self._on_result(pred, layer, place, ref, level),
                                 what="Segmentation", label="Segmenting tumour", message="Loading the model…")

    def _on_result(self, pred, layer, place, ref, level):
        meta = {"model": ref, "level": level, "threshold": self.threshold.value}
        put_image(self.viewer, "tumour probability", pred.probability, place, colormap="inferno",
                  contrast_limits=(0.0, 1.0), opacity=0.5, visible=False, metadata=meta)
        labels = put_labels(self.viewer, "tumour", pred.mask, layer, place, meta)
        colour = model_colour(self.viewer, ref, labels)
        labels.metadata["histoseg_colour"] = colour
        labels.colormap = tumour_colormap(colour)
        frac = float(pred.mask.mean()) * 100
        where = self.backend.describe(ref, self.device.value, self.engine.value)
        scaled = (f" Seen at {pred.model_mpp:g} µm/px (the image is {pred.image_mpp:g})."
                  if getattr(pred, "scale", 1.0) != 1.0 and getattr(pred, "image_mpp", None) else "")
        return (f"Done: {frac:.1f} % of the {self.region.value} is tumour, in layer '{labels.name}'.{scaled} "
                f"Model: {where}")
