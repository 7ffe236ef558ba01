"""The seeds as the session keeps them: per pixel, and counted per superpixel.

A session is told the whole seed layer at every update; the tally finds what changed,
decides for the newly drawn pixels whether they are a click or a stroke
(:func:`~napari_histoseg.refinement.reach.stroke_flags`), and keeps per superpixel how
many pixels of each class it holds and how many of those were drawn in strokes.
"""

from __future__ import annotations

import numpy as np

from napari_histoseg.refinement.reach import stroke_flags
from napari_histoseg.refinement.seeds import NOT_TUMOUR, TUMOUR

__all__ = ["SeedTally"]


class SeedTally:
    """Seeds per pixel (``seeds``, ``stroke``) and per superpixel (``nt``, ``nn``: tumour
    and not-tumour seed pixels; ``nts``, ``nns``: those of them drawn in strokes).

    >>> t = SeedTally(np.array([0, 0, 1, 1]), 2, (1, 4))
    >>> touched = t.apply(np.array([1, 0, 0, 2], np.uint8), click_extent=16)
    >>> touched.tolist(), t.nt.tolist(), t.nn.tolist(), t.nts.tolist()
    ([True, True], [1, 0], [0, 1], [0, 0])
    """

    def __init__(self, superpixels: np.ndarray, n: int, shape):
        self.sp, self.n, self.shape = superpixels, n, tuple(shape)
        self.seeds = np.zeros(superpixels.size, np.uint8)
        self.stroke = np.zeros(superpixels.size, bool)
        self.nt, self.nn, self.nts, self.nns = (np.zeros(n, np.int64) for _ in range(4))
        self.cap = 0.0
        self.near = {TUMOUR: np.zeros(superpixels.size, bool), NOT_TUMOUR: np.zeros(superpixels.size, bool)}

    def apply(self, seeds: np.ndarray, click_extent: int, cap: float = 0.0, gesture=None) -> np.ndarray:
        """Take the whole (flat) seed layer; returns the superpixels whose seeds changed
        (or whose pixels came within ``cap`` px of a stroke: :attr:`near`). ``gesture``
        ``"stroke"`` or ``"click"`` says what the new seeds are; None: by their shape."""
        if gesture not in (None, "stroke", "click"):
            raise ValueError(f"gesture must be 'stroke', 'click' or None; got {gesture!r}")
        touched = np.zeros(self.n, bool)
        ch = np.flatnonzero(seeds != self.seeds)
        if ch.size == 0:
            if cap != self.cap:   # the same seeds with another stroke reach (set_params): measure again
                self.cap = cap
                self._near_all(touched)
            return touched
        old, new, spc = self.seeds[ch], seeds[ch], self.sp[ch]
        if gesture is None:
            now = stroke_flags(ch, new, self.shape, click_extent)
        else:
            now = (new > 0) & (gesture == "stroke")
        was = self.stroke[ch]
        n = self.n
        for cls, count, strokes in ((TUMOUR, self.nt, self.nts), (NOT_TUMOUR, self.nn, self.nns)):
            count += np.bincount(spc[new == cls], minlength=n) - np.bincount(spc[old == cls], minlength=n)
            strokes += (np.bincount(spc[(new == cls) & now], minlength=n)
                        - np.bincount(spc[(old == cls) & was], minlength=n))
        self.seeds[ch] = new
        self.stroke[ch] = now
        touched[spc] = True
        if cap != self.cap:
            self.cap = cap
            self._near_all(touched)
        elif cap > 0:
            gone = was & (old != new)
            for cls in (TUMOUR, NOT_TUMOUR):
                if (gone & (old == cls)).any():  # a stroke pixel went: measure again
                    self._near_all(touched, (cls,))
                else:
                    self._near_add(cls, ch[now & (new == cls)], touched)
        return touched

    def _near_add(self, cls: int, idx: np.ndarray, touched: np.ndarray) -> None:
        """Mark the pixels within ``cap`` px of the stroke pixels ``idx`` of class ``cls``."""
        from scipy import ndimage as ndi

        if idx.size == 0:
            return
        h, w = self.shape
        r = int(np.ceil(self.cap))
        ys, xs = np.divmod(idx, w)
        y0, y1 = max(0, int(ys.min()) - r), min(h, int(ys.max()) + r + 1)
        x0, x1 = max(0, int(xs.min()) - r), min(w, int(xs.max()) + r + 1)
        box = np.zeros((y1 - y0, x1 - x0), bool)
        box[ys - y0, xs - x0] = True
        close = ndi.distance_transform_edt(~box) <= self.cap
        near = self.near[cls].reshape(h, w)[y0:y1, x0:x1]
        new = close & ~near
        near |= close
        touched[self.sp.reshape(h, w)[y0:y1, x0:x1][new]] = True

    def _near_all(self, touched: np.ndarray, classes=(TUMOUR, NOT_TUMOUR)) -> None:
        for cls in classes:
            before = self.near[cls].copy()
            self.near[cls][:] = False
            if self.cap > 0:
                self._near_add(cls, np.flatnonzero((self.seeds == cls) & self.stroke), touched)
            touched[self.sp[before & ~self.near[cls]]] = True

    def reset(self, seeds: np.ndarray, stroke_pixels: np.ndarray) -> None:
        """Take a remembered state (undo, redo): these seeds, and these (flat indices)
        drawn in strokes."""
        self.seeds, self.stroke = seeds.copy(), np.zeros(seeds.size, bool)
        self.stroke[stroke_pixels] = True
        stroke = self.stroke
        sp, n = self.sp, self.n
        self.nt = np.bincount(sp[seeds == TUMOUR], minlength=n).astype(np.int64)
        self.nn = np.bincount(sp[seeds == NOT_TUMOUR], minlength=n).astype(np.int64)
        self.nts = np.bincount(sp[(seeds == TUMOUR) & stroke], minlength=n).astype(np.int64)
        self.nns = np.bincount(sp[(seeds == NOT_TUMOUR) & stroke], minlength=n).astype(np.int64)
        self._near_all(np.zeros(n, bool))

    def sources(self) -> dict:
        """``{class: (clicked, stroked)}``, boolean per superpixel."""
        return {TUMOUR: (self.nt > self.nts, self.nts > 0), NOT_TUMOUR: (self.nn > self.nns, self.nns > 0)}
