"""The architecture comparison's table (benchmarks/bench_train.py --compare) and its options."""

import importlib.util
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
