"""The Fine-tune dock widget: train the current model on exported, corrected tiles."""

from __future__ import annotations

import time
from pathlib import Path

import napari  # noqa: F401 (names the viewer annotation napari looks for)
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal, Slot

from napari_histoseg.plugin.widgets._layers import Scrolling, unwrap
from napari_histoseg.plugin.widgets._model_choice import ModelChoice
from napari_histoseg.plugin.widgets._worker import Failed, advance


class FineTuneWidget(Scrolling, Container):
    """Fine-tune a model on a training-data folder (what *Export* writes).

    Runs in a worker with a progress bar (epoch, loss, validation Dice); Cancel stops after
    the current step and keeps the best checkpoint so far. The new checkpoint is
    versioned beside the dataset (``DATASET/models/NAME-ftN.safetensors``) with its
    provenance, and the Segment and Explain widgets switch to it.
    """

    def __init__(self, viewer: napari.viewer.Viewer, backend=None):
        super().__init__(labels=True, scrollable=True)
        self.viewer = viewer = unwrap(viewer)
        self.backend = backend
        self.worker = None
        self._bar = None
        self._dice = None
        self._cancel = False
        self.dataset = FileEdit(label="Dataset folder", mode="d", tooltip="A folder written by Export")
        self.model_choice = ModelChoice()
        self.epochs = SpinBox(label="Epochs (max)", min=1, max=500, value=10)
        self.steps = SpinBox(label="Steps per epoch", min=0, max=10000, value=0,
                             tooltip="Batches per epoch; 0: enough to cover every training tile once")
        self.budget = SpinBox(label="Time budget (min)", min=1, max=600, value=15)
        self.lr = ComboBox(label="Learning rate", choices=[("1e-4 (gentle)", 1e-4), ("3e-4", 3e-4), ("1e-3", 1e-3)],
                           value=1e-4)
        self.run_button, self.cancel_button = PushButton(text="Fine-tune"), PushButton(text="Cancel", enabled=False)
        self.status = Label(value="Export corrected tiles first, then fine-tune on that folder.")
        self.status.native.setWordWrap(True)
        self.extend([self.dataset, *self.model_choice.backend_widgets, *self.model_choice.widgets, self.epochs,
                     self.steps, self.budget, self.lr,
                     Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
                     self.status])
        self.fit(460)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.extra: dict = {}  # more train() settings, for scripts (e.g. patch_size)
        self._relay = _Relay(self._show)  # progress from the worker thread reaches the main thread
        self.dataset.changed.connect(self._check_dataset)

    def _paths(self):
        folder = Path(str(self.dataset.value))
        if str(self.dataset.value) in ("", ".") or not (folder / "dataset.json").is_file():
            raise ValueError("choose a dataset folder with a dataset.json (written by Export)")
        meta = self.model_choice.meta()
        ref = self.model_choice.ref()
        if ref == "bundled":
            from napari_histoseg.models.bundled import bundled_model_path

            ref = str(bundled_model_path())
        out_dir = folder / "models"
        n = 1 + sum(1 for _ in out_dir.glob(f"{meta.name}-ft*.safetensors")) if out_dir.is_dir() else 1
        return folder, ref, meta, out_dir / f"{meta.name}-ft{n}.safetensors", f"{meta.model_version}+ft{n}"

    def _check_dataset(self, _=None):
        """Say at once, when a folder is chosen, whether it can train a model."""
        try:
            folder = Path(str(self.dataset.value))
            if str(self.dataset.value) in ("", ".") or not (folder / "dataset.json").is_file():
                return
            self.status.value = training_plan(folder)
        except Exception as e:  # noqa: BLE001 - the status says why
            self.status.value = f"This folder cannot train a model yet: {e}"

    def run(self):
        if self.worker is not None:
            return None
        try:
            folder, ref, meta, out, version = self._paths()
            plan = training_plan(folder)
            backend = self.model_choice.backend(self.backend)  # this computer or a server
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot fine-tune: {e}")
            return None

        self._cancel = False
        settings = dict(self.extra)
        if self.steps.value:
            settings["steps_per_epoch"] = int(self.steps.value)

        def job():
            try:
                return backend.fine_tune(folder, out, ref, epochs=self.epochs.value, time_budget=self.budget.value,
                                         lr=self.lr.value, name=meta.name, model_version=version,
                                         progress=self._relay.info.emit, should_stop=lambda: self._cancel,
                                         **settings)
            except Exception as e:  # noqa: BLE001
                return Failed(e)
            yield

        worker = thread_worker(job, start_thread=False)()
        worker.returned.connect(lambda summary: self._done(summary, out))
        self.worker = worker
        self.run_button.enabled, self.cancel_button.enabled = False, True
        where = "" if backend.name == "this computer" else f" on {backend.name}"
        self.status.value = f"Fine-tuning {meta.name} v{meta.model_version} on {folder.name}{where}. {plan}"
        self._t0 = time.time()
        self._dice = None
        worker.start()
        return worker

    def _show(self, info: dict):
        """Progress from train(): napari's progress bar and the status show step, loss and
        the last validation Dice."""
        if self.worker is None:
            return  # a late report never overwrites the final message
        if info.get("kind") == "start":
            self.status.value = f"Starting: {info.get('message', '')}"
        elif info.get("kind") == "step":
            total = self.epochs.value * info["steps"]
            if self._bar is None:
                self._bar = progress(total=total, desc="Fine-tuning")
            advance(self._bar, min(total, info["epoch"] * info["steps"] + info["step"] + 1))
            text = f"epoch {info['epoch'] + 1}, step {info['step'] + 1}/{info['steps']}, loss {info['loss']:.3f}"
            if self._dice is not None:
                text += f", validation Dice {self._dice}"
            self._bar.set_description(f"Fine-tuning: {text}")
            self.status.value = text
        elif info.get("kind") == "epoch":
            dice = info["val_dice"]
            self._dice = "n/a" if dice < 0 else f"{dice:.3f}"
            text = (f"epoch {info['epoch'] + 1}: loss {info['train_loss']:.3f}, validation Dice "
                    f"{self._dice} (best {max(info['best_val_dice'], 0):.3f})")
            if self._bar is not None:
                self._bar.set_description(f"Fine-tuning: {text}")
            self.status.value = text

    def cancel(self):
        if self.worker is not None:
            self._cancel = True
            self.status.value = "Stopping after this step; the best checkpoint so far is kept…"

    def _done(self, summary, out):
        self.worker = None
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
        if isinstance(summary, Failed):
            show_error(f"Fine-tuning failed: {summary.error}")
            self.status.value = f"Failed: {summary.error}"
            return
        if not out.is_file():
            self.status.value = f"No checkpoint was written ({summary['stop_reason']})."
            return
        switched = ModelChoice.broadcast(out)
        self.status.value = (f"{summary['stop_reason']}; best validation Dice {summary['best_val_dice']:.3f} "
                             f"at epoch {summary['best_epoch'] + 1}. New model {out.name}; "
                             f"{switched} widget(s) now use it.")
        show_info(f"Fine-tuned model written to {out}")


class _Relay(QObject):
    """Made in the main thread: ``info.emit`` from the worker thread queues a call of
    ``callback`` in the main thread (the receiver is this QObject, so Qt queues it)."""

    info = Signal(object)

    def __init__(self, callback):
        super().__init__()
        self.callback = callback
        self.info.connect(self._deliver)

    @Slot(object)
    def _deliver(self, info):
        self.callback(info)


def training_plan(folder) -> str:
    """What training on ``folder`` will use, as the core's pre-check says it; ValueError,
    saying why and how many tiles are needed, when the data cannot train a model."""
    from napari_histoseg.training.plan import training_plan as plan

    p = plan(folder)
    return " ".join([p.message, *p.warnings])
