"""Tissue detection on a low-resolution view of a slide (scikit-image underneath).

H&E tissue is coloured (pink and purple); glass, white background and the white margin
around tissue are grey, so the colour saturation separates them well. The threshold is
Otsu's on the saturation, clipped to ``[min_saturation, max_saturation]``: never below
the floor (on a nearly blank slide Otsu would split noise) and never above the cap (on an
image that is all tissue Otsu would split pale stroma from dense tumour; glass stays
under 0.05). Then morphological clean-up: close small gaps, drop specks, fill holes, and
grow the mask by a small margin so tiles at the tissue border are kept.

Every path that segments (``histoseg segment``, ``segment-slides``, the API and the
widget) finds tissue the same way: on a thumbnail of about :data:`TISSUE_MPP` µm per
pixel (:func:`thumbnail_side`), so that lumina and gaps inside the tissue close, and
small images that are all tissue come out all tissue.

Example
-------
>>> rgb = np.full((200, 300, 3), 245, np.uint8)
>>> rgb[50:150, 100:200] = (180, 90, 160)          # a pink-purple island
>>> t = detect_tissue(rgb, margin=0)
>>> bool(t[100, 150]), bool(t[10, 10]), round(float(t.mean()), 2)
(True, False, 0.17)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["detect_tissue", "TissueMask", "slide_tissue", "image_tissue", "thumbnail_side",
           "TISSUE_MPP", "ASSUMED_MPP"]

TISSUE_MPP = 2.0    # µm per pixel of the thumbnail tissue is found on
ASSUMED_MPP = 0.5   # µm per pixel assumed when an image does not say (a 20x scan)
MAX_SIDE = 2048     # the thumbnail's longer side at most


def detect_tissue(
    rgb: np.ndarray,
    *,
    min_saturation: float = 0.07,
    max_saturation: float = 0.15,
    min_size: int = 64,
    closing: int = 2,
    margin: int = 1,
) -> np.ndarray:
    """Boolean tissue mask of a small RGB uint8 image (a thumbnail of a slide).

    Parameters
    ----------
    rgb : ndarray, (h, w, 3) uint8
        A low-resolution view of the slide (a few thousand pixels a side at most).
    min_saturation : float
        Floor of the saturation threshold (0-1); Otsu's threshold is used when higher.
    max_saturation : float
        Cap of the saturation threshold (0-1), so an image that is all tissue is not
        split in two by Otsu.
    min_size : int
        Objects and holes smaller than this many pixels are removed / filled.
    closing : int
        Radius (px) of the disk for morphological closing (0: none).
    margin : int
        The mask is dilated by this many pixels, so border tiles are not lost.

    Returns
    -------
    ndarray of bool, (h, w)
    """
    from skimage import color, filters, morphology

    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"detect_tissue needs an RGB image (h, w, 3), got shape {rgb.shape}")
    sat = color.rgb2hsv(rgb)[..., 1]
    # pure black (scanner borders, pen) is saturation 0 in HSV already; very dark
    # pixels get a noisy saturation, so leave them out explicitly
    dark = rgb.max(axis=-1) < 25
    thr = min_saturation
    if np.ptp(sat) > 1e-6:
        thr = min(max(float(filters.threshold_otsu(sat)), min_saturation), max(max_saturation, min_saturation))
    mask = (sat > thr) & ~dark
    if closing > 0:
        mask = morphology.closing(mask, morphology.disk(closing))
    if min_size > 0:
        mask = morphology.remove_small_objects(mask, max_size=min_size - 1)
        mask = morphology.remove_small_holes(mask, max_size=min_size - 1)
    if margin > 0:
        mask = morphology.dilation(mask, morphology.disk(margin))
    return mask


@dataclass
class TissueMask:
    """A tissue mask and where it lies on the slide.

    Attributes
    ----------
    mask : ndarray of bool (h, w)
    downsample : float
        Level-0 slide pixels per mask pixel (the same along y and x, to within rounding).
    """

    mask: np.ndarray
    downsample: float

    def window(self, y0: float, x0: float, y1: float, x1: float) -> np.ndarray:
        """The part of the mask covering level-0 pixels ``[y0, y1) x [x0, x1)`` (every
        mask pixel that touches the window)."""
        d = self.downsample
        h, w = self.mask.shape
        a, b = max(int(np.floor(y0 / d)), 0), min(int(np.ceil(y1 / d)), h)
        c, e = max(int(np.floor(x0 / d)), 0), min(int(np.ceil(x1 / d)), w)
        return self.mask[a:max(a, b), c:max(c, e)]

    def any(self, y0, x0, y1, x1) -> bool:
        """Whether any tissue touches level-0 pixels ``[y0, y1) x [x0, x1)``."""
        return bool(self.window(y0, x0, y1, x1).any())

    def lookup(self, region, downsample: float = 1.0) -> np.ndarray:
        """The mask at every pixel of ``region`` ``(y, x, h, w)`` of an image whose pixels
        are ``downsample`` level-0 pixels (nearest mask pixel to each pixel centre)."""
        y, x, h, w = (int(v) for v in region)
        f = float(downsample) / self.downsample
        mh, mw = self.mask.shape
        r = np.clip(((np.arange(y, y + h) + 0.5) * f).astype(int), 0, mh - 1)
        c = np.clip(((np.arange(x, x + w) + 0.5) * f).astype(int), 0, mw - 1)
        return self.mask[r][:, c]


def thumbnail_side(shape, mpp=None, max_size: int = MAX_SIDE) -> int:
    """Longer side (px) of the thumbnail tissue is found on, for an image of ``shape`` at
    ``mpp`` µm per pixel (:data:`ASSUMED_MPP` when None): about :data:`TISSUE_MPP` µm per
    thumbnail pixel, at most ``max_size`` px, never larger than the image."""
    long_side = max(int(shape[0]), int(shape[1]))
    factor = max(1.0, TISSUE_MPP / float(mpp or ASSUMED_MPP))
    return max(1, min(int(max_size), long_side, int(round(long_side / factor))))


def slide_tissue(slide, max_size: int = MAX_SIDE, **kwargs) -> TissueMask:
    """Detect tissue on a thumbnail of ``slide`` (an :class:`~napari_histoseg.io.Slide`)
    of :func:`thumbnail_side` px (at most ``max_size``); read from the smallest pyramid
    level that suffices, so a gigapixel slide costs a few megapixels of reading."""
    thumb = slide.thumbnail(thumbnail_side(slide.shape, slide.mpp, max_size))
    h0 = slide.shape[0]
    return TissueMask(detect_tissue(thumb, **kwargs), h0 / thumb.shape[0])


class _RGBRows:
    """Row bands of a lazy image as RGB uint8 (what :meth:`Slide.thumbnail` reads)."""

    def __init__(self, image, window=None):
        self.image = image
        self.y0, self.x0, h, w = window or (0, 0, image.shape[0], image.shape[1])
        self.shape = (int(h), int(w), 3)
        self.dtype = np.dtype(np.uint8)
        self.chunks = getattr(image, "chunks", None)

    def __getitem__(self, key):
        from napari_histoseg.core.windows import read_window

        start, stop, _ = key.indices(self.shape[0]) if isinstance(key, slice) else (key, key + 1, 1)
        return read_window(self.image, self.y0 + start, self.x0, stop - start, self.shape[1])


def image_tissue(image, mpp=None, max_size: int = MAX_SIDE, window=None, **kwargs) -> TissueMask:
    """The tissue of one image level (a numpy array or a lazy array read band by band),
    found exactly as :func:`slide_tissue` finds it on a slide of that level; with
    ``window`` ``(y, x, h, w)`` only on that part (the mask's pixels then start there).

    >>> rgb = np.full((400, 400, 3), 240, np.uint8); rgb[100:300, 100:300] = (170, 80, 150)
    >>> t = image_tissue(rgb, mpp=0.5)
    >>> t.mask.shape, t.downsample, bool(t.lookup((200, 200, 1, 1))[0, 0])
    ((100, 100), 4.0, True)
    """
    from napari_histoseg.io.slide import Slide

    whole = window is None or tuple(window) == (0, 0, image.shape[0], image.shape[1])
    level = image if whole and isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 \
        and image.shape[-1] == 3 else _RGBRows(image, None if whole else window)
    return slide_tissue(Slide(None, [level], mpp=mpp), max_size, **kwargs)
