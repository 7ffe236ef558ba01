"""What the widgets share about running core generators in napari thread workers."""

from __future__ import annotations

from napari.utils import progress


class Failed:
    """An exception carried out of a worker as a value: the widget turns it into one
    readable notification (superqt would re-raise a returned exception, and napari
    would show the whole traceback)."""

    def __init__(self, error: Exception):
        self.error = error


def guarded(gen_fn, *args, **kwargs):
    """Generator that runs ``gen_fn(*args, **kwargs)`` and returns its result, or a
    :class:`Failed` for an exception. Closing it (``worker.quit()``) still cancels."""
    try:
        return (yield from gen_fn(*args, **kwargs))
    except Exception as e:  # noqa: BLE001 - reported by the widget
        return Failed(e)


def advance(bar, done: int) -> None:
    """Set napari's progress ``bar`` to ``done``: its count and the bar drawn in the
    activity dock (which follows the value event, not the count)."""
    bar.n = done
    bar.refresh()
    events = getattr(bar, "events", None)  # napari's progress; a plain tqdm has none
    if events is not None:
        events.value(value=done)


class TileProgress:
    """napari's progress bar, fed with the ``(done, total)`` pairs the core yields."""

    def __init__(self, desc: str, unit: str = "tiles"):
        self.desc, self.unit = desc, unit
        self._bar = None
        self._closes = 0

    def update(self, value) -> str | None:
        """The status line for ``value``; None when the run ended meanwhile (napari's
        progress bar processes Qt events, the run's result among them)."""
        done, total = value
        closes = self._closes
        if self._bar is None:
            bar = progress(total=total, desc=self.desc)  # processes Qt events: the run may end here
            if self._closes != closes:  # it did, and its final message stands
                bar.close()
                return None
            self._bar = bar
        advance(self._bar, done)
        if self._closes != closes:  # the run ended while the bar was drawn: its final message stands
            return None
        return f"{self.desc}: {done} / {total} {self.unit}"

    def close(self):
        self._closes += 1
        if self._bar is not None:
            self._bar.close()
            self._bar = None
