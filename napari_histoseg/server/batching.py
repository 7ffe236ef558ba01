"""Requests that arrive together share one forward pass on the device.

Every request's tile batch goes through :class:`Batcher`. With batching on, one thread
owns the device: it takes the oldest waiting batch, waits up to ``wait_ms`` for batches
of the same tile size from other requests that are in flight, stacks them (up to
``max_tiles`` tiles / ``max_pixels``), runs one forward pass and hands each request its
rows. A lone request never waits: when every request in flight has already queued its
tiles, the pass starts at once. With batching off, requests take turns on the device.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np


class _Item:
    __slots__ = ("batch", "done", "result", "error")

    def __init__(self, batch):
        self.batch, self.done, self.result, self.error = batch, threading.Event(), None, None


class Batcher:
    """Callable ``(N, H, W, 3) uint8 -> (N, C, H, W) float32`` around ``fn`` (a model's predict).

    Parameters
    ----------
    fn : callable
        The forward pass; only ever called from one thread at a time.
    enabled : bool
        False: no stacking, requests take turns (the benchmark's baseline).
    max_tiles, max_pixels : int
        Largest stacked batch.
    wait_ms : float
        Longest a batch waits for company.
    """

    def __init__(self, fn, *, enabled: bool = True, max_tiles: int = 16, max_pixels: int = 1 << 22,
                 wait_ms: float = 5.0):
        self.fn, self.enabled = fn, bool(enabled)
        self.max_tiles, self.max_pixels, self.wait = int(max_tiles), int(max_pixels), wait_ms / 1000.0
        self._queue: deque[_Item] = deque()
        self._cond = threading.Condition()
        self._turn = threading.Lock()
        self._in_flight = 0
        self._thread = None
        self._closed = False
        self._retired = False   # no longer served: its thread ends once no request is in flight
        self.passes = 0   # forward passes run
        self.tiles = 0    # tiles they held

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch)
        if not self.enabled:
            with self._turn:
                out = self.fn(batch)
                self.passes, self.tiles = self.passes + 1, self.tiles + len(batch)
                return out
        item = _Item(batch)
        with self._cond:
            if self._closed:
                raise RuntimeError("the server is shutting down")
            if self._thread is None:   # first call, or a retired batcher's late request
                self._thread = threading.Thread(target=self._loop, name="histoseg-batcher", daemon=True)
                self._thread.start()
            self._queue.append(item)
            self._cond.notify_all()
        item.done.wait()
        if item.error is not None:
            raise item.error
        return item.result

    def request(self):
        """Context manager marking one request in flight (so a lone request never waits)."""
        batcher = self

        class _InFlight:
            def __enter__(self):
                with batcher._cond:
                    batcher._in_flight += 1

            def __exit__(self, *exc):
                with batcher._cond:
                    batcher._in_flight -= 1
                    batcher._cond.notify_all()

        return _InFlight()

    def close(self):
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def retire(self):
        """The model is no longer served: requests in flight finish, then the thread ends."""
        with self._cond:
            self._retired = True
            self._cond.notify_all()

    def _take(self) -> list[_Item] | None:
        with self._cond:
            while not self._queue:
                if self._closed or (self._retired and self._in_flight == 0):
                    self._thread = None
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            items, shape = [first], first.batch.shape[1:]
            n = len(first.batch)
            px = int(np.prod(shape[:2]))
            deadline = time.monotonic() + self.wait
            while n < self.max_tiles and (n + 1) * px <= self.max_pixels:
                same = next((it for it in self._queue if it.batch.shape[1:] == shape
                             and n + len(it.batch) <= self.max_tiles), None)
                if same is not None:
                    self._queue.remove(same)
                    items.append(same)
                    n += len(same.batch)
                    continue
                # everyone in flight has queued already: nobody else can join
                if len(items) + len(self._queue) >= max(self._in_flight, 1):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            return items

    def _loop(self):
        while (items := self._take()) is not None:
            try:
                out = self.fn(np.concatenate([it.batch for it in items]) if len(items) > 1 else items[0].batch)
                self.passes, self.tiles = self.passes + 1, self.tiles + len(out)
                start = 0
                for it in items:
                    it.result = out[start:start + len(it.batch)]
                    start += len(it.batch)
            except Exception as e:  # noqa: BLE001 - handed to every waiting request
                for it in items:
                    it.error = e
            for it in items:
                it.done.set()

    def stats(self) -> dict:
        return {"batching": self.enabled, "forward_passes": self.passes, "tiles": self.tiles,
                "mean_batch": round(self.tiles / self.passes, 2) if self.passes else 0.0}
