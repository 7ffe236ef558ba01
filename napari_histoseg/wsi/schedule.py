"""Where the block tasks of a whole-slide run execute: Dask's threaded scheduler in this
process, or a ``dask.distributed`` cluster. Both hand back ``(block, stats)`` as each block
finishes, so the caller can report progress; closing the generator stops the run (blocks
in flight finish and keep their results)."""

from __future__ import annotations

import queue
import threading


def run_threads(fn, job, todo, n):
    """Run the block tasks on Dask's threaded scheduler in a helper thread, handing each
    finished block back as it completes; closing stops the blocks not yet started."""
    import dask

    q: queue.Queue = queue.Queue()
    stop = threading.Event()

    def task(b):
        if stop.is_set():
            return None
        s = fn(job, b)
        q.put((b, s))
        return s

    def compute():
        try:
            dask.compute(*[dask.delayed(task, pure=False)(b) for b in todo], scheduler="threads", num_workers=n)
            q.put(None)
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            q.put(e)

    th = threading.Thread(target=compute, name="histoseg-wsi", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        th.join()


def run_distributed(client, fn, job, todo, retries):
    from distributed import as_completed

    futures = client.map(fn, [job] * len(todo), todo, pure=False, retries=retries)
    index = {f.key: b for f, b in zip(futures, todo)}
    try:
        for f in as_completed(futures):
            yield index[f.key], f.result()
    finally:
        client.cancel([f for f in futures if not f.done()])
