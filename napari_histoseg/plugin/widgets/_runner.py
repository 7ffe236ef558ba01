"""One way for every widget to run core work: in a thread, with progress, Cancel and failures.

A :class:`Runner` takes a core generator (yielding ``(done, total)``) or a core function that
takes ``progress`` and ``should_stop`` callbacks (as the CLI calls them), runs it in a napari
thread worker and, in the main thread, feeds napari's progress bar and the widget's status
line. Cancel has one mechanism: ``should_stop()`` turns True; a generator is then closed at
its next step, a function stops as it was written to
(raising :class:`~napari_histoseg.core.runs.Cancelled` or returning what it has). A failure
becomes one notification and the status says it; a progress report that arrives after the
run ended is dropped, so the final message stands.
"""

from __future__ import annotations

import inspect

from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal, Slot

from napari_histoseg.core.runs import Cancelled


def advance(bar, done: int, total: int | None = None) -> None:
    """Set napari's progress ``bar`` to ``done``: its count and the bar drawn in the
    activity dock (which follows the value event, not the count)."""
    if total is not None and bar.total != total:
        bar.total = total
    bar.n = done
    bar.refresh()
    events = getattr(bar, "events", None)  # napari's progress; a plain tqdm has none
    if events is not None:
        events.value(value=done)


class _Run:
    """One run: what a report or the result belongs to, and whether Cancel was pressed."""

    def __init__(self, what, label, unit, describe, on_done, cancelled, failed):
        self.what, self.label, self.unit, self.describe = what, label, unit, describe
        self.on_done, self.cancelled, self.failed = on_done, cancelled, failed
        self.stop = False
        self.bar = None

    def text(self, value):
        """``(done, total, status text)`` for a report; ``done``/``total`` None when it has no count."""
        if self.describe is not None:
            out = self.describe(value)
            return out if isinstance(out, tuple) else (None, None, out)
        done, total = value
        return done, total, f"{self.label}: {done} / {total} {self.unit}"


