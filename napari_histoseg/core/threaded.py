"""A function that reports through ``progress``/``should_stop`` callbacks, as a core generator.

:func:`iter_threaded` runs ``fn(..., progress=..., should_stop=...)`` in a thread and yields
its ``(done, total)`` reports, so every task offers the same generator form as
:func:`napari_histoseg.core.tiling.iter_predict` (``result = yield from ...``), whatever
shape its own loop has. Closing the generator makes ``should_stop()`` True and waits for
the function to notice (it stops at its next check); its exception, if any, is raised here.
"""

from __future__ import annotations

import queue
import threading


def iter_threaded(fn, /, *args, **kwargs):
    """Generator: yields ``fn``'s ``progress(done, total)`` reports, returns its value."""
    reports: queue.Queue = queue.Queue()
    stop = threading.Event()

    def run():
        try:
            reports.put(("return", fn(*args, progress=lambda done, total: reports.put(("progress", (done, total))),
                                      should_stop=stop.is_set, **kwargs)))
        except BaseException as e:  # noqa: BLE001 - handed to the consumer
            reports.put(("raise", e))

    worker = threading.Thread(target=run, name=f"histoseg-{getattr(fn, '__name__', 'work')}", daemon=True)
    worker.start()
    try:
        while True:
            kind, value = reports.get()
            if kind == "progress":
                yield value
            elif kind == "return":
                return value
            else:
                raise value
    finally:
        stop.set()
        worker.join()
