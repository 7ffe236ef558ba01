"""Tiled Mask R-CNN inference: one label per nucleus over images of any size.

The image is brought to the model's mpp (when both are known), cut into tiles that
overlap by ``overlap`` px (at least the widest nucleus: 128 px = 32 µm at 0.25 µm/px),
and each tile is run through the detector. Every tile owns a *core*: the tiles' cores
split the image without gaps or overlaps at the middle of each overlap. A detection is
kept only by the tile whose core holds its centroid; since a centroid in the core lies at
least ``overlap / 2`` px from the tile's edge, a nucleus up to ``overlap`` px wide is
whole in the tile that keeps it, and no other tile keeps it again. Masks are pasted by
descending score; pixels already taken stay with the earlier (more confident) nucleus,
and a detection that keeps less than half of its mask is dropped as a duplicate.

Stain: with ``stain=True`` (or where the checkpoint names a stain target,
``preprocessing["stain"]``) the image is first normalised to the stain of the model's training
images (:func:`stain_normalise`; :data:`MONUSEG_STAIN`, Macenko parameters of the 11 MoNuSeg
tiles the bundled model learnt from, where the checkpoint has none). The detector learnt one
collection's colours and fires on few nuclei of another lab's otherwise (MoNuSAC breast: AJI
0.02 without, see the model card); on MoNuSeg's own test images it costs a little, so it is
off for the bundled model unless asked for.

Tiles go through the detector ``batch`` at a time (all tiles of one image have one shape).
With ``split_touching`` (default: the checkpoint's ``preprocessing["split_touching"]``)
non-convex instances are cut at their waists afterwards
(:func:`napari_histoseg.nuclei.postprocess.split_touching`).

Example
-------
>>> labels, table = detect_nuclei(rgb, mpp=0.25)              # doctest: +SKIP
>>> labels.max(), list(table.columns)[:3]                     # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_histoseg.core.runs import drive
from napari_histoseg.core.windows import tile_starts
from napari_histoseg.io.validate import ImageFormatError, ensure_rgb_uint8
from napari_histoseg.models.bundled import BUNDLED as BUNDLED_REF
from napari_histoseg.models.bundled import BUNDLED_CHECKPOINTS, bundled_path
from napari_histoseg.models.checkpoint import CheckpointError
from napari_histoseg.models.detector import NucleusDetector, detect

MIN_SIDE = 32

#: The bundled nucleus checkpoint (its entry in :data:`napari_histoseg.models.bundled.BUNDLED_CHECKPOINTS`).
BUNDLED = BUNDLED_CHECKPOINTS["instances"]


class NucleiModelError(ValueError):
    """No usable nucleus model; the message says why."""


def load_nuclei_detector(path=None, device="cpu") -> NucleusDetector:
    """The :class:`~napari_histoseg.models.detector.NucleusDetector` of an instances checkpoint
    (default: the bundled nucleus model, loaded once per process); a checkpoint of another task
    is refused with :class:`~napari_histoseg.models.CheckpointError`."""
    if path is None:
        try:
            bundled = bundled_path("instances")
        except CheckpointError as e:
            raise NucleiModelError(str(e)) from None
        return _load_cached(str(bundled), bundled.stat().st_mtime, str(device))
    path = Path(path)
    if not path.is_file():
        raise NucleiModelError(f"{path}: no nucleus model there")
    return NucleusDetector.from_checkpoint(path, device=device)


def load_nuclei_model(path=None):
    """``(module, meta)`` of an instances checkpoint (default: the bundled nucleus model);
    see :func:`load_nuclei_detector` for the loaded model itself."""
    detector = load_nuclei_detector(path)
    return detector.module, detector.meta


@lru_cache(maxsize=2)
def _load_cached(path: str, mtime: float, device: str) -> NucleusDetector:
    return NucleusDetector.from_checkpoint(path, device=device, source=BUNDLED_REF)


def check_image(image) -> np.ndarray:
    """RGB uint8 of ``image`` or :class:`ImageFormatError` saying what is wrong."""
    rgb, notes = ensure_rgb_uint8(np.asarray(image))
    for note in notes:
        warnings.warn(note, stacklevel=3)
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise ImageFormatError(
            f"image of {rgb.shape[1]} x {rgb.shape[0]} px is too small to find nuclei in "
            f"(at least {MIN_SIDE} x {MIN_SIDE} px)")
    return rgb


@torch.no_grad()
def run_detector(model, batch: torch.Tensor, min_score: float | None = None, regions=None):
    """Detections of a batch (B, 3, H, W) in [0, 1], with the masks kept as 28 x 28 probabilities.

    ``model`` is a :class:`~napari_histoseg.models.detector.NucleusDetector`, any object with a
    ``detect_batch(batch)`` method returning the same (another detector, or a stand-in in tests),
    or a bare Mask R-CNN module (:func:`napari_histoseg.models.detector.detect`). ``min_score``:
    the score the caller keeps; weaker boxes skip the mask head (the same detections above it).
    ``regions``: per tile the (y0, y1, x0, x1) where a kept nucleus's centroid must lie (its
    core); boxes that do not reach into it skip the mask head too.
    Returns a list of dicts ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``masks`` (N, 28, 28).
    """
    if isinstance(model, NucleusDetector):
        return model.detect_batch(batch, min_score, regions)
    if hasattr(model, "detect_batch"):
        return model.detect_batch(batch)
    return detect(model, batch, min_score, regions)


def paste(labels, dets, offset, core, next_id, score_threshold=0.5, mask_threshold=0.5):
    """Paste a tile's detections into ``labels`` (in place); returns the next free id and scores.

    ``offset`` (y, x) of the tile in ``labels``; ``core`` (y0, y1, x0, x1) in image
    coordinates: only detections whose mask centroid falls inside it are kept.
    """
    H, W = labels.shape
    oy, ox = offset
    kept = []
    scores = dets["scores"].numpy()
    order = np.argsort(-scores, kind="stable")
    boxes = dets["boxes"].numpy()
    masks = dets["masks"]
    for k in order:
        if scores[k] < score_threshold:
            break
        x0, y0, x1, y1 = boxes[k]
        bx0, by0 = int(np.floor(x0)), int(np.floor(y0))
        bw, bh = max(1, int(np.ceil(x1)) - bx0), max(1, int(np.ceil(y1)) - by0)
        m = F.interpolate(masks[k][None, None], size=(bh, bw), mode="bilinear",
                          align_corners=False)[0, 0].numpy() > mask_threshold
        gy0, gx0 = by0 + oy, bx0 + ox
        # clip to the image
        cy0, cx0 = max(gy0, 0), max(gx0, 0)
        cy1, cx1 = min(gy0 + bh, H), min(gx0 + bw, W)
        if cy1 <= cy0 or cx1 <= cx0:
            continue
        m = m[cy0 - gy0:cy1 - gy0, cx0 - gx0:cx1 - gx0]
        area = int(m.sum())
        if area == 0:
            continue
        yy, xx = np.nonzero(m)
        cy, cx = cy0 + yy.mean(), cx0 + xx.mean()
        if not (core[0] <= cy < core[1] and core[2] <= cx < core[3]):
            continue
        view = labels[cy0:cy1, cx0:cx1]
        free = m & (view == 0)
        if free.sum() < 0.5 * area:
            continue
        view[free] = next_id
        kept.append(float(scores[k]))
        next_id += 1
    return next_id, kept


def _cores(starts, tile, length):
    """Core [a, b) of each tile: split at the middle of each overlap."""
    out = []
    for i, s in enumerate(starts):
        a = 0 if i == 0 else (s + min(starts[i - 1] + tile, length)) // 2
        b = length if i == len(starts) - 1 else (starts[i + 1] + min(s + tile, length)) // 2
        out.append((a, b))
    return out


def iter_detect(rgb, model, tile=640, overlap=128, score_threshold=0.5, mask_threshold=0.5, batch=1):
    """Generator yielding ``(done, total)`` tiles; returns ``(labels int32, scores)``.

    ``batch`` tiles go through the detector at once; the pasting order (and so the result)
    is the same for every ``batch``."""
    H, W = rgb.shape[:2]
    if overlap >= tile:
        raise ValueError(f"overlap ({overlap}) must be smaller than the tile ({tile})")
    ys, xs = tile_starts(H, tile, tile - overlap), tile_starts(W, tile, tile - overlap)
    cy, cx = _cores(ys, tile, H), _cores(xs, tile, W)
    labels = np.zeros((H, W), np.int32)
    scores, next_id, done = [], 1, 0
    windows = [(i, j) for i in range(len(ys)) for j in range(len(xs))]
    total = len(windows)
    if isinstance(model, torch.nn.Module):
        model.eval()
    batch = max(1, int(batch))
    for b in range(0, total, batch):
        part = windows[b:b + batch]
        patches = np.stack([rgb[ys[i]:ys[i] + tile, xs[j]:xs[j] + tile] for i, j in part])
        t = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255.0
        cores = [(cy[i][0] - ys[i], cy[i][1] - ys[i], cx[j][0] - xs[j], cx[j][1] - xs[j]) for i, j in part]
        for (i, j), dets in zip(part, run_detector(model, t, score_threshold, cores)):
            next_id, kept = paste(labels, dets, (ys[i], xs[j]), (*cy[i], *cx[j]), next_id,
                                  score_threshold, mask_threshold)
            scores += kept
            done += 1
            yield done, total
    return labels, np.asarray(scores, np.float32)


#: Macenko stain target fitted on every second pixel of the 11 MoNuSeg training tiles of the bundled model.
MONUSEG_STAIN = {"method": "macenko",
                 "stain_matrix": [[0.598561, 0.713178, 0.36483], [0.170055, 0.824194, 0.540172]],
                 "max_concentrations": [2.642582, 1.658244], "beta": 0.15, "alpha": 1.0, "percentile": 99.0}


def stain_target(meta, stain=None):
    """The stain parameters ``detect_nuclei`` normalises to: ``stain`` if a dict; None for
    False; for True the checkpoint's ``preprocessing["stain"]`` or :data:`MONUSEG_STAIN`; for
    None (the default) the checkpoint's, if it names one."""
    if isinstance(stain, dict):
        return stain
    own = (meta.preprocessing or {}).get("stain")
    if stain is True:
        return own or MONUSEG_STAIN
    return own if stain is None else None


