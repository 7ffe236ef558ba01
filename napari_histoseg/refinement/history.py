"""Undo and redo: the session's state after each update, by seed layer.

The same seeds again (an undo, a redo) restore the very state they had, so the labels
are exactly those of before, and work goes on warm from there. The oldest states go first
beyond a byte budget.
"""

from __future__ import annotations

__all__ = ["History"]


class History:
    """States (tuples of arrays) by key, within ``max_bytes`` in all.

    >>> import numpy as np
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
