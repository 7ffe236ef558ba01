"""Tissue detection on a low-resolution view of a slide (scikit-image underneath).

H&E tissue is coloured (pink and purple); glass, white background and the white margin
around tissue are grey, so the colour saturation separates them well. The threshold is
Otsu's on the saturation, but never below ``min_saturation`` (on a nearly blank slide
Otsu would split noise), followed by morphological clean-up: close small gaps, drop
specks, fill holes, and grow the mask by a small margin so tiles at the tissue border are
kept.

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

__all__ = ["detect_tissue", "TissueMask", "slide_tissue"]


def detect_tissue(
    rgb: np.ndarray,
    *,
    min_saturation: float = 0.07,
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
        thr = max(float(filters.threshold_otsu(sat)), min_saturation)
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


def slide_tissue(slide, max_size: int = 2048, **kwargs) -> TissueMask:
    """Detect tissue on a thumbnail of ``slide`` (an :class:`~napari_histoseg.io.Slide`)
    whose longer side is at most ``max_size`` px; read from the smallest pyramid level
    that suffices, so a gigapixel slide costs a few megapixels of reading."""
    thumb = slide.thumbnail(max_size)
    h0 = slide.shape[0]
    return TissueMask(detect_tissue(thumb, **kwargs), h0 / thumb.shape[0])
