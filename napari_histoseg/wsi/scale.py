"""Which pyramid level the model reads, and how it is resampled to the model's scale.

A model trained at ``model_mpp`` µm per pixel should see every slide at that scale: a slide
scanned at 40x (0.25 µm/px) is read from the level nearest to, and not coarser than, 0.5
µm/px and shrunk by the remaining factor; the same slide scanned at 20x (0.5 µm/px) is read
as it is. Both give the map on the same grid of 0.5 µm pixels.

Where the slide's or the model's mpp is unknown (the bundled model says ``mpp: null``;
many TIFFs carry no pixel size), nothing is resampled: level ``level`` (0 by default) is
read as it is, and a warning says so and names the setting to fill (``--slide-mpp`` /
``--model-mpp`` on the command line, ``slide_mpp=`` / ``model_mpp=`` in the API).

Example
-------
>>> s = choose_scale([(4000, 6000), (1000, 1500)], slide_mpp=0.25, model_mpp=0.5)
>>> s.level, s.factor, s.shape, s.mpp
(0, 2.0, (2000, 3000), 0.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

__all__ = ["Scale", "choose_scale", "ResampledLevel"]


@dataclass
class Scale:
    """How a slide is read for the model.

    Attributes
    ----------
    level : int
        Pyramid level read.
    factor : float
        Level pixels per model pixel (1.0: read as it is; 2.0: shrink by 2).
    downsample : float
        Level-0 pixels per model pixel (the level's downsample times ``factor``).
    shape : (int, int)
        Size of the map, in model pixels.
    mpp : float or None
        µm per model pixel (None when the slide's mpp is unknown).
    warnings : list of str
    """

    level: int
    factor: float
    downsample: float
    shape: tuple
    mpp: Optional[float]
    warnings: list = field(default_factory=list)


def choose_scale(level_shapes, slide_mpp=None, model_mpp=None, level=None, tolerance=0.02) -> Scale:
    """Choose the level and resampling factor for a slide.

    Parameters
    ----------
    level_shapes : list of (H, W, ...)
        Shapes of the slide's levels, level 0 first.
    slide_mpp, model_mpp : float, optional
        µm per pixel of the slide's level 0 and of the model's training data.
    level : int, optional
        Force this level (no resampling); by default chosen from the two mpp values.
    tolerance : float
        Relative scale mismatch below which a level is read as it is (2 %).
    """
    shapes = [tuple(int(v) for v in s[:2]) for s in level_shapes]
    h0, w0 = shapes[0]
    downs = [((h0 / h) + (w0 / w)) / 2 for h, w in shapes]
    notes = []
    if level is not None:
        if not 0 <= level < len(shapes):
            raise ValueError(f"level {level} does not exist; the slide has {len(shapes)}")
        mpp = slide_mpp * downs[level] if slide_mpp else None
        return Scale(level, 1.0, downs[level], shapes[level], mpp, notes)
    if not slide_mpp or not model_mpp:
        missing = [n for n, v in (("slide", slide_mpp), ("model", model_mpp)) if not v]
        notes.append(
            f"the {' and the '.join(missing)} microns per pixel "
            f"{'is' if len(missing) == 1 else 'are'} unknown, so the slide is read at full "
            "resolution without rescaling; if the slide's magnification differs from the "
            "model's training data the map will be wrong. Give --slide-mpp / --model-mpp "
            "(slide_mpp= / model_mpp=) to fix the scale."
        )
        return Scale(0, 1.0, 1.0, shapes[0], slide_mpp, notes)
    target = float(model_mpp) / float(slide_mpp)       # level-0 px per model px
    if target < 1 - tolerance:
        notes.append(
            f"the slide ({slide_mpp:g} µm/px) is coarser than the model's scale "
            f"({model_mpp:g} µm/px): it is enlarged {1 / target:.2f}x, which adds no detail"
        )
    ok = [i for i, d in enumerate(downs) if d <= target * (1 + tolerance)]
    lv = ok[-1] if ok else 0
    factor = target / downs[lv]
    if abs(factor - 1) <= tolerance:
        factor = 1.0
    elif abs(factor - round(factor)) <= tolerance:
        factor = float(round(factor))
    h, w = shapes[lv]
    shape = (max(1, round(h / factor)), max(1, round(w / factor)))
    return Scale(lv, factor, downs[lv] * factor, shape, float(model_mpp), notes)


class ResampledLevel:
    """A lazy (H, W, 3) uint8 view of ``source`` shrunk (or enlarged) by ``factor``.

    Only the part indexed is read and resampled: integer factors by exact block means
    (so neighbouring blocks agree to the pixel), others by ``skimage.transform.resize``
    on the window plus a margin. Basic slicing of rows and columns only.
    """

    def __init__(self, source, factor: float, shape=None):
        self.source = source
        self.factor = float(factor)
        H, W = source.shape[:2]
        self.shape = tuple(shape or (max(1, round(H / factor)), max(1, round(W / factor)))) + (3,)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        ys, xs = (tuple(key) + (slice(None), slice(None)))[:2]
        y0, y1, _ = ys.indices(self.shape[0])
        x0, x1, _ = xs.indices(self.shape[1])
        out = self._read(y0, x0, max(y1 - y0, 0), max(x1 - x0, 0))
        rest = tuple(key[2:])
        return out[(slice(None), slice(None)) + rest] if rest else out

    def __array__(self, dtype=None, copy=None):
        out = self[:, :]
        return out if dtype is None else out.astype(dtype)

    def _read(self, y0, x0, h, w) -> np.ndarray:
        if h == 0 or w == 0:
            return np.zeros((h, w, 3), np.uint8)
        f = self.factor
        H, W = self.source.shape[:2]
        if f == int(f) and f >= 1:
            f = int(f)
            src = np.asarray(self.source[y0 * f:min((y0 + h) * f, H), x0 * f:min((x0 + w) * f, W)])
            src = src[..., :3]
            ph, pw = h * f - src.shape[0], w * f - src.shape[1]
            if ph or pw:
                src = np.pad(src, ((0, ph), (0, pw), (0, 0)), mode="edge")
            out = src.reshape(h, f, w, f, 3).mean(axis=(1, 3), dtype=np.float32)
            return np.clip(np.rint(out), 0, 255).astype(np.uint8)
        from scipy import ndimage

        # exact map: output pixel i has its centre at source (i + 0.5) * f - 0.5, so any
        # two windows agree where they overlap; anti-aliasing blur when shrinking
        sigma = max((f - 1) / 2, 0.0)
        m = int(math.ceil(3 * sigma + 2 * f)) + 1
        sy0, sx0 = max(math.floor(y0 * f) - m, 0), max(math.floor(x0 * f) - m, 0)
        sy1, sx1 = min(math.ceil((y0 + h) * f) + m, H), min(math.ceil((x0 + w) * f) + m, W)
        src = np.asarray(self.source[sy0:sy1, sx0:sx1])[..., :3].astype(np.float32)
        if sigma > 0:
            src = ndimage.gaussian_filter(src, (sigma, sigma, 0), mode="nearest")
        yy = (np.arange(y0, y0 + h, dtype=np.float32) + 0.5) * f - 0.5 - sy0
        xx = (np.arange(x0, x0 + w, dtype=np.float32) + 0.5) * f - 0.5 - sx0
        out = np.empty((h, w, 3), np.float32)
        grid = np.meshgrid(yy, xx, indexing="ij")
        for c in range(3):
            out[..., c] = ndimage.map_coordinates(src[..., c], grid, order=1, mode="nearest")
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)
