"""Classify an image or a region: benign or malignant, calibrated, at the model's scale.

:func:`classify` is the public function (``napari_histoseg.classify``). It

1. checks the input: RGB (RGBA/16-bit/float are converted with a warning by
   :func:`napari_histoseg.io.ensure_rgb_uint8`; grayscale is refused), big enough (at
   least half a tile at the model's scale), and H&E-like (:func:`check_he`);
2. knows the magnification: the image's ``mpp``, else a stated ``magnification``
   (``"400x"``), else an estimate from nucleus size (:mod:`.magnification`, shown with its
   95 % range); a stated magnification the nuclei contradict gives a warning
   (:func:`choose_scale`); a file's own µm/px is trusted as measured;
3. reads the region at a scale the model was trained at: its own (``meta.mpp``) or, for a
   field smaller than one tile there (a 200X-400X field), the finer second scale it was
   also trained at (``meta.preprocessing["fine_mpp"]``); only a region under half a tile
   at the finest scale is refused;
4. classifies tiles over the region (:mod:`.tiles`), averages their raw logits, and
   returns ``softmax(mean_logits / T)`` with the temperature ``T`` of that scale, fitted on
   validation patients (:mod:`.calibration`).

:func:`classify_region` returns the whole :class:`Classification` (tile spread, boxes,
warnings); :func:`classify_regions` does every label of a label image;
:func:`explain_region` gives the Grad-CAM of the predicted class over the region through
:func:`napari_histoseg.explanations.explain`.
"""

from __future__ import annotations

import math
import warnings as _warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import torch

from napari_histoseg.classifier.calibration import softmax
from napari_histoseg.classifier.magnification import (
    MagnificationEstimate,
    estimate_magnification,
    magnification_of,
    mpp_of,
    parse_magnification,
)
from napari_histoseg.classifier.tiles import aggregate, tile_logits
from napari_histoseg.core.resize import resize
from napari_histoseg.io.checks import InputError, check_float, check_pixels
from napari_histoseg.models.tile_classifier import Classifier

MIN_TISSUE = 0.05  # least share of tissue pixels in a region (see check_he)
FILL = 0.75  # a field whose short side is under FILL tiles at a scale is read at the next finer one


class ClassifierInputError(InputError):
    """An image or region the classifier cannot judge; the message says why (an
    :class:`~napari_histoseg.io.checks.InputError`, so a ``ValueError``)."""


#: Engines of the classifier: PyTorch (float32 on a CPU), ``auto`` (bfloat16 on a CPU with
#: bfloat16 instructions, else as ``torch``) or PyTorch forced to bfloat16.
ENGINES = ("auto", "torch", "torch-bf16")


