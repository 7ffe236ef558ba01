"""The Fine-tune dock widget: train the current model on exported, corrected tiles, or, in one
button, learn from the corrections on the open slide (:mod:`napari_histoseg.tumour.adapt`)."""

from __future__ import annotations

from pathlib import Path

import napari  # noqa: F401 (names the viewer annotation napari looks for)
import numpy as np
from magicgui.widgets import ComboBox, Container, FileEdit, Label, PushButton, SpinBox
from napari.layers import Image, Labels
from napari.utils.notifications import show_error, show_info, show_warning

from napari_histoseg.plugin.widgets._layers import Scrolling, heading, level_data, span, unwrap
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
        self.status = Label(value="Export corrected tiles first, then fine-tune on that folder; or learn from "
                                  "the corrections on the open slide in one click.")
        self.status.native.setWordWrap(True)
        self.runner = Runner(self.status, self.run_button, self.cancel_button)
        self.slide_image = ComboBox(label="Slide image", choices=self._layers(Image),
                                    tooltip="The H&E image whose corrected fields the model learns from")
        self.slide_mask = ComboBox(label="Corrected mask", choices=self._layers(Labels),
                                   tooltip="The tumour layer with the corrections you accepted in Refine")
        self.seconds = SpinBox(label="Learn for (s)", min=10, max=600, value=60,
                               tooltip="A fixed time budget; 60 s is enough for the head on a laptop CPU")
        self.trains = ComboBox(label="What learns", value="head", choices=[
            ("head (fast; the default)", "head"), ("decoder", "decoder"), ("whole network (slow)", "all")],
            tooltip="What is trained; BatchNorm stays frozen. The head was best by measurement (BENCHMARKS.md)")
        self.learn_button = PushButton(text="Learn from my corrections")
        self.learn_button.tooltip = ("Adapt the model to this slide from the fields you corrected and accepted, "
                                     "then segment the fields not yet reviewed again; your corrections stay")
        self.learn_runner = Runner(self.status, self.learn_button, self.cancel_button)
        self._headings = (heading("Learn from this slide", "the fields you corrected and accepted in Refine"),
                          heading("Fine-tune on an exported folder", "tiles written by Export, from any slides"))
        self.extend([*self.model_choice.backend_widgets, *self.model_choice.widgets,
                     self._headings[0],
                     self.slide_image, self.slide_mask, self.seconds, self.trains, self.learn_button,
                     self._headings[1],
                     self.dataset, self.epochs, self.steps, self.budget, self.lr,
                     Container(widgets=[self.run_button, self.cancel_button], layout="horizontal", labels=False),
                     self.status])
        for title in self._headings:
            span(title)
        for ev in (viewer.layers.events.inserted, viewer.layers.events.removed):
            ev.connect(lambda e=None: (self.slide_image.reset_choices(), self.slide_mask.reset_choices()))
        self.learn_button.clicked.connect(self.learn)
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
        if self.learn_runner.running:
            self.learn_runner.cancel("Stopping; the model in use stays as it was…")
        else:
            self.runner.cancel("Stopping after this step; the best checkpoint so far is kept…")

    def _layers(self, kind):
        return lambda _w=None: [(ly.name, ly) for ly in self.viewer.layers if isinstance(ly, kind)
                                and (kind is not Image or ly.rgb)]

    @property
    def worker(self):
        return self.runner.worker or self.learn_runner.worker

    def learn(self):
        """Adapt the chosen model to the corrected fields of the slide in the background, then
        segment the fields not yet reviewed again into a new layer (returns the worker)."""
        from napari_histoseg.tumour.adapt_data import corrections_from_mask

        if self.runner.running or self.learn_runner.running:
            show_info("Wait for the run going on to end (or cancel it) first.")
            return None
        image, mask = self.slide_image.value, self.slide_mask.value
        if image is None or mask is None:
            show_warning("Open the slide and its tumour layer first: learning needs the image and the mask "
                         "you corrected.")
            return None
        edits = mask.metadata.get("histoseg_edits")
        if edits is None or not np.any(edits):
            show_warning(f"'{mask.name}' holds no accepted correction yet: correct a field in Refine and "
                         "press Accept, then learn from it.")
            return None
        try:
            pixels = np.asarray(level_data(image, 0))
            labels = np.asarray(mask.data)
            if labels.shape != pixels.shape[:2]:
                raise ValueError(f"'{mask.name}' ({labels.shape[1]} x {labels.shape[0]} px) does not lie on "
                                 f"'{image.name}' ({pixels.shape[1]} x {pixels.shape[0]} px)")
            meta = self.model_choice.meta()
            start = self._start_path()
            corrections = corrections_from_mask(pixels, labels, edits, size=int(meta.tile_size or 512),
                                                prefix=image.name)
            out, version = self._adapted_out(meta)
        except Exception as e:  # noqa: BLE001
            show_error(f"Cannot learn from the corrections: {e}")
            return None
        reviewed = np.zeros(labels.shape, bool)
        size = int(meta.tile_size or 512)
        for c in corrections:
            y, x = (int(v[1:]) for v in c.id.rsplit("-", 2)[1:])
            reviewed[y:y + size, x:x + size] = True
        seconds, trains = int(self.seconds.value), self.trains.value

        def work(progress, should_stop):
            from napari_histoseg.core.tiling import predict
            from napari_histoseg.models.segmenter import Segmenter
            from napari_histoseg.tumour.adapt import adapt, keep_reviewed

            summary = adapt(start, corrections, out, seconds=seconds, train=trains, version=version,
                            progress=progress, should_stop=should_stop)
            if summary["checkpoint"] is None:
                return summary, None
            progress({"kind": "segment"})
            new = predict(pixels, Segmenter.from_checkpoint(out, "cpu"), should_stop=should_stop)
            return summary, keep_reviewed(new.mask, labels, reviewed)

        n_edit = sum(c.edited for c in corrections)
        return self.learn_runner.start(
            work, lambda result: self._learned(result, mask, out), what="Learning from the corrections",
            describe=self._describe_learning, cancelled="Cancelled; nothing was written and the model in use stays.",
            message=f"Learning from {len(corrections)} corrected field(s) ({n_edit:,} px you changed) for "
                    f"{seconds} s…")

    def _start_path(self) -> str:
        """The checkpoint to adapt: the chosen model, or the original an adapted one came from
        (each round starts from the original, with all corrections so far)."""
        from napari_histoseg.models.checkpoint import read_meta
        from napari_histoseg.tumour.adapt import root_start

        ref = self.model_choice.ref()
        if ref == "bundled":
            from napari_histoseg.models.bundled import bundled_model_path

            ref = str(bundled_model_path())
        return root_start(read_meta(ref), ref)[0]

    def _adapted_out(self, meta):
        from napari_histoseg.tumour.adapt import adapted_path

        folder = Path(str(self.dataset.value))
        if str(self.dataset.value) in ("", ".") or not folder.is_dir():
            folder = Path.home() / "napari-histoseg"
        return adapted_path(folder / "models", meta)

    def _describe_learning(self, info: dict):
        kind = info.get("kind")
        if kind == "start":
            return f"Learning: {info.get('message', '')}"
        if kind == "cache":
            return f"Reading field {info['done']} of {info['total']}…"
        if kind == "step":
            pct = int(100 * info.get("fraction", 0))
            return pct, 100, f"learning, {info['seconds']:.0f} of {info['budget']:.0f} s, loss {info['loss']:.3f}"
        if kind == "segment":
            return "Segmenting the fields not yet reviewed with the adapted model…"
        return None

    def _learned(self, result, mask, out):
        summary, merged = result
        if summary["checkpoint"] is None:
            return f"Stopped; nothing was written and {Path(summary['kept']).name} stays in use."
        name = f"{mask.name} (adapted)"
        layer = self.viewer.add_labels(merged, name=name, scale=mask.scale, translate=mask.translate,
                                       metadata={"model": str(out), "histoseg_edits": mask.metadata.get(
                                           "histoseg_edits")})
        from napari_histoseg.models.bundled import is_bundled

        start = summary["adaptation"]["start"]["path"]
        if not is_bundled(start):
            ModelChoice.remember(start)  # the original stays one click away
        switched = ModelChoice.broadcast(out)
        show_info(f"Adapted model written to {out}; '{layer.name}' holds the fields not yet reviewed segmented "
                  "again (yours unchanged)")
        return (f"Learnt in {summary['seconds']:.0f} s ({summary['steps']} steps). New model {out.name}; "
                f"{switched} widget(s) now use it (Model lists the original too). '{layer.name}': "
                f"the fields you have not reviewed, segmented again.")

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
