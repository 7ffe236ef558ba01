"""Tiled sliding-window prediction for images of any size.

The image is covered by overlapping tiles (a multiple of 32 px, the encoder's stride);
tiles are read lazily (only the window in hand is decoded from a slide), batched, run
through the model, and blended back with a window that is 1 in the tile's centre and
falls off smoothly across the overlap, so the probability map has no seams. Tiles that
stick out of the image are filled by mirroring the image, never by black or white.

The model sees every image at the scale it was trained at: where the image's µm per pixel
(``mpp``) and the model's (``model.meta.mpp``) are both known and differ, tiles are read at the
image's resolution, resampled to the model's scale (antialiased when shrinking), predicted and
the probability resampled back, so the map is on the image's own grid (``Prediction.scale``
says by how much; 1.0 where either mpp is unknown, and nothing is resampled then).

Glass and background are not tumour: by default the probability is gated by the tissue
mask of :mod:`napari_histoseg.core.tissue` (the same detector ``segment-slides`` uses),
tiles without tissue are not run, and :class:`Prediction` carries the mask, so the
tumour can be given as a fraction of the tissue. ``tissue_gate=False`` switches it off.

The engine only needs a model with ``predict(uint8 (N, h, w, 3)) -> float32 (N, C, h, w)``
and ``out_channels`` (:class:`~napari_histoseg.models.segmenter.Segmenter`, or its ONNX
Runtime twin).

Example
-------
>>> from napari_histoseg.models.segmenter import Segmenter
>>> rgb = np.full((300, 700, 3), 200, np.uint8)
>>> pred = predict(rgb, Segmenter.random(), tile=256, overlap=64)
>>> pred.probability.shape, pred.mask.dtype
((300, 700), dtype('uint8'))
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Generator, Optional

import numpy as np

from napari_histoseg.core.runs import drive
from napari_histoseg.core.windows import auto_batch, check_image, plan_tiles, read_window

WHOLE_IMAGE_TISSUE_PX = 1 << 26  # tissue of a region of an in-memory image up to 8k x 8k: found on the whole


@dataclass
class Prediction:
    """Result of a tiled prediction.

    Attributes
    ----------
    probability : ndarray, float32
        Tumour probability (H, W) for a one-channel model, or (C, H, W) class
        probabilities for a multi-class model.
    mask : ndarray, uint8
        Class codes (H, W): probability >= threshold for one channel, argmax otherwise.
    region : tuple of int
        ``(y, x, h, w)`` of the predicted window in the input image's pixels.
    tissue : ndarray of bool (H, W) or None
        Where tissue was found (None: no tissue gate; every pixel counts as tissue).
        Outside it the probability is 0 (one channel) or class 0 (multi-class).
    """

    probability: np.ndarray
    mask: np.ndarray
    region: tuple[int, int, int, int]
    tissue: Optional[np.ndarray] = None
    scale: float = 1.0               # image pixels per model pixel (1.0: not resampled)
    image_mpp: Optional[float] = None
    model_mpp: Optional[float] = None

    @property
    def tissue_px(self) -> int:
        """Pixels of tissue in the region (all of them without a gate)."""
        return int(self.mask.size if self.tissue is None else self.tissue.sum())

    @property
    def tumour_fraction_of_tissue(self) -> Optional[float]:
        """Tumour pixels (``mask == 1``) over tissue pixels; None when there is no tissue."""
        n = self.tissue_px
        return None if n == 0 else float((self.mask == 1).sum()) / n


SCALE_TOLERANCE = 0.02  # relative scale mismatch read as it is


def model_mpp(model) -> Optional[float]:
    """µm per pixel the model was trained at (its metadata), None when it does not say."""
    v = getattr(getattr(model, "meta", None), "mpp", None)
    return float(v) if v else None


def scale_factor(model, mpp: Optional[float]) -> float:
    """Image pixels per model pixel for an image of ``mpp`` µm/px (1.0 where either is unknown or
    they agree within 2 %)."""
    m = model_mpp(model)
    if not m or not mpp:
        return 1.0
    f = m / float(mpp)
    return 1.0 if abs(f - 1.0) <= SCALE_TOLERANCE else f


def _resize_batch(x: np.ndarray, size: tuple[int, int], channels_last: bool) -> np.ndarray:
    """Bilinear resize of a batch, (N, h, w, 3) uint8 or (N, C, h, w) float32, antialiased when shrinking."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x))
    t = t.permute(0, 3, 1, 2).float() if channels_last else t.float()
    shrink = size[0] < t.shape[-2] or size[1] < t.shape[-1]
    t = F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    if channels_last:
        return t.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return t.numpy()


