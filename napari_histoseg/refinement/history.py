"""Undo and redo: the session's state after each update, by seed layer.

The same seeds again (an undo, a redo) restore the very state they had, so the labels
are exactly those of before, and work goes on warm from there. The oldest states go first
beyond a byte budget, which counts what the states really hold: a running total of their
arrays, and an array that several states share (the base of :class:`PixelDeltas`) once.
"""

from __future__ import annotations

import numpy as np

__all__ = ["HISTORY_BYTES", "History", "PixelDeltas"]

#: What a session keeps for undo and redo at most.
HISTORY_BYTES = 256 * 2 ** 20


def _parts(state: tuple):
    """(bytes of the state's own arrays, {id: (nbytes, array)} of the arrays it shares)."""
    own, shared = 0, {}
    for a in state:
        for b in getattr(a, "shared", ()):
            shared[id(b)] = (b.nbytes, b)
        own += a.own_bytes if hasattr(a, "own_bytes") else a.nbytes
    return own, shared


class History:
    """States (tuples of arrays, or of objects with ``own_bytes`` and ``shared``) by key,
    within ``max_bytes`` in all; ``nbytes`` is what they hold now.

    >>> h = History(100); h.put("a", (np.zeros(10),)); h.put("b", (np.ones(10),))
    >>> "a" in h, float(h.get("b")[0][0]), h.nbytes
    (False, 1.0, 80)
    """

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self._states: dict = {}
        self._shared: dict = {}   # id -> [states using it, nbytes, the array]
        self.nbytes = 0

    def __contains__(self, key) -> bool:
        return key in self._states

    def __len__(self) -> int:
        return len(self._states)

    def get(self, key):
        return self._states[key][0]

    def put(self, key, state: tuple) -> None:
        """Keep ``state`` (copied by the caller) under ``key``; drops the oldest to fit."""
        self._drop(key)
        own, shared = _parts(state)
        while self._states and self.nbytes + own + self._new_bytes(shared) > self.max_bytes:
            self._drop(next(iter(self._states)))
        if own + self._new_bytes(shared) > self.max_bytes:
            return
        for i, (nb, arr) in shared.items():
            entry = self._shared.setdefault(i, [0, nb, arr])
            if entry[0] == 0:
                self.nbytes += nb
            entry[0] += 1
        self._states[key] = (state, own, tuple(shared))
        self.nbytes += own

    def _new_bytes(self, shared: dict) -> int:
        return sum(nb for i, (nb, _) in shared.items() if i not in self._shared)

    def _drop(self, key) -> None:
        if key not in self._states:
            return
        _, own, ids = self._states.pop(key)
        self.nbytes -= own
        for i in ids:
            entry = self._shared[i]
            entry[0] -= 1
            if entry[0] == 0:
                self.nbytes -= entry[1]
                del self._shared[i]

    def clear(self) -> None:
        self._states.clear()
        self._shared.clear()
        self.nbytes = 0


class PixelDeltas:
    """Whole-image arrays remembered cheaply: one shared copy (the base) and, per state,
    only the pixels changed since that copy. An update redraws a view, not the image, so a
    state of a 4096^2 image holds the few pixels the updates touched instead of 80 MB;
    when more than ``share`` of the image has changed a new base is taken. Only the span
    of pixels written since the base is read (a view's rows, not the image).

    >>> import numpy as np
    >>> a = np.zeros(10, np.float32); d = PixelDeltas((a,))
    >>> a[3] = 1; d.mark(np.array([3])); s = d.snapshot((a,)); a[:] = 7; d.mark(np.arange(10)); d.restore(s, (a,))
    >>> a.tolist()[:5], s.idx.tolist()
    ([0.0, 0.0, 0.0, 1.0, 0.0], [3])
    """

    def __init__(self, arrays: tuple, share: float = 0.25):
        self.share = share
        self.base = tuple(a.copy() for a in arrays)
        self.since = np.zeros(arrays[0].size, bool)
        self._lo, self._hi = self.since.size, 0   # the span [lo, hi) holding every marked pixel

    def mark(self, idx: np.ndarray) -> None:
        """The pixels ``idx`` (flat) were written (every change must be marked)."""
        if idx.size:
            self.since[idx] = True
            self._lo, self._hi = min(self._lo, int(idx.min())), max(self._hi, int(idx.max()) + 1)

    def _marked(self) -> np.ndarray:
        if self._hi <= self._lo:
            return np.zeros(0, np.int64)
        return self._lo + np.flatnonzero(self.since[self._lo:self._hi])

    def _clear(self) -> None:
        if self._hi > self._lo:
            self.since[self._lo:self._hi] = False
        self._lo, self._hi = self.since.size, 0

    def snapshot(self, arrays: tuple) -> "_Snapshot":
        idx = self._marked()
        if idx.size > self.share * self.since.size:
            self.base = tuple(a.copy() for a in arrays)
            self._clear()
            idx = idx[:0]
        return _Snapshot(self.base, idx, tuple(a[idx] for a in arrays))

    def restore(self, snap: "_Snapshot", arrays: tuple) -> None:
        """Write the state ``snap`` into ``arrays`` (in place): on the same base only the
        pixels written since it and those the state holds, else the whole image."""
        if snap.base is self.base:
            back = self._marked()
            for a, b in zip(arrays, snap.base):
                a[back] = b[back]
        else:
            for a, b in zip(arrays, snap.base):
                a[:] = b
        for a, v in zip(arrays, snap.values):
            a[snap.idx] = v
        self.base = snap.base
        self._clear()
        self.mark(snap.idx)


class _Snapshot:
    def __init__(self, base, idx, values):
        self.base, self.idx, self.values = base, idx, values
        self.shared = base
        self.own_bytes = idx.nbytes + sum(v.nbytes for v in values)
