"""Undo and redo: the session's state after each update, by seed layer.

The same seeds again (an undo, a redo) restore the very state they had, so the labels
are exactly those of before, and work goes on warm from there. The oldest states go first
beyond a byte budget.
"""

from __future__ import annotations

import numpy as np

__all__ = ["HISTORY_BYTES", "History", "PixelDeltas"]

#: What a session keeps for undo and redo at most.
HISTORY_BYTES = 256 * 2 ** 20


class History:
    """States (tuples of arrays) by key, within ``max_bytes`` in all.

    >>> h = History(100); h.put("a", (np.zeros(10),)); h.put("b", (np.ones(10),))
    >>> "a" in h, float(h.get("b")[0][0])
    (False, 1.0)
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._states: dict = {}

    def __contains__(self, key) -> bool:
        return key in self._states

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key):
        return self._states[key]

    def put(self, key, state: tuple) -> None:
        """Keep ``state`` (copied by the caller) under ``key``; drops the oldest to fit."""
        size = sum(a.nbytes for a in state)
        self._states.pop(key, None)
        while self._states and size * (len(self._states) + 1) > self.max_bytes:
            self._states.pop(next(iter(self._states)))
        if size <= self.max_bytes:
            self._states[key] = state

    def clear(self) -> None:
        self._states.clear()


class PixelDeltas:
    """Whole-image arrays remembered cheaply: one shared copy (the base) and, per state,
    only the pixels changed since that copy. An update redraws a view, not the image, so a
    state of a 4096^2 image holds the few pixels the updates touched instead of 80 MB;
    when more than ``share`` of the image has changed a new base is taken.

    >>> import numpy as np
    >>> a = np.zeros(10, np.float32); d = PixelDeltas((a,))
    >>> a[3] = 1; d.mark(np.array([3])); s = d.snapshot((a,)); a[:] = 7; d.restore(s, (a,))
    >>> a.tolist()[:5], s.idx.tolist()
    ([0.0, 0.0, 0.0, 1.0, 0.0], [3])
    """

    def __init__(self, arrays: tuple, share: float = 0.25):
        self.share = share
        self.base = tuple(a.copy() for a in arrays)
        self.since = np.zeros(arrays[0].size, bool)
        self._fresh = True  # the base is not yet counted by any snapshot

    def mark(self, idx: np.ndarray) -> None:
        """The pixels ``idx`` (flat) were written."""
        self.since[idx] = True

    def snapshot(self, arrays: tuple) -> "_Snapshot":
        idx = np.flatnonzero(self.since)
        if idx.size > self.share * self.since.size:
            self.base = tuple(a.copy() for a in arrays)
            self.since[:] = False
            self._fresh, idx = True, idx[:0]
        snap = _Snapshot(self.base, idx, tuple(a[idx] for a in arrays), self._fresh)
        self._fresh = False
        return snap

    def restore(self, snap: "_Snapshot", arrays: tuple) -> None:
        """Write the state ``snap`` into ``arrays`` (in place)."""
        for a, b, v in zip(arrays, snap.base, snap.values):
            a[:] = b
            a[snap.idx] = v
        self.base, self._fresh = snap.base, False
        self.since[:] = False
        self.since[snap.idx] = True


class _Snapshot:
    def __init__(self, base, idx, values, owns_base):
        self.base, self.idx, self.values = base, idx, values
        self.nbytes = idx.nbytes + sum(v.nbytes for v in values) + (sum(b.nbytes for b in base) if owns_base else 0)
