"""Which pixels belong to which superpixel, found fast (no full-image scan per click)."""

from __future__ import annotations

import numpy as np

__all__ = ["SuperpixelIndex"]


class SuperpixelIndex:
    """Pixel lists and bounding boxes of superpixels.

    Parameters
    ----------
    labels : (H, W) int
        Superpixels 0..n-1, each non-empty.

    Examples
    --------
    >>> idx = SuperpixelIndex(np.array([[0, 0, 1], [2, 2, 1]]))
    >>> idx.pixels(np.array([1, 2])).tolist(), idx.in_view((0, 2, 1, 1)).tolist()
    ([2, 5, 3, 4], [False, True, False])
    """

    def __init__(self, labels: np.ndarray):
        h, w = labels.shape
        flat = labels.ravel()
        self.order = np.argsort(flat, kind="stable")
        self.count = np.bincount(flat).astype(np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.count)[:-1]])
        ys, xs = np.divmod(self.order, w)
        s = self.starts
        self.box = np.stack([np.minimum.reduceat(ys, s), np.maximum.reduceat(ys, s),
                             np.minimum.reduceat(xs, s), np.maximum.reduceat(xs, s)], 1)

    def pixels(self, nodes: np.ndarray) -> np.ndarray:
        """Flat (row-major) indices of the pixels of ``nodes``, superpixel by superpixel."""
        if nodes.size == 0:
            return np.zeros(0, np.int64)
        ln = self.count[nodes]
        excl = np.cumsum(ln) - ln
        return self.order[np.repeat(self.starts[nodes] - excl, ln) + np.arange(int(ln.sum()))]

    def in_view(self, view) -> np.ndarray:
        """Boolean per superpixel: does its bounding box meet ``view = (y, x, h, w)``?"""
        y, x, vh, vw = (int(v) for v in view)
        b = self.box
        return (b[:, 1] >= y) & (b[:, 0] < y + vh) & (b[:, 3] >= x) & (b[:, 2] < x + vw)
