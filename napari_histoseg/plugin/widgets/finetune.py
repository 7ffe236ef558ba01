"""The Fine-tune dock widget: train the current model on exported, corrected tiles."""

from __future__ import annotations

from pathlib import Path

import napari  # noqa: F401 (names the viewer annotation napari looks for)
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox
from napari.utils.notifications import show_error, show_info

from napari_histoseg.plugin.widgets._layers import Scrolling, unwrap
from napari_histoseg.plugin.widgets._model_choice import ModelChoice
from napari_histoseg.plugin.widgets._runner import Runner, RunsWork


class FineTuneWidget(RunsWork, Scrolling, Container):
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
        self._dice = None
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
        self.runner = Runner(self.status, self.run_button, self.cancel_button)
        self.extend([self.dataset, *self.model_choice.backend_widgets, *self.model_choice.widgets, self.epochs,
                     self.steps, self.budget, self.lr,
                     Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
                     self.status])
        self.fit(460)
        self.run_button.clicked.connect(self.run)
        self.cancel_button.clicked.connect(self.cancel)
        self.extra: dict = {}  # more train() settings, for scripts (e.g. patch_size)
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
        if self.runner.running:
            return None
        try:
            folder, ref, meta, out, version = self._paths()
            plan = training_plan(folder)
            backend = self.model_choice.backend(self.backend)  # this computer or a server
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot fine-tune: {e}")
            return None
        settings = dict(self.extra)
        if self.steps.value:
            settings["steps_per_epoch"] = int(self.steps.value)
        settings.update(epochs=self.epochs.value, time_budget=self.budget.value, lr=self.lr.value, name=meta.name,
                        model_version=version)

        def work(progress, should_stop):
            return backend.fine_tune(folder, out, ref, progress=progress, should_stop=should_stop, **settings)

        where = "" if backend.name == "this computer" else f" on {backend.name}"
        self._dice = None
        return self.runner.start(work, lambda summary: self._done(summary, out), what="Fine-tuning",
                                 describe=self._describe, cancelled="Cancelled; no checkpoint was kept.",
                                 message=f"Fine-tuning {meta.name} v{meta.model_version} on {folder.name}{where}. {plan}")

    def _describe(self, info: dict):
        """A report of train() as the status line and, for a step, napari's progress bar:
        step, loss and the last validation Dice."""
        if info.get("kind") == "start":
            return f"Starting: {info.get('message', '')}"
        if info.get("kind") == "step":
            text = f"epoch {info['epoch'] + 1}, step {info['step'] + 1}/{info['steps']}, loss {info['loss']:.3f}"
            if self._dice is not None:
                text += f", validation Dice {self._dice}"
            return info["epoch"] * info["steps"] + info["step"] + 1, self.epochs.value * info["steps"], text
        if info.get("kind") == "epoch":
            dice = info["val_dice"]
            self._dice = "n/a" if dice < 0 else f"{dice:.3f}"
            return (f"epoch {info['epoch'] + 1}: loss {info['train_loss']:.3f}, validation Dice "
                    f"{self._dice} (best {max(info['best_val_dice'], 0):.3f})")
        return None

    def cancel(self):
        self.runner.cancel("Stopping after this step; the best checkpoint so far is kept…")

    def _done(self, summary, out):
        if not out.is_file():
            return f"No checkpoint was written ({summary['stop_reason']})."
        switched = ModelChoice.broadcast(out)
        show_info(f"Fine-tuned model written to {out}")
        return (f"{summary['stop_reason']}; best validation Dice {summary['best_val_dice']:.3f} "
                f"at epoch {summary['best_epoch'] + 1}. New model {out.name}; {switched} widget(s) now use it.")


def training_plan(folder) -> str:
    """What training on ``folder`` will use, as the core's pre-check says it; ValueError,
    saying why and how many tiles are needed, when the data cannot train a model."""
    from napari_histoseg.training.plan import training_plan as plan

    p = plan(folder)
    return " ".join([p.message, *p.warnings])
