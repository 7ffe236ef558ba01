"""Tiles for explanations: the inference engine's windows, blending and mirrored reads.

:func:`plan_tiles` lays out the same tiles as :func:`napari_histoseg.inference.iter_predict`
(same starts, same raised-cosine window, same context margin around a region), and
:func:`iter_tiles` runs a per-tile explainer over them and puts the tiles back together:

* ``engine.combine == "blend"`` (Grad-CAM, MC-dropout moments): per-location
  quantities, blended like predictions, a weighted mean of the tiles covering a pixel.
* ``engine.combine == "sum"`` (SHAP): additive attributions. Target pixel ``p`` counts
  in tile ``t`` with weight ``w_t(p) / sum_s w_s(p)`` and the tiles' attributions are
  summed: the exact decomposition of the blended target's gradient, without seams.

An engine is a callable ``engine(tile, weights, use_prediction=..., index=...,
[surround=...]) -> (depth, h, w)`` with attributes ``combine``, ``depth``, ``margin``
(px of context it wants around the tile, passed as ``surround``) and ``always`` (run
even where the tile holds no target pixel).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..inference import STRIDE, _read, _round_tile, blend_window, tile_starts
from ._common import TARGETS, ExplainError


@dataclass
class TilePlan:
    """Tiling of the context window around a region, as in ``inference.iter_predict``."""

    region: tuple[int, int, int, int]   # (ry, rx, rh, rw) in image pixels
    context: tuple[int, int, int, int]  # (cy0, cx0, ch, cw) in image pixels
    tile: tuple[int, int]               # (th, tw)
    origins: list                       # tile origins (y, x) in context pixels
    window: np.ndarray                  # (th, tw) blend weights

    def weight_sum(self) -> np.ndarray:
        """Total blend weight of every context pixel (as the inference engine accumulates it)."""
        _, _, ch, cw = self.context
        th, tw = self.tile
        weight = np.zeros((ch, cw), np.float32)
        for y, x in self.origins:
            h, w = min(th, ch - y), min(tw, cw - x)
            weight[y:y + h, x:x + w] += self.window[:h, :w]
        return weight


def plan_tiles(shape, region, tile: int, overlap: int) -> TilePlan:
    """The tiles :func:`~napari_histoseg.inference.iter_predict` would use for ``region``
    of an image of ``shape`` (tile rounded to a multiple of 32, ``overlap`` px of context)."""
    H, W = shape[:2]
    if region is None:
        region = (0, 0, H, W)
    ry, rx, rh, rw = (int(v) for v in region)
    if rh <= 0 or rw <= 0 or ry < 0 or rx < 0 or ry + rh > H or rx + rw > W:
        raise ValueError(f"region {tuple(region)} is not inside the image of {H} x {W} px")
    tile = _round_tile(tile)
    overlap = int(np.clip(overlap, 0, tile // 2))
    m = overlap
    cy0, cx0 = max(ry - m, 0), max(rx - m, 0)
    ch, cw = min(ry + rh + m, H) - cy0, min(rx + rw + m, W) - cx0
    th = min(tile, math.ceil(ch / STRIDE) * STRIDE)
    tw = min(tile, math.ceil(cw / STRIDE) * STRIDE)
    sy, sx = max(th - overlap, STRIDE), max(tw - overlap, STRIDE)
    origins = [(y, x) for y in tile_starts(ch, th, sy) for x in tile_starts(cw, tw, sx)]
    return TilePlan((ry, rx, rh, rw), (cy0, cx0, ch, cw), (th, tw), origins, blend_window(th, tw, overlap))


def target_array(target, plan: TilePlan, image_shape) -> np.ndarray:
    """A drawn (H, W) or region-shaped target as a boolean array over the context window."""
    arr = np.asarray(target)
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number):
            raise ExplainError(f"target must be one of {TARGETS} or a boolean (H, W) array")
        arr = arr != 0
    ry, rx, rh, rw = plan.region
    cy0, cx0, ch, cw = plan.context
    out = np.zeros((ch, cw), bool)
    oy, ox = ry - cy0, rx - cx0
    if arr.shape == tuple(image_shape[:2]):
        out[oy:oy + rh, ox:ox + rw] = arr[ry:ry + rh, rx:rx + rw]
    elif arr.shape == (rh, rw):
        out[oy:oy + rh, ox:ox + rw] = arr
    else:
        raise ExplainError(
            f"a target array must have the image's shape {tuple(image_shape[:2])} or the "
            f"region's ({rh}, {rw}); got {arr.shape}"
        )
    if not out.any():
        raise ExplainError("the target region is empty (no pixel inside the image or region)")
    return out


def iter_tiles(image, engine, plan: TilePlan, drawn=None, *, use_prediction=False, preprocess=None):
    """Run ``engine`` tile by tile; yields ``(done, total)``, returns (depth, rh, rw) float32.

    ``drawn`` is a boolean target over the context window (see :func:`target_array`),
    None for every pixel of the region.
    """
    ry, rx, rh, rw = plan.region
    cy0, cx0, ch, cw = plan.context
    th, tw = plan.tile
    oy, ox = ry - cy0, rx - cx0
    inside = np.zeros((ch, cw), bool)  # target pixels may only lie in the region
    inside[oy:oy + rh, ox:ox + rw] = True
    tgt = inside if drawn is None else drawn
    summing = engine.combine == "sum"
    if summing:
        share = np.where(inside, 1.0 / np.maximum(plan.weight_sum(), 1e-12), 0).astype(np.float32)

    depth = int(engine.depth)
    acc = np.zeros((depth, ch, cw), np.float32)
    weight = np.zeros((ch, cw), np.float32)
    total = len(plan.origins)
    yield 0, total
    for i, (y, x) in enumerate(plan.origins):
        h, w = min(th, ch - y), min(tw, cw - x)
        weights = np.zeros((th, tw), np.float32)
        weights[:h, :w] = tgt[y:y + h, x:x + w]
        if summing:
            weights[:h, :w] *= plan.window[:h, :w] * share[y:y + h, x:x + w]
        if engine.always or weights.any():
            tile_rgb = _read(image, cy0 + y, cx0 + x, th, tw)
            if preprocess is not None:
                tile_rgb = preprocess(tile_rgb)
            extra = {}
            m = int(getattr(engine, "margin", 0))
            if m:
                surround = _read(image, cy0 + y - m, cx0 + x - m, th + 2 * m, tw + 2 * m)
                extra["surround"] = preprocess(surround) if preprocess is not None else surround
            out = engine(tile_rgb, weights, use_prediction=use_prediction, index=i, **extra).reshape(depth, th, tw)
        else:  # nothing of the target in this tile: nothing to explain here
            out = np.zeros((depth, th, tw), np.float32)
        if summing:
            acc[:, y:y + h, x:x + w] += out[:, :h, :w]
        else:
            acc[:, y:y + h, x:x + w] += out[:, :h, :w] * plan.window[:h, :w]
            weight[y:y + h, x:x + w] += plan.window[:h, :w]
        yield i + 1, total

    acc = acc[:, oy:oy + rh, ox:ox + rw]
    if not summing:
        acc = acc / weight[oy:oy + rh, ox:ox + rw]
    return acc
