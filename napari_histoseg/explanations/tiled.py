"""Tiles for explanations: the inference engine's windows, blending and mirrored reads.

:func:`~napari_histoseg.core.windows.plan_tiles` is the inference engine's own tiling, and
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

import numpy as np

from napari_histoseg.core.windows import TilePlan, read_window
from napari_histoseg.explanations.methods import TARGETS, ExplainError


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
            tile_rgb = read_window(image, cy0 + y, cx0 + x, th, tw)
            if preprocess is not None:
                tile_rgb = preprocess(tile_rgb)
            extra = {}
            m = int(getattr(engine, "margin", 0))
            if m:
                surround = read_window(image, cy0 + y - m, cx0 + x - m, th + 2 * m, tw + 2 * m)
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
