"""Tiles over an image region and their aggregated logits.

A region (a boolean mask, or the whole image) is covered by ``tile`` x ``tile`` windows
placed on a grid whose starts are spread evenly from the first to the last possible
position (:func:`napari_histoseg.core.windows.tile_starts`); a window counts when at least
``min_cover`` of it lies inside the region (the window most inside always counts). The
region's logits are the **mean of the tiles' raw logits**, weighted by how much of each
tile is inside the region; the calibrated probability is ``softmax(mean_logits / T)``,
the same aggregate the temperature was fitted on.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Optional

import numpy as np
import torch

from napari_histoseg.core.runs import Cancelled
from napari_histoseg.core.windows import tile_starts


def tile_boxes(shape, tile: int, region: Optional[np.ndarray] = None,
               min_cover: float = 0.5) -> tuple[list[tuple[int, int, int, int]], np.ndarray]:
    """``([(y, x, h, w), ...], weights)`` of the windows covering ``region``.

    Images smaller than ``tile`` on a side get one window of the image's size there.
    """
    h, w = int(shape[0]), int(shape[1])
    th, tw = min(tile, h), min(tile, w)
    ys = tile_starts(h, th, th) if h > th else [0]
    xs = tile_starts(w, tw, tw) if w > tw else [0]
    boxes = [(y, x, th, tw) for y in ys for x in xs]
    if region is None:
        return boxes, np.ones(len(boxes))
    region = np.asarray(region, bool)
    cover = np.array([region[y:y + bh, x:x + bw].mean() for y, x, bh, bw in boxes])
    if cover.max() <= 0:
        return [], np.zeros(0)
    keep = (cover >= min_cover) | (cover == cover.max())
    return [b for b, k in zip(boxes, keep) if k], cover[keep]


def to_input(batch: np.ndarray, mean=127.5, std=127.5) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W), ``(x - mean) / std``."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    m = torch.as_tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return (x - m) / s


@torch.no_grad()
def tile_logits(net, image: np.ndarray, tile: int, region=None, batch: int = 8,
                device="cpu", mean=127.5, std=127.5, min_cover: float = 0.5,
                progress: Optional[Callable[[int, int], None]] = None,
                should_stop: Optional[Callable[[], bool]] = None, autocast=None):
    """Raw logits of every tile over ``region``: ``(logits (K, C), weights (K,), boxes)``.

    ``autocast``: a callable giving the context the network runs in (a loaded model's
    :meth:`~napari_histoseg.models.loaded.LoadedModel.autocast`, bfloat16 on a fast CPU)."""
    boxes, weights = tile_boxes(image.shape, tile, region, min_cover)
    out = []
    with autocast() if autocast is not None else contextlib.nullcontext():
        for i in range(0, len(boxes), batch):
            if should_stop is not None and should_stop():
                raise Cancelled("classification cancelled")
            chunk = boxes[i:i + batch]
            shapes = {(bh, bw) for _, _, bh, bw in chunk}
            if len(shapes) > 1:  # cannot happen with one tile size; kept for safety
                chunk_out = [net(to_input(image[None, y:y + bh, x:x + bw], mean, std).to(device))
                             for y, x, bh, bw in chunk]
                out.append(torch.cat(chunk_out).float().cpu())
            else:
                arr = np.stack([image[y:y + bh, x:x + bw] for y, x, bh, bw in chunk])
                out.append(net(to_input(arr, mean, std).to(device)).float().cpu())
            if progress is not None:
                progress(min(i + batch, len(boxes)), len(boxes))
    logits = torch.cat(out).numpy() if out else np.zeros((0, 0), np.float32)
    return logits, weights, boxes


def aggregate(logits: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted mean of tile logits (C,)."""
    w = np.asarray(weights, np.float64)
    return (np.asarray(logits, np.float64) * w[:, None]).sum(0) / w.sum()
