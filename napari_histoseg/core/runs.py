"""Running a long computation: generators that yield progress, cancelling, progress bars."""

from __future__ import annotations


class Cancelled(RuntimeError):
    """Raised by :func:`predict` when ``should_stop()`` returned True."""


def drive(gen, progress=None, should_stop=None, what: str = "work"):
    """Run a core generator (yielding ``(done, total)``) to its return value, calling
    ``progress(done, total)`` and raising :class:`Cancelled` once ``should_stop()`` is True."""
    try:
        while True:
            done, total = next(gen)
            if progress is not None:
                progress(done, total)
            if should_stop is not None and should_stop():
                gen.close()
                raise Cancelled(f"{what} cancelled after {done} of {total} tiles")
    except StopIteration as stop:
        return stop.value


def tile_bar(desc: str):
    """A tqdm bar and the ``progress(done, total)`` callback that feeds it."""
    from tqdm import tqdm

    bar = tqdm(total=None, unit="tile", desc=desc)

    def progress(done, total):
        bar.total = total
        bar.n = done
        bar.refresh()

    return bar, progress