def _model_side(n: int, factor: float) -> int:
    return max(32, int(round(n / factor / 32)) * 32)


class FlipAveraged:
    """Test-time augmentation: a segmentation model whose :meth:`predict` averages the
    probabilities of the batch as it is, flipped left-right, upside-down and both (each
    flipped back), at four times the cost. Everything else is the wrapped model's."""

    FLIPS = ((), (2,), (1,), (1, 2))  # axes of a (N, H, W, 3) batch; (N, C, H, W) maps shift by 1

    def __init__(self, model):
        self.model = model

    def __getattr__(self, name):
        return getattr(self.model, name)

    @property
    def description(self) -> str:
        return f"{self.model.description} + flip TTA"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        out = None
        for axes in self.FLIPS:
            x = np.ascontiguousarray(np.flip(batch, axes)) if axes else batch
            p = self.model.predict(x)
            p = np.flip(p, tuple(a + 1 for a in axes)) if axes else p
            out = p.astype(np.float32) if out is None else out + p
        return np.ascontiguousarray(out / len(self.FLIPS), dtype=np.float32)


def iter_predict(
    image,
    model,
    *,
    tile: int = 512,
    overlap: int = 64,
    batch_size: Optional[int] = None,
    threshold: float = 0.5,
    region: Optional[tuple[int, int, int, int]] = None,
    preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    tissue_gate: bool = True,
    tissue=None,
    mpp: Optional[float] = None,
    resample: bool = True,
    tta: bool = False,
) -> Generator[tuple[int, int], None, Prediction]:
    """Generator form of :func:`predict`: yields ``(tiles_done, tiles_total)`` after each
    batch and returns the :class:`Prediction` (``result = yield from iter_predict(...)``).

    Closing the generator (or a napari worker's ``quit()``) cancels between batches.
    """
    image = check_image(image)
    if tta and not isinstance(model, FlipAveraged):
        model = FlipAveraged(model)
    factor = scale_factor(model, mpp) if resample else 1.0
    if factor != 1.0:  # tile and overlap are in model pixels; the plan is in image pixels
        tile, overlap = max(64, int(round(tile * factor))), int(round(overlap * factor))
    plan = plan_tiles(image.shape, region, tile, overlap)
    (ry, rx, rh, rw), (cy0, cx0, ch, cw), (th, tw) = plan.region, plan.context, plan.tile
    origins, window = plan.origins, plan.window
    in_tissue = None
    if tissue_gate:
        in_tissue = tissue_of(image, (cy0, cx0, ch, cw), tissue, mpp)
        origins = [(y, x) for y, x in origins if in_tissue[y:y + th, x:x + tw].any()]
    mh, mw = (th, tw) if factor == 1.0 else (_model_side(th, factor), _model_side(tw, factor))
    if batch_size is None:
        batch_size = auto_batch(mh, mw, getattr(getattr(model, "device", None), "type", "cpu"))

    C = int(model.out_channels)
    acc = np.zeros((C, ch, cw), np.float32)
    weight = np.zeros((ch, cw), np.float32)
    total = len(origins)
    yield 0, total
    for b in range(0, total, batch_size):
        chunk = origins[b:b + batch_size]
        tiles = [read_window(image, cy0 + y, cx0 + x, th, tw) for y, x in chunk]
        if preprocess is not None:
            tiles = [preprocess(t) for t in tiles]
        if factor == 1.0:
            probs = model.predict(np.stack(tiles))
        else:
            probs = _resize_batch(model.predict(_resize_batch(np.stack(tiles), (mh, mw), True)), (th, tw), False)
        for (y, x), p in zip(chunk, probs):
            h, w = min(th, ch - y), min(tw, cw - x)
            acc[:, y:y + h, x:x + w] += p[:, :h, :w] * window[:h, :w]
            weight[y:y + h, x:x + w] += window[:h, :w]
        yield min(b + batch_size, total), total

    oy, ox = ry - cy0, rx - cx0
    acc, weight = acc[:, oy:oy + rh, ox:ox + rw], weight[oy:oy + rh, ox:ox + rw]
    prob = np.divide(acc, weight, out=np.zeros_like(acc), where=weight > 0)
    if in_tissue is not None:
        in_tissue = np.ascontiguousarray(in_tissue[oy:oy + rh, ox:ox + rw])
        prob[:, ~in_tissue] = 0.0
        if C > 1:
            prob[0, ~in_tissue] = 1.0
    if C == 1:
        prob = prob[0]
        mask = (prob >= threshold).astype(np.uint8)
    else:
        mask = prob.argmax(0).astype(np.uint8)
    return Prediction(np.ascontiguousarray(prob, dtype=np.float32), mask, (ry, rx, rh, rw), in_tissue,
                      factor, float(mpp) if mpp else None, model_mpp(model))