class Runner(QObject):
    """Runs one piece of core work at a time for a widget.

    ``status`` is the widget's status Label; ``run_button`` is disabled and ``cancel_button``
    enabled while a run lasts. ``progressed`` is emitted (main thread) with each report,
    ``ended`` with ``"done"``, ``"failed"`` or ``"cancelled"`` once the final message is shown.
    """

    progressed = Signal(object)
    ended = Signal(str)
    _report = Signal(object, object)   # (run, value), emitted from the worker thread

    def __init__(self, status=None, run_button=None, cancel_button=None):
        super().__init__()
        self.status, self.run_button, self.cancel_button = status, run_button, cancel_button
        self.worker = None
        self._run: _Run | None = None
        self._report.connect(self._on_report)   # this QObject lives in the main thread: Qt queues it

    @property
    def running(self) -> bool:
        return self.worker is not None

    def start(self, work, on_done, *, what: str, label: str | None = None, unit: str = "tiles",
              describe=None, message: str | None = None,
              cancelled: str = "Cancelled; the layers were left as they were.", failed: str | None = None):
        """Run ``work`` in a thread; returns the napari worker, or None when a run is going.

        ``work``: a generator (yielding ``(done, total)``), or ``work(progress, should_stop)``
        returning the result (or a generator). ``on_done(result)`` runs in the main thread
        and returns the final status (None: leave the status as it set it). ``what`` names the
        work in messages ("Segmentation failed: ..."); ``label`` is the progress bar's title;
        ``describe(value)`` turns a report into the status text, or ``(done, total, text)`` to
        move the bar too (default: ``(done, total)`` pairs counted in ``unit``). ``message``:
        the status while it starts; ``cancelled``: the status after Cancel; ``failed``: what a
        failure notification adds (e.g. what was left as it was).
        """
        if self.worker is not None:
            show_info(f"{what} is already running.")
            return None
        run = self._run = _Run(what, label or what, unit, describe, on_done, cancelled, failed)
        worker = thread_worker(self._work, start_thread=False)(work, run)
        worker.yielded.connect(lambda value: self._on_report(run, value))
        worker.returned.connect(lambda outcome: self._finish(run, outcome))
        worker.errored.connect(lambda e: self._finish(run, ("failed", e)))
        self.worker = worker
        self._buttons(running=True)
        self._say(message or f"{what}: starting…")
        worker.start()
        return worker

    def cancel(self, message: str = "Cancelling…") -> None:
        """Ask the run to stop at its next step; the status says ``message`` meanwhile."""
        if self._run is not None and not self._run.stop:
            self._run.stop = True
            self._say(message)

    # -- worker thread -------------------------------------------------------------
    def _work(self, work, run):
        """The worker: a generator's reports are yielded (napari's ``yielded`` signal), a
        function's go through ``_report``; the outcome is returned as a value, so that a
        failure is one readable notification and not a traceback."""
        def report(*value):
            self._report.emit(run, value[0] if len(value) == 1 else value)

        try:
            out = work if inspect.isgenerator(work) else work(report, lambda: run.stop)
            if inspect.isgenerator(out):
                gen = out
                try:
                    while True:
                        yield next(gen)
                        if run.stop:
                            gen.close()
                            return ("cancelled", None)
                except StopIteration as end:
                    out = end.value
        except Cancelled:
            return ("cancelled", None)
        except Exception as e:  # noqa: BLE001 - shown by _finish as one notification
            return ("failed", e)
        return ("done", out)

    # -- main thread -----------------------------------------------------------------
    @Slot(object, object)
    def _on_report(self, run, value):
        if run is not self._run:
            return  # from a run that ended: its final message stands
        self.progressed.emit(value)
        try:
            done, total, text = run.text(value)
        except Exception:  # noqa: BLE001 - a report the widget cannot word is not a failure
            return
        if done is not None and total:
            if run.bar is None:
                bar = progress(total=total, desc=run.label)  # processes Qt events: the run may end here
                if run is not self._run:
                    bar.close()
                    return
                run.bar = bar
            advance(run.bar, min(done, total), total)
            if text and run.describe is not None:
                run.bar.set_description(f"{run.label}: {text}")
        if run is self._run and text:   # not if the run ended while the bar was drawn
            self._say(text)

    def _finish(self, run, outcome):
        if run is not self._run:
            return
        self._run = None    # reports still queued are dropped from here on
        if run.bar is not None:
            run.bar.close()
        kind, value = outcome
        if kind == "done":
            try:
                message = run.on_done(value)
            except Exception as e:  # noqa: BLE001 - a result the widget cannot show
                kind, value = "failed", e
            else:
                if message is not None:
                    self._say(message)
        if kind == "cancelled":
            self._say(run.cancelled)
            show_info(f"{run.what} cancelled.")
        elif kind == "failed":
            show_error(f"{run.what} failed" + (f"; {run.failed}" if run.failed else "") + f": {value}")
            self._say(f"Failed: {value}")
        self.worker = None
        self._buttons(running=False)
        self.ended.emit(kind)

    @property
    def bar(self):
        """napari's progress bar of the run going on (None when it has none)."""
        return None if self._run is None else self._run.bar

    def _say(self, text: str) -> None:
        try:
            if self.status is not None:
                self.status.value = text
        except RuntimeError:  # the widget was closed while its run went on
            pass

    def _buttons(self, running: bool) -> None:
        try:
            if self.run_button is not None:
                self.run_button.enabled = not running
            if self.cancel_button is not None:
                self.cancel_button.enabled = running
        except RuntimeError:  # the widget was closed while its run went on
            pass


class RunsWork:
    """For a widget holding a :class:`Runner` as ``self.runner``: ``worker`` (None when idle)
    and ``cancel()``."""

    @property
    def worker(self):
        return self.runner.worker

    def cancel(self):
        self.runner.cancel()
