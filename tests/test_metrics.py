"""Metrics against hand-computed values, and evaluate() end to end on a tiny folder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from skimage.io import imsave

from napari_histoseg.core import scores
from napari_histoseg.models import ModelMeta
from napari_histoseg.tumour import metrics as M


def _pair():
    # truth: 4x4 square (16 px); prediction: left 4x2 of it plus 2 false pixels
    t = np.zeros((8, 8), np.uint8)
    t[2:6, 2:6] = 1
    p = np.zeros((8, 8), np.uint8)
    p[2:6, 2:4] = 1
    p[0, 0] = p[0, 1] = 1
    return p, t


def test_overlap_metrics_by_hand():
    p, t = _pair()
    assert scores.confusion(p, t) == (8, 2, 8, 46)
    assert scores.dice(p, t) == pytest.approx(16 / 26)
    assert scores.iou(p, t) == pytest.approx(8 / 18)
    assert scores.precision(p, t) == pytest.approx(8 / 10)
    assert scores.recall(p, t) == pytest.approx(8 / 16)


def test_ignore_index_and_empty_cases():
    p, t = _pair()
    t2 = t.copy()
    t2[0, :] = 255  # the two false pixels are now ignored
    assert scores.confusion(p, t2) == (8, 0, 8, 40)
    z = np.zeros((4, 4), np.uint8)
    assert scores.dice(z, z) == 1.0 and scores.iou(z, z) == 1.0
    assert math.isnan(scores.precision(z, z)) and math.isnan(scores.recall(z, z))
    assert math.isnan(scores.pixel_auc(np.zeros((4, 4)), z))


def test_pixel_auc_by_hand():
    prob = np.array([[0.1, 0.4], [0.35, 0.8]])
    truth = np.array([[0, 0], [1, 1]], np.uint8)
    # pairs (pos, neg): (0.35>0.1) yes, (0.35>0.4) no, (0.8>0.1) yes, (0.8>0.4) yes -> 3/4
    assert scores.pixel_auc(prob, truth) == pytest.approx(0.75)
    tie = np.array([[0.5, 0.5], [0.5, 0.9]])
    # (0.5 vs 0.5) x2 ties count half -> (0.5 + 0.5 + 1 + 1) / 4
    assert scores.pixel_auc(tie, truth) == pytest.approx(0.75)


def test_boundary_f_tolerance():
    t = np.zeros((40, 40), np.uint8)
    t[10:30, 10:30] = 1
    shifted = np.roll(t, 2, axis=1)
    assert scores.boundary_f(t, t) == 1.0
    assert scores.boundary_f(shifted, t, tolerance=2) == 1.0
    f0 = scores.boundary_f(shifted, t, tolerance=0)
    # top and bottom edges overlap except near corners; left/right edges are 2 px off
    assert 0.3 < f0 < 0.7
    assert scores.boundary_f(np.zeros_like(t), t) == 0.0
    assert scores.boundary_f(np.zeros_like(t), np.zeros_like(t)) == 1.0
    # by hand: a single pixel each, 3 px apart
    a = np.zeros((9, 9), np.uint8); a[4, 1] = 1  # noqa: E702
    b = np.zeros((9, 9), np.uint8); b[4, 4] = 1  # noqa: E702
    assert scores.boundary_f(a, b, tolerance=3) == 1.0 and scores.boundary_f(a, b, tolerance=2.9) == 0.0


def test_image_metrics_and_summary():
    p, t = _pair()
    r1 = M.image_metrics(p.astype(np.float32), t)
    r2 = M.image_metrics(t.astype(np.float32), t)
    assert r1["dice"] == pytest.approx(16 / 26) and r2["dice"] == 1.0 and r2["boundary_f"] == 1.0
    s = M.summarize([r1, r2])
    assert s["mean_dice"] == pytest.approx((16 / 26 + 1) / 2)
    # pooled: tp 8+16, fp 2, fn 8
    assert s["pooled_dice"] == pytest.approx(48 / (48 + 10))


class _ThresholdModel:
    """A stand-in segmenter: tumour probability 0.9 where red < 150, else 0.1."""

    out_channels = 1
    meta = ModelMeta(arch="fake", tile_size=64)
    source = "fake"

    def predict(self, batch):
        p = np.where(batch[..., 0] < 150, 0.9, 0.1).astype(np.float32)
        return p[:, None]


def test_evaluate_matches_hand_computed(tmp_path):
    from napari_histoseg.tasks import format_table
    from napari_histoseg.tumour.evaluate import evaluate

    root = tmp_path / "d"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    tiles = []
    for i in range(2):
        img = np.full((64, 64, 3), 220, np.uint8)
        img[:, : 20 + 10 * i] = (90, 40, 120)  # dark = predicted tumour
        mask = np.zeros((64, 64), np.uint8)
        mask[:, :32] = 1  # truth: left half
        imsave(root / "images" / f"t{i}.png", img, check_contrast=False)
        imsave(root / "masks" / f"t{i}.png", mask, check_contrast=False)
        tiles.append({"id": f"t{i}", "image": f"images/t{i}.png", "mask": f"masks/t{i}.png",
                      "split": "test", "source": "synthetic", "x": 0, "y": 0, "width": 64, "height": 64})
    (root / "dataset.json").write_text(json.dumps({"format": "histoseg-dataset", "version": 1,
                                                   "classes": {"0": "a", "1": "b"}, "tiles": tiles}))
    r = evaluate(root, _ThresholdModel(), split="test")
    # tile 0: predicted 20 columns of 32 true -> Dice 2*20/(20+32); tile 1: 30 columns
    d0, d1 = 40 / 52, 60 / 62
    assert [x["dice"] for x in r["per_image"]] == [pytest.approx(d0, abs=1e-6), pytest.approx(d1, abs=1e-6)]
    assert r["mean"]["mean_dice"] == pytest.approx((d0 + d1) / 2, abs=1e-6)
    assert r["per_image"][0]["precision"] == pytest.approx(1.0)
    assert r["per_image"][0]["recall"] == pytest.approx(20 / 32)
    assert r["tolerance"] == scores.DEFAULT_TOLERANCE
    assert "mean" in format_table(r)
    json.dumps(r)  # JSON-serialisable (NaN replaced by None)