def stain_normalise(rgb: np.ndarray, params: dict) -> np.ndarray:
    """``rgb`` with its stains mapped onto ``params`` (a :mod:`napari_histoseg.colour.normalise`
    ``to_dict``), fitted on ``rgb`` itself; unchanged, with a warning, where it holds too little
    tissue to fit."""
    from napari_histoseg.colour.normalise import normaliser_from_dict

    norm = normaliser_from_dict(params)
    try:
        norm.fit(rgb)
    except ValueError as e:
        warnings.warn(f"stain normalisation skipped: {e}", stacklevel=2)
        return rgb
    return norm.transform(rgb)


def _rescale(rgb, factor):
    t = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
    size = (max(1, round(rgb.shape[0] * factor)), max(1, round(rgb.shape[1] * factor)))
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=factor < 1)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def detect_nuclei(image, model=None, mpp=None, *, tile=640, overlap=128, score_threshold=None,
                  mask_threshold=None, features=True, progress=None, should_stop=None, batch=2,
                  split_touching=None, stain=None):
    """Find and outline every nucleus of an H&E image.

    Parameters
    ----------
    image : array (H, W, 3) RGB (uint8, or any dtype :func:`ensure_rgb_uint8` accepts)
    model : str, Path, NucleusDetector, ``(module, meta)`` or None
        A nucleus checkpoint, a loaded one, or None for the bundled model.
    mpp : float, optional
        Microns per pixel of ``image`` (from the file or the user; 0.05-20). When given and it
        differs from the model's by more than 5 %, the image is resampled to the model's mpp
        and the labels back.
    tile, overlap : int
        Tile side and overlap in model pixels; ``overlap`` must exceed the widest nucleus.
    batch : int
        Tiles per detector call (1-64).
    split_touching : bool, optional
        Cut non-convex instances at their waists (default: the checkpoint's
        ``preprocessing["split_touching"]``, else off).
    stain : bool or dict, optional
        Normalise the stain first (:func:`stain_target`): True, to the checkpoint's target or
        the MoNuSeg one; None, to the checkpoint's if it names one; a dict, to those
        parameters; False, never. Worth turning on for images of another lab or scanner.
    score_threshold, mask_threshold : float
        Minimum detection score (default: the checkpoint's ``preprocessing["score_threshold"]``,
        chosen on the validation tiles, else 0.5) and mask probability (likewise
        ``preprocessing["mask_threshold"]``).
    features : bool
        Measure every nucleus (see :func:`napari_histoseg.nuclei.features.nucleus_features`).
    progress, should_stop : callables
        ``progress(done, total)`` per tile; ``should_stop()`` True cancels
        (:class:`napari_histoseg.core.runs.Cancelled`).

    Returns
    -------
    labels : ndarray of uint32 (H, W)
        0 background, 1..N one nucleus each.
    table : pandas.DataFrame or None
        One row per nucleus (``label``, centroid, area in µm² or px², ...), None if
        ``features=False``.
    """
    from napari_histoseg.io.checks import check_float, check_int

    rgb = check_image(image)
    if mpp is not None:
        mpp = check_float(mpp, "mpp", lo=0.05, hi=20)
    tile = check_int(tile, "tile", lo=64, hi=4096)
    overlap = check_int(overlap, "overlap", lo=0, hi=tile - 1)
    batch = check_int(batch, "batch", lo=1, hi=64)
    if model is None or isinstance(model, (str, Path)):
        model = load_nuclei_detector(model)
    net, meta = (model, model.meta) if isinstance(model, NucleusDetector) else model
    if score_threshold is None:
        score_threshold = float((meta.preprocessing or {}).get("score_threshold", 0.5))
    if mask_threshold is None:
        mask_threshold = float((meta.preprocessing or {}).get("mask_threshold", 0.5))
    score_threshold = check_float(score_threshold, "score_threshold", lo=0, hi=1)
    mask_threshold = check_float(mask_threshold, "mask_threshold", lo=0, hi=1, lo_open=True, hi_open=True)
    if split_touching is None:
        split_touching = bool((meta.preprocessing or {}).get("split_touching", False))
    factor = 1.0
    if mpp and meta.mpp and abs(mpp / meta.mpp - 1) > 0.05:
        factor = mpp / meta.mpp
    work = _rescale(rgb, factor) if factor != 1.0 else rgb
    target = stain_target(meta, stain)
    if target:
        work = stain_normalise(work, target)
    if min(work.shape[:2]) < MIN_SIDE:
        raise ImageFormatError(f"image too small at the model's resolution ({work.shape[1]} x {work.shape[0]} px)")
    labels, _ = drive(iter_detect(work, net, tile, overlap, score_threshold, mask_threshold, batch),
                      progress, should_stop, "nucleus detection")
    if split_touching:
        from napari_histoseg.nuclei.postprocess import split_touching as _split

        labels = _split(labels)
    if factor != 1.0:
        t = torch.from_numpy(labels).double()[None, None]
        labels = F.interpolate(t, size=rgb.shape[:2], mode="nearest")[0, 0].to(torch.int64).numpy()
        from skimage.segmentation import relabel_sequential

        labels = relabel_sequential(labels)[0]
    labels = labels.astype(np.uint32)
    table = None
    if features:
        from napari_histoseg.nuclei.features import nucleus_features

        table = nucleus_features(labels, rgb, mpp=mpp)
    return labels, table
