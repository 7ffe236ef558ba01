"""What every task promises, run over all three alike (in the manner of segmentation-models-pytorch's
``tests/models/base.py``): the bundled model loads and infers, two training steps write a
checkpoint that reloads and evaluates, the summary has the same keys and stop reasons for
every task, ``should_stop`` is honoured and a resumed run continues where it stopped."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
from builders import BUILDERS

from napari_histoseg.core.runs import drive
from napari_histoseg.models import load_checkpoint
from napari_histoseg.models.bundled import BUNDLED_CHECKPOINTS
from napari_histoseg.tasks import TRAINING, get_task, train_config
from napari_histoseg.training.loop import SUMMARY_KEYS, state_path_for


class TaskContract:
    task: str
    settings: dict          # small and fast: two steps of tiny batches
    infer_options: dict = {}

    @pytest.fixture(scope="class")
    def data(self, tmp_path_factory):
        return BUILDERS[self.task](tmp_path_factory.mktemp(self.task) / "ds")

    @pytest.fixture(scope="class")
    def trained(self, data, tmp_path_factory):
        out = tmp_path_factory.mktemp(f"{self.task}-run") / "m.safetensors"
        events = []
        cfg = train_config(self.task)(**{"epochs": 1, "steps_per_epoch": 2, "threads": 1, **self.settings})
        summary = importlib.import_module(TRAINING[self.task][1]).train(
            data if self.task != "segmentation" else [data], out, cfg, log=lambda *_: None, progress=events.append)
        return out, summary, events

    def test_the_bundled_model_loads_and_infers_on_a_synthetic_image(self):
        if not BUNDLED_CHECKPOINTS[self.task].is_file():
            pytest.skip(f"the bundled {self.task} model is not in this checkout")
        task = get_task(self.task)
        model = task.load_model(None, device="cpu")
        assert model.meta.task == self.task
        image = np.full((192, 192, 3), 225, np.uint8)
        image[60:130, 60:130] = (90, 40, 120)
        assert drive(task.iter_infer(model, image, **self.infer_options)) is not None

    def test_two_steps_write_a_checkpoint_that_reloads_and_evaluates(self, trained, data):
        out, summary, events = trained
        assert set(SUMMARY_KEYS) <= set(summary)
        assert summary["task"] == self.task and summary["steps"] == 2 and summary["stop_reason"] == "done"
        assert [e["kind"] for e in events] == ["start", "step", "step", "epoch"]
        assert np.isfinite(events[-1]["train_loss"]) and "best_score" in events[-1]
        module, meta = load_checkpoint(out)
        assert meta.task == self.task and sum(p.numel() for p in module.parameters()) == summary["parameters"]
        task = get_task(self.task)
        assert task.load_model(str(out), device="cpu").meta.task == self.task
        result = task.evaluate(data, model=str(out))
        assert isinstance(result, dict) and result

    def test_should_stop_ends_the_run_as_cancelled(self, data, tmp_path):
        cfg = train_config(self.task)(**{"epochs": 3, "steps_per_epoch": 2, "threads": 1, **self.settings})
        s = importlib.import_module(TRAINING[self.task][1]).train(
            data if self.task != "segmentation" else [data], tmp_path / "c.safetensors", cfg,
            log=lambda *_: None, should_stop=lambda: True)
        assert s["stop_reason"] == "cancelled" and s["epochs_run"] == 1 and s["steps"] == 1
        assert (tmp_path / "c.safetensors").is_file()  # the best so far is kept

    def test_resume_continues_from_the_saved_state(self, trained, data):
        out, first, _ = trained
        assert state_path_for(out).is_file()
        cfg = train_config(self.task)(**{"epochs": 2, "steps_per_epoch": 2, "threads": 1, **self.settings,
                                         "resume": True})
        s = importlib.import_module(TRAINING[self.task][1]).train(
            data if self.task != "segmentation" else [data], out, cfg, log=lambda *_: None)
        assert [h["epoch"] for h in s["history"]] == [0, 1] and s["steps"] == 4
        assert s["history"][0] == first["history"][0]


class TestSegmentation(TaskContract):
    task = "segmentation"
    settings = {"patch_size": 32, "batch_size": 2, "val_fraction": 0.25}


class TestInstances(TaskContract):
    task = "instances"
    settings = {"patch_size": 96, "batch_size": 1, "warmup": 1,
                "arch_kwargs": {"channels": 32, "representation": 64, "detections": 50}}
    infer_options = {"mpp": 0.25}


class TestClassification(TaskContract):
    task = "classification"
    settings = {"patch_size": 48, "batch_size": 4, "scale": 1.0, "val_fraction": 0.34}