def tissue_of(image, window, tissue=None, mpp: Optional[float] = None) -> np.ndarray:
    """Tissue (bool) at every pixel of ``window`` ``(y, x, h, w)`` of ``image``.

    ``tissue`` is None (found on the image by :func:`~napari_histoseg.core.tissue.image_tissue`
    at ``mpp``), a :class:`~napari_histoseg.core.tissue.TissueMask` in this image's pixels,
    or a boolean array of the image's (H, W).
    """
    from napari_histoseg.core.tissue import TissueMask, image_tissue

    y, x, h, w = window
    if tissue is None:
        size = image.shape[0] * image.shape[1]
        if h * w < size and (size > WHOLE_IMAGE_TISSUE_PX or not isinstance(image, np.ndarray)):
            # a window of a lazy or large level: find tissue on the window, never read the whole level
            return image_tissue(image, mpp=mpp, window=window).lookup((0, 0, h, w))
        tissue = image_tissue(image, mpp=mpp)
    if isinstance(tissue, TissueMask):
        return tissue.lookup(window)
    tissue = np.asarray(tissue, bool)
    if tissue.shape != tuple(image.shape[:2]):
        raise ValueError(f"the tissue mask is {tissue.shape[1]} x {tissue.shape[0]} px, "
                         f"the image {image.shape[1]} x {image.shape[0]} px")
    return tissue[y:y + h, x:x + w]


def predict(
    image,
    model,
    *,
    progress: Optional[Callable[[int, int], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    **kwargs,
) -> Prediction:
    """Predict tumour probability over ``image`` (or a region of it) tile by tile.

    Parameters
    ----------
    image : array-like, (H, W, 3)
        RGB image: a numpy array, or a lazy array (zarr, dask, a slide level) of which
        only the tiles in hand are read. RGBA and 16-bit input are converted with a
        warning; grayscale is refused with :class:`~napari_histoseg.io.validate.ImageFormatError`.
    model : Segmenter
        The model (see :func:`napari_histoseg.load_model`).
    tile : int
        Largest tile edge in pixels, rounded down to a multiple of 32 (default 512);
        tiles shrink to the smallest size that needs no more of them (:func:`fit_tile`).
    overlap : int
        Overlap between neighbouring tiles in pixels, blended smoothly (default 64).
    batch_size : int, optional
        Tiles per forward pass; by default about 2^18 px per batch on a CPU (larger
        batches of large tiles run slower per pixel there), 2^22 on a GPU.
    threshold : float
        Probability at or above which a pixel is tumour in ``mask``.
    region : (y, x, h, w), optional
        Predict only this window (plus ``overlap`` px of context around it).
    preprocess : callable, optional
        Applied to every uint8 tile before the model (e.g. a fitted
        :class:`~napari_histoseg.colour.preprocess.Preprocessor`).
    tissue_gate : bool
        True (default): glass and background are not tumour. Tissue is found on the
        image (or taken from ``tissue``); tiles without tissue are not run and the
        probability is 0 outside the tissue. False: every pixel goes through the model.
    tissue : TissueMask or bool array (H, W), optional
        A tissue mask found beforehand (e.g. on a slide's thumbnail, see
        :func:`~napari_histoseg.core.tissue.slide_tissue`) in this image's pixels.
    mpp : float, optional
        µm per pixel of ``image``: the image is resampled to the model's scale (``model.meta.mpp``)
        for the prediction and tissue is found at the right scale (0.5 assumed where None).
        Unknown: nothing is resampled (say so to the user; ``scale_factor`` tells).
    resample : bool
        False: never resample to the model's scale (``mpp`` then only sets the tissue scale).
    tta : bool
        Average over 4 flips of every tile (:class:`FlipAveraged`; 4x the model's time).
    progress : callable, optional
        Called as ``progress(tiles_done, tiles_total)``.
    should_stop : callable, optional
        Polled between batches; when it returns True, :class:`Cancelled` is raised.

    Returns
    -------
    Prediction
    """
    return drive(iter_predict(image, model, **kwargs), progress, should_stop, "prediction")
