"""The architecture comparison's table (benchmarks/bench_train.py --compare) and its options."""

import argparse
import importlib.util
import json
import os
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_train", ROOT / "benchmarks" / "bench_train.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def split(mean, pooled, bf, precision, free=0, free_hi=0, nearly=0, nearly_hi=0):
    return {"mean_dice": mean, "pooled_dice": pooled, "boundary_f": bf, "precision": precision,
            "tumour_free": free, "tumour_free_over_5pct": free_hi, "nearly_free": nearly,
            "nearly_free_over_5pct": nearly_hi}


def test_table_gives_each_arms_steps_seconds_and_both_test_splits(bench):
    results = {
        "unet-mobilenet_v2, ImageNet start": {
            "arch": "unet-mobilenet_v2", "imagenet": True, "parameters": 6_628_945, "trainable": 6_628_945,
            "steps": 80, "patches": 640, "train_seconds": 782.3, "seconds_per_step": 9.37, "best_val_dice": 0.652,
            "camelyon": split(0.701, 0.726, 0.084, 0.84), "bcss": split(0.530, 0.622, 0.116, 0.459, 2, 2, 3, 3)},
        "unet-resnet50, random start": {
            "arch": "unet-resnet50", "imagenet": False, "parameters": 32_521_105, "trainable": 32_521_105,
            "steps": 80, "patches": 640, "train_seconds": 900.0, "seconds_per_step": 10.0, "best_val_dice": 0.0,
            "camelyon": split(0.0, 0.0, 0.0, None), "bcss": split(0.0, 0.0, 0.0, None, 2, 0, 3, 0)},
    }
    lines = bench.compare_table(results).splitlines()
    assert len(lines) == 4                                   # header, rule, one row per arm
    first, second = lines[2], lines[3]
    assert "| unet-mobilenet_v2 | ImageNet |" in first and "| 80 (640) |" in first and "| 782 (9.4) | – |" in first
    assert "0.701 / 0.726" in first and "0.530 / 0.622" in first and "2 of 2 (3 of 3 under 1 %)" in first
    assert "| random |" in second and "| – |" in second      # a model that calls nothing has no precision


@pytest.mark.parametrize("argv", [["--total-steps", "0"], ["--steps-per-epoch", "-3"], ["--lr", "nan"],
                                  ["--budget", "0"]])
def test_nonsense_budgets_are_refused_before_anything_trains(bench, argv, capsys):
    with pytest.raises(SystemExit) as exc:
        bench.main(["--compare", "unused"] + argv)
    assert exc.value.code == 2
    assert "must be" in capsys.readouterr().err


def test_rows_of_the_earlier_results_format_still_make_a_table(bench):
    old = {"lightmuseg-v3, ImageNet start": {
        "arch": "lightmuseg-v3", "imagenet": True, "parameters": 3_127_765, "trainable": 3_127_765, "epochs": 5,
        "patches": 1632, "best_val_dice": 0.877, "loop_patches_per_s": 13.6,
        "camelyon_dice": 0.819, "camelyon_boundary_f": 0.157, "bcss_dice": 0.602, "bcss_boundary_f": 0.153}}
    row = bench.compare_table(old).splitlines()[2]
    assert "| lightmuseg-v3 | ImageNet | 3.13 M (3.13 M) |" in row
    assert "0.819 / –" in row and "0.602 / –" in row and "| 0.157 |" in row and "| 0.877 |" in row
    assert "– (1632)" in row                                  # its steps were not recorded


class FakeClock:
    def __init__(self):
        self.now = 1000.0

    def time(self):
        return self.now

    def process_time(self):
        return self.now / 2

    def getloadavg(self):
        return (1.0, 1.0, 1.0)


def test_a_resumed_arm_counts_the_training_time_of_its_earlier_run(bench, tmp_path, monkeypatch):
    """An arm killed after two epochs of 100 s and resumed for one more of 50 s reports 250 s, not 50."""
    import napari_histoseg.tumour.evaluate as ev_mod
    import napari_histoseg.tumour.train as train_mod
    from napari_histoseg.training.loop import state_path_for

    clock = FakeClock()
    monkeypatch.setattr(bench, "time", clock)
    monkeypatch.setattr(bench, "os", types.SimpleNamespace(getloadavg=clock.getloadavg, replace=os.replace))
    runs = []

    def fake_train(data, ckpt, progress=None, **kw):
        first = not runs
        runs.append(kw["resume"])
        for epoch in ((0, 1) if first else (2,)):
            clock.now += 100 if first else 50
            state_path_for(ckpt).write_bytes(b"state")
            progress({"kind": "epoch", "epoch": epoch})
        if first:
            raise KeyboardInterrupt("the shell that ran it was closed")
        return {"parameters": 10, "trainable_parameters": 10, "steps": 3, "best_epoch": 2, "best_val_dice": 0.5,
                "seconds": 250.0}

    figures = {"mean_dice": 0.5, "pooled_dice": 0.5, "mean_boundary_f": 0.1, "tumour_free_tiles": 0,
               "tumour_free_over_5pct": 0, "nearly_free_tiles": 0, "nearly_free_over_5pct": 0}
    monkeypatch.setattr(train_mod, "train", fake_train)
    monkeypatch.setattr(ev_mod, "evaluate", lambda *a, **k: {"mean": figures, "seconds": 1.0})
    args = argparse.Namespace(compare=str(tmp_path), arms=["lightmuseg-v1"], total_steps=3, resnet_steps=None,
                              steps_per_epoch=1, budget=None, seed=0, threads=None, batch=8, lr=1e-3,
                              warmup_steps=0, speed=False)
    with pytest.raises(KeyboardInterrupt):
        bench.run_compare(args)
    bench.run_compare(args)
    row = next(iter(json.loads((tmp_path / "results.json").read_text()).values()))
    assert runs == [True, True]
    assert row["train_seconds"] == 250.0 and row["resumed_after_seconds"] == 200.0
    assert row["cpu_seconds"] == 125.0
    assert "| 250 (" in (tmp_path / "table.md").read_text()
