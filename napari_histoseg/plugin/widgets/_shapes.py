"""The one shape rasteriser of the widgets: what a person drew in a Shapes layer, as
boolean masks on the pixel grid of an image layer (any pyramid level), wherever the two
layers lie in the world (scale, translate, affine)."""

from __future__ import annotations

import numpy as np
from napari.layers import Image, Shapes

from napari_histoseg.plugin.widgets._layers import level_data, level_downsample


def shape_masks(shapes: Shapes, image: Image, level: int = 0) -> list[tuple[int, tuple, np.ndarray]]:
    """``(index, (y0, x0, h, w), mask)`` for each drawn shape that covers pixels of the image:
    its box in pixels of ``level`` (clipped to the image) and its mask over that box.
    Rectangles, polygons and ellipses are filled; lines and paths are their pixels."""
    ds = level_downsample(image, level)
    hw = np.asarray(level_data(image, level).shape[:2])
    out = []
    for i, (verts, kind) in enumerate(zip(shapes.data, shapes.shape_type)):
        pts = np.array([image.world_to_data(shapes.data_to_world(v))[-2:] for v in verts]) / ds
        y0, x0 = np.clip(np.floor(pts.min(0)), 0, hw).astype(int)
        y1, x1 = np.clip(np.ceil(pts.max(0)) + 1, 0, hw).astype(int)
        if y1 <= y0 or x1 <= x0:
            continue  # outside the image
        local = Shapes([pts - (y0, x0)], shape_type=[kind])
        mask = np.asarray(local.to_masks(mask_shape=np.array([y1 - y0, x1 - x0]))[0], bool)
        if mask.any():
            out.append((i, (int(y0), int(x0), int(y1 - y0), int(x1 - x0)), mask))
    return out


def rasterise(shapes: Shapes, image: Image, level: int = 0, window=None) -> np.ndarray:
    """One boolean mask of every drawn shape, over ``window`` ``(y0, x0, h, w)`` of ``level``
    (default: the whole level)."""
    if window is None:
        window = (0, 0, *level_data(image, level).shape[:2])
    wy, wx, h, w = (int(v) for v in window)
    mask = np.zeros((h, w), bool)
    for _, (y0, x0, sh, sw), m in shape_masks(shapes, image, level):
        ty0, tx0 = max(y0, wy), max(x0, wx)
        ty1, tx1 = min(y0 + sh, wy + h), min(x0 + sw, wx + w)
        if ty1 > ty0 and tx1 > tx0:
            mask[ty0 - wy:ty1 - wy, tx0 - wx:tx1 - wx] |= m[ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0]
    return mask
