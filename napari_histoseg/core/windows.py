"""Windows of an image: tile origins, blending weights, tile plans, reading a window of a lazy level."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

from napari_histoseg.io.validate import ImageFormatError, ensure_rgb_uint8

STRIDE = 32  # the encoders downsample by 32; tiles must be multiples of it


def tile_starts(length: int, tile: int, stride: int) -> list[int]:
    """Start offsets that cover ``[0, length)`` with windows of ``tile`` every ``stride``.

    The last window is aligned to the end, so no window leaves the image unless the
    image is shorter than one tile (then the single window starts at 0).
    """
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def blend_window(height: int, width: int, overlap: int) -> np.ndarray:
    """Separable weight window: 1 inside, a raised-cosine ramp over ``overlap`` px at each edge.

    The weights never reach zero (the outermost pixel gets a small positive weight), so
    every pixel of the image is covered by a positive total weight.
    """

    def ramp(n: int) -> np.ndarray:
        r = np.ones(n, np.float32)
        k = min(overlap, n // 2)
        if k > 0:
            t = (np.arange(k, dtype=np.float32) + 0.5) / k
            edge = 0.5 - 0.5 * np.cos(np.pi * t)
            r[:k] = edge
            r[n - k:] = edge[::-1]
        return r

    return np.outer(ramp(height), ramp(width)).astype(np.float32)


def _round_tile(tile: int) -> int:
    return max(STRIDE * 2, int(tile) // STRIDE * STRIDE)


def fit_tile(length: int, tile: int, overlap: int) -> int:
    """The smallest tile edge (a multiple of 32, at most ``tile``) that covers ``length``
    with as few tiles as ``tile`` would need and at least ``overlap`` px between them.

    A 2048 px side with 512 px tiles and 64 px overlap needs 5 tiles either way; 480 px
    tiles do it with 17 % fewer pixels to compute than 512 px ones.
    """
    if length <= tile:
        return math.ceil(length / STRIDE) * STRIDE
    n = math.ceil((length - overlap) / (tile - overlap))
    return min(tile, math.ceil((length + (n - 1) * overlap) / n / STRIDE) * STRIDE)


def auto_batch(th: int, tw: int, device_type: str = "cpu") -> int:
    """Tiles per forward pass: on a CPU, large batches of large tiles run slower per
    pixel (cache), so keep about 2^18 px per batch; on a GPU batch up to 2^22 px."""
    budget = 1 << (22 if device_type in ("cuda", "mps") else 18)
    return max(1, budget // (th * tw))


@dataclass
class TilePlan:
    """Where the tiles of one prediction (or explanation) lie.

    The context window is the region plus ``overlap`` px around it (clipped to the image),
    so that the region's edges are not tile edges; tiles cover the context window.
    """

    region: tuple[int, int, int, int]   # (ry, rx, rh, rw) in image pixels
    context: tuple[int, int, int, int]  # (cy0, cx0, ch, cw) in image pixels
    tile: tuple[int, int]               # (th, tw)
    origins: list                       # tile origins (y, x) in context pixels
    window: np.ndarray                  # (th, tw) blend weights

    def weight_sum(self) -> np.ndarray:
        """Total blend weight of every context pixel."""
        _, _, ch, cw = self.context
        th, tw = self.tile
        weight = np.zeros((ch, cw), np.float32)
        for y, x in self.origins:
            h, w = min(th, ch - y), min(tw, cw - x)
            weight[y:y + h, x:x + w] += self.window[:h, :w]
        return weight


def plan_tiles(shape, region, tile: int, overlap: int) -> TilePlan:
    """The tiles for ``region`` (None: the whole image) of an image of ``shape``: tile
    edges a multiple of 32 and no larger than needed (:func:`fit_tile`), ``overlap`` px
    between tiles and of context around the region."""
    H, W = shape[:2]
    if region is None:
        region = (0, 0, H, W)
    ry, rx, rh, rw = (int(v) for v in region)
    if rh <= 0 or rw <= 0 or ry < 0 or rx < 0 or ry + rh > H or rx + rw > W:
        raise ValueError(f"region {tuple(region)} is not inside the image of {H} x {W} px")
    tile = _round_tile(tile)
    overlap = int(np.clip(overlap, 0, tile // 2))
    cy0, cx0 = max(ry - overlap, 0), max(rx - overlap, 0)
    ch, cw = min(ry + rh + overlap, H) - cy0, min(rx + rw + overlap, W) - cx0
    th, tw = fit_tile(ch, tile, overlap), fit_tile(cw, tile, overlap)
    sy, sx = max(th - overlap, STRIDE), max(tw - overlap, STRIDE)
    origins = [(y, x) for y in tile_starts(ch, th, sy) for x in tile_starts(cw, tw, sx)]
    return TilePlan((ry, rx, rh, rw), (cy0, cx0, ch, cw), (th, tw), origins, blend_window(th, tw, overlap))


def read_window(image, y0: int, x0: int, h: int, w: int) -> np.ndarray:
    """Read ``image[y0:y0+h, x0:x0+w]`` as uint8 RGB, mirrored where it leaves the image."""
    H, W = image.shape[:2]
    y1, x1 = min(y0 + h, H), min(x0 + w, W)
    ys, xs = max(y0, 0), max(x0, 0)
    patch = np.asarray(image[ys:y1, xs:x1])
    if patch.dtype != np.uint8 or patch.shape[-1] != 3:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            patch, _ = ensure_rgb_uint8(patch)
    pad = ((ys - y0, y0 + h - y1), (xs - x0, x0 + w - x1), (0, 0))
    if any(p for pair in pad[:2] for p in pair):
        patch = np.pad(patch, pad, mode="symmetric")
    return patch


def check_image(image):
    """Validate the input; numpy arrays are converted to RGB uint8 once, lazy arrays are
    checked by shape only (never read whole) and converted tile by tile."""
    shape = getattr(image, "shape", None)
    if shape is None:
        raise TypeError(f"expected an image array, got {type(image).__name__}")
    if isinstance(image, np.ndarray):
        rgb, notes = ensure_rgb_uint8(image)
        for note in notes:
            warnings.warn(note, stacklevel=3)
        return rgb
    if len(shape) != 3 or shape[-1] not in (3, 4):
        raise ImageFormatError(
            f"napari-histoseg needs an RGB H&E image (H, W, 3); got an array of shape {tuple(shape)}"
        )
    return image
