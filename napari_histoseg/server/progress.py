"""Progress of requests that asked to be followed: a client sends ``X-Progress-Id: KEY`` with
a long request (nuclei, classification) and reads ``GET /progress/KEY`` meanwhile as
``{"done": n, "total": m}``; ``DELETE /progress/KEY`` stops that request at its next step.

Bounded: at most :data:`MAX_FOLLOWED` requests are followed at once (the oldest is forgotten),
and a request's entry goes when it ends."""

from __future__ import annotations

import re
import threading
from collections import OrderedDict

MAX_FOLLOWED = 1024
HEADER = "X-Progress-Id"
_KEY = re.compile(r"^[A-Za-z0-9_-]{8,64}$")


class Progress:
    def __init__(self):
        self._items: OrderedDict[str, dict] = OrderedDict()
        self._lock = threading.Lock()

    def start(self, key: str | None) -> str | None:
        """Follow the request ``key`` (None, or a key that is not 8-64 letters, digits, ``-`` or
        ``_``: not followed)."""
        if not key or not _KEY.match(key):
            return None
        with self._lock:
            while len(self._items) >= MAX_FOLLOWED:
                self._items.popitem(last=False)
            self._items[key] = {"done": 0, "total": 0, "cancel": False}
        return key

    def update(self, key: str | None, done, total) -> None:
        item = self._items.get(key) if key else None
        if item is not None:
            item["done"], item["total"] = int(done), int(total)

    def stopped(self, key: str | None) -> bool:
        item = self._items.get(key) if key else None
        return bool(item and item["cancel"])

    def get(self, key: str) -> dict | None:
        item = self._items.get(key)
        return None if item is None else {"done": item["done"], "total": item["total"]}

    def cancel(self, key: str) -> bool:
        item = self._items.get(key)
        if item is not None:
            item["cancel"] = True
        return item is not None

    def end(self, key: str | None) -> None:
        if key:
            with self._lock:
                self._items.pop(key, None)


def watch(progress: Progress | None, key: str | None, what: str) -> dict:
    """The ``progress``/``should_stop`` keywords of :func:`~napari_histoseg.core.runs.drive`
    that report a followed request's steps to ``progress`` and stop it when its client
    cancels; ``{}`` when the request is not followed."""
    if progress is None or key is None:
        return {}
    return {"progress": lambda done, total: progress.update(key, done, total),
            "should_stop": lambda: progress.stopped(key), "what": what}