def load_classifier(path=None, device="auto", engine: str = "torch") -> Classifier:
    """Load a classification checkpoint (None: the bundled one).

    ``engine``: ``"torch"`` (default here: float32 on a CPU, the reference the evaluation
    reports), ``"auto"`` (bfloat16 on a CPU that computes it in hardware, about twice as fast,
    held-out image AUC within 0.003; what the Classify widget uses) or ``"torch-bf16"``; the
    model's ``engine`` and ``engine_reason`` say what ran. :class:`~napari_histoseg.models.CheckpointError`
    for a checkpoint of another task.
    """
    if engine not in ENGINES:
        raise ValueError(f"the classifier's engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    reason = f"engine {engine!r} asked for"
    if engine == "auto":
        from napari_histoseg.core.device import torch_precision

        precision, reason = torch_precision(device, bf16_checked=Classifier.supports_bf16)
        engine = "torch-bf16" if precision == "bf16" else "torch"
    precision = "bf16" if engine == "torch-bf16" else None
    model = (Classifier.bundled(device=device, precision=precision) if path is None
             else Classifier.from_checkpoint(path, device=device, precision=precision))
    model.engine, model.engine_reason = engine, reason
    return model


def _model(model) -> Classifier:
    if isinstance(model, Classifier):
        return model
    return load_classifier(model)


def he_stats(rgb: np.ndarray) -> dict:
    """Measures of how H&E-like an RGB image is (over its tissue pixels).

    * ``tissue``: share of pixels whose optical density summed over RGB exceeds 0.45;
    * ``saturation``: median HSV saturation of the tissue pixels (0 for gray);
    * ``off_hue``: share of tissue pixels of a clearly non-H&E hue (30-190 deg: yellow,
      green, cyan, with saturation > 0.15); haematoxylin (blue-purple) and eosin (pink)
      lie outside that arc;
    * ``residual``: median share of a tissue pixel's OD vector that the haematoxylin and
      eosin OD colours (Ruifrok & Johnston, :data:`skimage.color.rgb_from_hed`) cannot
      explain.
    """
    from skimage.color import rgb2hsv, rgb_from_hed

    from napari_histoseg.colour.stain import optical_density

    step = max(1, int(math.sqrt(rgb.shape[0] * rgb.shape[1] / 60_000)))  # ~60k pixels are plenty
    sub = np.ascontiguousarray(rgb[::step, ::step])
    od = optical_density(sub).reshape(-1, 3)
    tissue = od.sum(1) > 0.45
    if not tissue.any():
        return {"tissue": 0.0, "saturation": 0.0, "off_hue": 0.0, "residual": 0.0}
    hsv = rgb2hsv(sub).reshape(-1, 3)[tissue]
    hue, sat = hsv[:, 0] * 360, hsv[:, 1]
    basis = rgb_from_hed[:2].T / np.linalg.norm(rgb_from_hed[:2], axis=1)  # 3 x 2
    o = od[tissue].astype(np.float64)
    res = np.linalg.norm(o - o @ (basis @ np.linalg.pinv(basis)).T, axis=1) / np.linalg.norm(o, axis=1)
    return {"tissue": float(tissue.mean()), "saturation": float(np.median(sat)),
            "off_hue": float(((hue >= 30) & (hue < 190) & (sat > 0.15)).mean()),
            "residual": float(np.median(res))}


def check_he(rgb: np.ndarray, what: str = "the image") -> dict:
    """Raise :class:`ClassifierInputError` unless ``rgb`` plausibly shows H&E tissue.

    Thresholds (see :func:`he_stats`): off_hue > 0.25 or residual > 0.52 is refused.
    Measured: all 422 whole BreakHis images, all camelyon, bcss and MoNuSeg tiles and the
    shared samples pass (off_hue <= 0.114, residual <= 0.383); of 1,688 random 192 px
    BreakHis crops with tissue, 2 are refused (residual up to 0.47, off_hue up to 0.55);
    scikit-image's ``coffee``, ``chelsea``, ``retina``, ``hubble_deep_field``,
    ``colorwheel`` and ``immunohistochemistry`` (DAB) are refused. It is a plausibility
    check, not a detector: ``astronaut`` and ``rocket`` pass.
    """
    s = he_stats(rgb)
    if s["tissue"] < MIN_TISSUE:
        raise ClassifierInputError(f"{what} is almost empty: {s['tissue']:.0%} of it is tissue "
                                   "(optical density > 0.45); choose a region over tissue")
    if s["saturation"] < 0.03:
        raise ClassifierInputError(f"{what} has no colour (median saturation {s['saturation']:.3f}): "
                                   "a grayscale image stored as RGB? The classifier needs H&E colour")
    if s["off_hue"] > 0.25 or s["residual"] > 0.52:
        raise ClassifierInputError(
            f"{what} does not look like H&E: {s['off_hue']:.0%} of its tissue pixels are yellow/green/"
            f"cyan and {s['residual']:.0%} of their colour is not haematoxylin or eosin (refused above "
            "25 % or 52 %; whole H&E images here: at most 11 % and 38 %). Is it another stain "
            "(IHC/DAB), a photograph, or BGR channels?")
    return s


@dataclass
class Classification:
    """The answer for one region."""

    probabilities: np.ndarray          # calibrated, one per class
    label: str                         # the most probable class
    probability: float                 # its probability
    spread: float                      # std over tiles of the calibrated P(class 1)
    n_tiles: int
    logits: np.ndarray                 # mean raw logits over tiles
    tile_probabilities: np.ndarray     # calibrated P(class 1) per tile
    boxes: list                        # (y, x, h, w) per tile, in image pixels
    warnings: list = field(default_factory=list)
    scale: dict = field(default_factory=dict)  # Scale.to_json(): mpp, its source, the estimate

    def to_json(self, class_names) -> dict:
        return {"label": self.label, "probability": self.probability,
                "probabilities": {n: float(p) for n, p in zip(class_names, self.probabilities)},
                "tile_spread": self.spread, "n_tiles": self.n_tiles, "warnings": list(self.warnings),
                "scale": dict(self.scale)}


@dataclass
class Scale:
    """How a region was read: the image's µm/px and where it came from, the model's scale used."""

    mpp: Optional[float]               # the image's µm/px as used (None: unknown)
    source: str                        # "given", "magnification", "estimate" or "unknown"
    model_mpp: Optional[float]         # the trained scale it was read at
    factor: float                      # resize factor image -> model scale
    estimate: Optional[MagnificationEstimate] = None

    def to_json(self) -> dict:
        return {"mpp": self.mpp, "source": self.source, "model_mpp": self.model_mpp, "factor": self.factor,
                "magnification": magnification_of(self.mpp) if self.mpp else None,
                "estimate": self.estimate.to_json() if self.estimate else None}


def choose_scale(shape, model: Classifier, mpp, magnification=None, estimate=None) -> tuple[Scale, list]:
    """The image's µm/px (``mpp``, else a stated ``magnification``, else the nucleus-size
    ``estimate``, which is also checked against a stated magnification) and the trained scale to read it at: the model's own, or, for a field whose
    short side is under :data:`FILL` tiles there, the finer second scale it was also trained
    at. Returns the scale and notes."""
    notes, source = [], "given"
    if mpp is not None:
        mpp = check_float(mpp, "mpp", lo=0, lo_open=True, hi=100)
        if magnification is not None and abs(math.log(mpp_of(magnification) / mpp)) > math.log(1.1):
            notes.append(f"the stated magnification {magnification:g}x means {mpp_of(magnification):.3g} µm/px; "
                         f"the image's own {mpp:.3g} µm/px is used")
    elif magnification is not None:
        mpp, source = mpp_of(magnification), "magnification"
    elif estimate is not None:
        mpp, source = estimate.mpp, "estimate"
        notes.append(f"the image's magnification is unknown: read at {estimate.text()}; state it (or the "
                     "µm per pixel) if you know it")
    else:
        source = "unknown"
    if estimate is not None and source == "magnification" and estimate.disagrees(magnification):
        notes.append(f"the stated magnification ({magnification:g}x) and the nuclei disagree: they look "
                     f"{estimate.text()}; check the magnification (the stated one is used)")
    scales = model.scales
    if not scales:
        return Scale(mpp, source, None, 1.0, estimate), notes
    if mpp is None:
        notes.append(f"the image's microns per pixel are unknown and no nuclei could be measured: it is read "
                     f"as if at the model's {scales[0]:.3g} µm/px; the answer is unreliable at another magnification")
        return Scale(None, source, scales[0], 1.0, estimate), notes
    side = min(int(shape[0]), int(shape[1]))
    chosen = scales[-1]
    for s in scales:  # the coarsest trained scale at which the field fills most of one tile
        if side * mpp / s >= FILL * model.tile:
            chosen = s
            break
    factor = mpp / chosen
    if chosen != scales[0]:
        notes.append(f"the field is {side * mpp / scales[0]:.0f} px across at the model's {scales[0]:.3g} µm/px, "
                     f"too little for its {model.tile} px tile: read at its second scale, {chosen:.3g} µm/px")
    elif abs(math.log(factor)) > math.log(1.1) and source == "given":
        notes.append(f"the image is at {mpp:.3g} µm/px and the model was trained at {chosen:.3g} µm/px: "
                     f"the region is resized by {factor:.2f}")
    if factor > 4 or factor < 1 / 16:
        notes.append("that is far from the training magnification; treat the answer with caution")
    return Scale(mpp, source, chosen, factor, estimate), notes


def _prepare(image, model: Classifier, region, mpp, what: str, magnification=None, estimate: bool = True):
    """RGB crop of the region's bounding box at the model's scale, its mask, offset, scale, notes."""
    from napari_histoseg.io import ImageFormatError, ensure_rgb_uint8

    notes = []
    shape = np.shape(image)
    if len(shape) == 2 or (len(shape) == 3 and shape[-1] == 1):
        raise ClassifierInputError(f"{what} is grayscale ({shape}); the classifier needs an RGB H&E image")
    if region is not None:
        region = np.asarray(region).astype(bool)
        if region.shape != tuple(shape[:2]):
            raise ClassifierInputError(f"region shape {region.shape} differs from the image's {tuple(shape[:2])}")
        if not region.any():
            raise ClassifierInputError("the region is empty")
        ys, xs = np.nonzero(region.any(1))[0], np.nonzero(region.any(0))[0]
        y0, y1, x0, x1 = ys[0], ys[-1] + 1, xs[0], xs[-1] + 1
    else:
        y0, y1, x0, x1 = 0, shape[0], 0, shape[1]
    try:
        rgb, conv = ensure_rgb_uint8(np.asarray(image[y0:y1, x0:x1]))
    except ImageFormatError as e:
        raise ClassifierInputError(f"{what}: {e}") from None
    notes += conv
    est = None  # a file's µm/px is a measurement: nuclei are measured without one, or to check a stated one
    if estimate and mpp is None and min(rgb.shape[:2]) >= 32:
        est = estimate_magnification(rgb)
    try:
        if magnification is not None:
            magnification = parse_magnification(magnification)
        scale, more = choose_scale(rgb.shape, model, mpp, magnification, est)
    except InputError as e:
        raise ClassifierInputError(str(e)) from None
    notes += more
    crop_mask = None if region is None else region[y0:y1, x0:x1]
    factor = scale.factor
    try:   # the size at the model's scale, before resizing allocates it
        check_pixels((round(rgb.shape[0] * factor), round(rgb.shape[1] * factor)),
                     f"the region at the model's scale ({factor:.2f} x its {rgb.shape[1]} x {rgb.shape[0]} px)",
                     hint="classify a smaller region, or check the stated µm/px or magnification")
    except InputError as e:
        raise ClassifierInputError(str(e)) from None
    rgb = resize(rgb, factor)
    if crop_mask is not None:
        crop_mask = resize(crop_mask.astype(np.uint8), factor, mask=True)
    least = model.tile // 2
    if min(rgb.shape[:2]) < least:
        at = "the model's finest scale" if len(model.scales) > 1 else "the model's scale"
        raise ClassifierInputError(
            f"{what} is too small: {rgb.shape[1]} x {rgb.shape[0]} px at {at}; the "
            f"classifier needs at least {least} x {least} px (half of its {model.tile} px tile)")
    return rgb, crop_mask, (int(y0), int(x0)), scale, notes


def _as_block(pixels: np.ndarray) -> np.ndarray:
    """(N, 3) pixels as an (n, 256, 3) image (numpy and skimage crawl on (N, 1, 3) arrays)."""
    n = (len(pixels) // 256) * 256
    return pixels[:n].reshape(-1, 256, 3) if n else pixels[None]


def classify_region(image, model=None, region=None, mpp: Optional[float] = None, *, check: bool = True,
                    what: str = "the image", magnification=None, estimate: bool = True,
                    progress: Optional[Callable[[int, int], None]] = None,
                    should_stop: Optional[Callable[[], bool]] = None) -> Classification:
    """Classify ``image`` (H, W, 3) inside ``region`` (boolean (H, W) or None: everything).

    The scale: ``mpp`` (the file's), else ``magnification`` (stated, e.g. ``"400x"``), else
    the nucleus-size estimate (:mod:`.magnification`; ``estimate=False`` skips it); a stated
    scale that the nuclei contradict gives a warning."""
    model = _model(model)
    rgb, mask, (oy, ox), scale, notes = _prepare(image, model, region, mpp, what, magnification, estimate)
    factor = scale.factor
    if check:
        check_he(rgb if mask is None else _as_block(rgb[mask]), what)
    logits, weights, boxes = tile_logits(model.module, rgb, model.tile, mask, device=model.device,
                                         mean=model.meta.mean, std=model.meta.std,
                                         progress=progress, should_stop=should_stop, autocast=model.autocast)
    mean = aggregate(logits, weights)
    t = model.temperature_at(scale.model_mpp)
    probs = softmax(mean / t)
    tile_p = softmax(logits / t)[:, -1]
    k = int(probs.argmax())
    img_boxes = [(oy + y / factor, ox + x / factor, h / factor, w / factor) for y, x, h, w in boxes]
    return Classification(probs, model.class_names[k], float(probs[k]), float(tile_p.std()),
                          len(boxes), mean, tile_p, img_boxes, notes, scale.to_json())


def classify(image, model=None, region=None, mpp: Optional[float] = None, magnification=None,
             estimate: bool = True) -> np.ndarray:
    """Calibrated class probabilities ``[P(benign), P(malignant)]`` of an image or region.

    Parameters
    ----------
    image : (H, W, 3) array
        RGB H&E (uint8; other dtypes are converted with a warning).
    model : Classifier, str or Path, optional
        A loaded classifier, a checkpoint, or None for the bundled one.
    region : (H, W) bool array, optional
        Where to look; tiles mostly inside it are classified and their logits averaged.
    mpp : float, optional
        The image's microns per pixel; it is resized to the model's scale.
    magnification : str or float, optional
        The field's magnification as a microscope states it (``"400x"``; BreakHis
        convention, :mod:`.magnification`), used when ``mpp`` is not given. With neither,
        the magnification is estimated from nucleus size (with a warning saying so).
    estimate : bool
        False: no nucleus-size estimate (nor check of a stated magnification).

    Raises
    ------
    ClassifierInputError
        Grayscale, too small, empty or not H&E-like input.
    """
    result = classify_region(image, model, region, mpp, magnification=magnification, estimate=estimate)
    for note in result.warnings:
        _warnings.warn(note, stacklevel=2)
    return result.probabilities


def classify_regions(image, labels, model=None, mpp=None, progress=None, should_stop=None,
                     magnification=None) -> dict:
    """``{label: Classification or ClassifierInputError}`` for every label > 0 of ``labels``."""
    model = _model(model)
    labels = np.asarray(labels)
    out = {}
    ids = [int(i) for i in np.unique(labels) if i > 0]
    for n, i in enumerate(ids):
        try:
            out[i] = classify_region(image, model, labels == i, mpp, what=f"region {i}",
                                     magnification=magnification, should_stop=should_stop)
        except ClassifierInputError as e:
            out[i] = e
        if progress is not None:
            progress(n + 1, len(ids))
    return out


def explain_region(image, model=None, region=None, mpp=None, channel: Optional[int] = None,
                   progress=None, should_stop=None, magnification=None) -> np.ndarray:
    """Grad-CAM (float32 (H, W), 0..1, 0 outside the region) of the class ``channel``
    (default: the predicted class) over the region, through :func:`napari_histoseg.explanations.explain`."""
    from napari_histoseg.explanations import explain

    model = _model(model)
    rgb, mask, (oy, ox), scale, _ = _prepare(image, model, region, mpp, "the image", magnification)
    factor = scale.factor
    if channel is None:
        logits, w, _ = tile_logits(model.module, rgb, model.tile, mask, device=model.device,
                                   mean=model.meta.mean, std=model.meta.std, autocast=model.autocast)
        channel = int(aggregate(logits, w).argmax())
    heat = explain(rgb, model, "gradcam", target="all", tile=model.tile, overlap=model.tile // 4,
                   channel=channel, progress=progress, should_stop=should_stop)
    if mask is not None:
        heat = heat * mask
    h, w = (np.shape(image)[0], np.shape(image)[1])
    out = np.zeros((h, w), np.float32)
    crop = torch.nn.functional.interpolate(torch.from_numpy(heat)[None, None].float(),
                                           size=(int(round(rgb.shape[0] / factor)), int(round(rgb.shape[1] / factor))),
                                           mode="bilinear", align_corners=False)[0, 0].numpy()
    ch, cw = min(crop.shape[0], h - oy), min(crop.shape[1], w - ox)
    out[oy:oy + ch, ox:ox + cw] = crop[:ch, :cw]
    if region is not None:
        out *= np.asarray(region, bool)
    return out
