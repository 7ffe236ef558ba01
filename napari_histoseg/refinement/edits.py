"""The history of one interactive refinement of a mask: undo, redo, reset, accept, and the
pixels a person changed by hand, which a refinement never overwrites.

What the Refine widget keeps between strokes; it holds arrays only (no viewer), so a
script or a simulated annotator can drive it the same way.

Example
-------
>>> import numpy as np
>>> edits = MaskEdits(np.zeros((2, 3), np.uint8))
>>> hand = np.array([[0, 0, 1], [0, 0, 0]], np.uint8)       # a person painted one pixel
>>> mask, found = edits.apply(hand, np.ones((2, 3), np.uint8), seeds=np.zeros((2, 3), np.uint8))
>>> found, int(mask.sum()), edits.changed(mask)
(True, 6, 6)
"""

from __future__ import annotations

import numpy as np


class MaskEdits:
    """Starts from ``mask`` (the base Reset returns to); see the module docstring."""

    def __init__(self, mask):
        self.base = np.asarray(mask).copy()
        self.written = self.base.copy()          # what was last put into the mask
        self.locked = np.zeros(self.base.shape, bool)   # pixels a person changed by hand
        self.history: list[tuple[np.ndarray, np.ndarray]] = []   # (seeds after, mask before) per step
        self.future: list[tuple[np.ndarray, np.ndarray]] = []

    def apply(self, current, labels, seeds) -> tuple[np.ndarray, bool]:
        """The mask after a refinement (``labels``, solved from ``seeds``) of the mask that
        now holds ``current``; and whether hand edits were found since the last write (those
        pixels keep the person's value from now on)."""
        current = np.asarray(current)
        hand = current != self.written
        self.locked |= hand
        result = np.where(self.locked, current, np.asarray(labels).astype(current.dtype))
        self.history.append((seeds, current.copy()))
        self.future.clear()
        self.wrote(result)
        return result, bool(hand.any())

    def wrote(self, data) -> None:
        """Record that ``data`` was put into the mask (by a refinement, undo or redo)."""
        self.written = np.asarray(data).copy()

    def changed(self, mask) -> int:
        """How many pixels of ``mask`` differ from the base."""
        return int((np.asarray(mask) != self.base).sum())

    def undo(self, seeds_now, mask_now):
        """``(seeds, mask)`` before the last step, or None when there is none."""
        if not self.history:
            return None
        seeds, mask = self.history.pop()
        self.future.append((np.asarray(seeds_now).copy(), np.asarray(mask_now).copy()))
        before = self.history[-1][0].copy() if self.history else np.zeros_like(seeds)
        return before, mask

    def redo(self, mask_now):
        """``(seeds, mask)`` of the step undone last, or None when there is none."""
        if not self.future:
            return None
        seeds, mask = self.future.pop()
        self.history.append((seeds, np.asarray(mask_now).copy()))
        return seeds, mask

    def reset(self, seeds_now):
        """Forget every step and hand lock: ``(no seeds, the base mask)``."""
        self.history.clear()
        self.future.clear()
        self.locked[:] = False
        return np.zeros_like(seeds_now), self.base.copy()

    def accept(self, current, previous=None) -> np.ndarray:
        """Keep ``current``: the uint8 map of pixels that differ from the model (with the
        ``previous`` map of earlier accepts); ``current`` becomes the base."""
        current = np.asarray(current)
        edits = current != self.base
        if previous is not None and np.shape(previous) == edits.shape:
            edits |= np.asarray(previous).astype(bool)
        self.base = current.copy()
        self.history.clear()
        self.future.clear()
        return edits.astype(np.uint8)
