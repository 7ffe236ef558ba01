"""Nuclei: metrics, classical baseline, tiled merge, features, CLI, training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage as ndi
from skimage.color import rgb2hed

from napari_histoseg.colour.stain import haematoxylin
from napari_histoseg.io.validate import ImageFormatError
from napari_histoseg.models import ModelMeta
from napari_histoseg.nuclei.baseline import detect_nuclei_classical
from napari_histoseg.nuclei.features import nucleus_features, region_summary
from napari_histoseg.nuclei.infer import BUNDLED, detect_nuclei
from napari_histoseg.nuclei.metrics import aji, pq, score
from napari_histoseg.testing import NUCLEUS, disks_image


class FakeDetector:
    """Stands in for Mask R-CNN: dark connected components of a tile, as boxes + 28x28 masks,
    so the tiling and merging of :func:`detect_nuclei` is tested on its own."""

    def detect_batch(self, batch):
        out = []
        for t in batch:
            dark = (t.mean(0) < 0.5).numpy()
            lab, n = ndi.label(dark)
            boxes, masks = [], []
            for i, sl in enumerate(ndi.find_objects(lab), start=1):
                crop = torch.from_numpy((lab[sl] == i).astype(np.float32))[None, None]
                masks.append(torch.nn.functional.interpolate(crop, size=(28, 28), mode="bilinear")[0, 0])
                boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.full((len(boxes),), 0.9),
                        "masks": torch.stack(masks) if masks else torch.zeros(0, 28, 28)})
        return out


FAKE = (FakeDetector(), ModelMeta(arch="fake", task="instances", mpp=0.25))


# -- metrics on hand cases -------------------------------------------------------------
def test_metrics_perfect_and_empty():
    t = np.zeros((10, 10), int)
    t[:3, :3], t[5:9, 5:9] = 1, 2
    s = score(t, t * 7)  # ids need not agree
    assert s["aji"] == 1.0 and s["pq"] == 1.0 and s["f1"] == 1.0 and s["tp"] == 2
    assert aji(t, np.zeros_like(t)) == 0.0
    assert pq(t, np.zeros_like(t))["fn"] == 2


def test_metrics_split_nucleus_by_hand():
    t = np.zeros((6, 6), int)
    t[0:2, 0:4] = 1                      # one true nucleus of 8 px
    p = np.zeros_like(t)
    p[0:2, 0:2], p[0:2, 2:4] = 1, 2      # predicted as two halves of 4 px
    # AJI: best pair IoU 4/8, C = 4, U = 8 + the unused half's 4 px = 12
    assert aji(t, p) == pytest.approx(4 / 12)
    r = pq(t, p)                          # IoU 0.5 is not > 0.5: no match
    assert (r["tp"], r["fp"], r["fn"], r["pq"]) == (0, 2, 1, 0.0)


def test_pq_by_hand():
    t = np.zeros((10, 10), int)
    t[0:5, 0:2] = 1                      # 10 px
    t[7:9, 7:9] = 2                      # missed
    p = np.zeros_like(t)
    p[0:4, 0:2] = 5                      # 8 px inside nucleus 1: IoU 0.8
    p[7:9, 0:2] = 6                      # false positive
    r = pq(t, p)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 1, 1)
    assert r["sq"] == pytest.approx(0.8)
    assert r["dq"] == pytest.approx(0.5)
    assert r["pq"] == pytest.approx(0.4)
    assert r["f1"] == pytest.approx(0.5)


# -- classical baseline ----------------------------------------------------------------
def test_baseline_one_instance_per_disk():
    centres = [(40, 40), (40, 120), (120, 60), (150, 160), (60, 180)]
    img, truth = disks_image((200, 220), centres, 14)
    labels, table = detect_nuclei_classical(img, mpp=0.25)
    assert labels.dtype == np.uint32 and labels.max() == len(centres)
    assert pq(truth, labels)["tp"] == len(centres)
    assert len(table) == len(centres)


# -- tiled inference and merging -------------------------------------------------------
def test_tiled_merge_counts_border_nuclei_once():
    # tiles of 256 with overlap 64 start at 0, 192, 344 on a 600 px side; these disks
    # straddle the tile edges (x or y = 192, 256, 344) and one sits on a tile corner
    centres = [(100, 256), (100, 192), (300, 344), (256, 256), (450, 100), (500, 500)]
    img, truth = disks_image((600, 600), centres, 20)
    tiled, table = detect_nuclei(img, FAKE, tile=256, overlap=64)
    whole, _ = detect_nuclei(img, FAKE, tile=640, overlap=64, features=False)
    assert tiled.max() == len(centres) == whole.max()
    r = pq(truth, tiled)
    assert r["tp"] == len(centres) and r["fp"] == 0 and r["sq"] > 0.9
    assert pq(whole, tiled)["tp"] == len(centres)    # same nuclei tiled and whole
    assert len(table) == len(centres)


def test_detect_nuclei_rescales_to_model_mpp():
    img, truth = disks_image((300, 300), [(80, 80), (200, 200)], 10)
    labels, table = detect_nuclei(img, FAKE, mpp=0.5, tile=256, overlap=64)  # model at 0.25
    assert labels.shape == truth.shape and labels.max() == 2
    assert pq(truth, labels)["tp"] == 2
    assert table["area_um2"].sum() == pytest.approx((truth > 0).sum() * 0.25, rel=0.1)


def test_bad_images_get_clear_messages():
    grey = np.full((100, 100), 200, np.uint8)
    with pytest.raises(ImageFormatError, match="(?i)grayscale|gray|grey|channel"):
        detect_nuclei(grey, FAKE)
    with pytest.raises(ImageFormatError, match="too small"):
        detect_nuclei(np.zeros((20, 20, 3), np.uint8), FAKE)
    img, _ = disks_image((120, 120), [(60, 60)], 12)
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])
    with pytest.warns(UserWarning, match="(?i)alpha"):
        labels, _ = detect_nuclei(rgba, FAKE)
    assert labels.max() == 1


# -- features --------------------------------------------------------------------------
def test_features_of_a_known_disk():
    img, truth = disks_image((120, 120), [(60, 60)], 20)
    mpp = 0.5
    t = nucleus_features(truth, img, mpp=mpp)
    assert len(t) == 1
    n_px = int((truth == 1).sum())
    assert t["area_um2"][0] == pytest.approx(n_px * mpp ** 2)
    assert t["area_um2"][0] == pytest.approx(np.pi * (20 * mpp) ** 2, rel=0.03)
    assert t["perimeter_um"][0] == pytest.approx(2 * np.pi * 20 * mpp, rel=0.05)
    assert t["eccentricity"][0] < 0.1 and t["solidity"][0] > 0.97
    h = haematoxylin(img)  # OD units, as colour.stain defines them for every task
    assert t["mean_haematoxylin"][0] == pytest.approx(h[truth == 1].mean(), rel=1e-4)
    # skimage.color.rgb2hed divides the same optical density by ln(1e6)
    ratio = t["mean_haematoxylin"][0] / rgb2hed(img)[..., 0][truth == 1].mean()
    assert ratio == pytest.approx(np.log(1e6), rel=0.02)
    assert (t["centroid_y"][0], t["centroid_x"][0]) == pytest.approx((60, 60))


def test_region_summary_tumour_vs_rest():
    img, truth = disks_image((200, 200), [(50, 50), (50, 150), (150, 150)], 10)
    t = nucleus_features(truth, img, mpp=0.5)
    tumour = np.zeros((200, 200), bool)
    tumour[:100] = True
    s = region_summary(t, {"tumour": tumour, "rest": ~tumour}, mpp=0.5).set_index("region")
    assert s.loc["tumour", "nuclei"] == 2 and s.loc["rest", "nuclei"] == 1
    area_mm2 = 100 * 200 * (0.5e-3) ** 2
    assert s.loc["tumour", "density_per_mm2"] == pytest.approx(2 / area_mm2)
    assert s.loc["rest", "mean_area_um2"] == pytest.approx(t["area_um2"][2])


# -- CLI -------------------------------------------------------------------------------
def test_cli_nuclei_classical_writes_labels_and_csv(tmp_path, capsys):
    import pandas as pd
    import tifffile
    from skimage.io import imsave

    from napari_histoseg.cli import main

    img, _ = disks_image((160, 160), [(40, 40), (40, 120), (120, 80)], 14)
    imsave(tmp_path / "he.png", img, check_contrast=False)
    region = np.zeros((160, 160), np.uint8)
    region[:80] = 255
    imsave(tmp_path / "tumour.png", region, check_contrast=False)
    rc = main(["nuclei", str(tmp_path / "he.png"), "-o", str(tmp_path / "n.tif"), "--classical",
               "--csv", str(tmp_path / "n.csv"), "--region", str(tmp_path / "tumour.png"), "--mpp", "0.25"])
    assert rc == 0
    assert tifffile.imread(tmp_path / "n.tif").max() == 3
    table = pd.read_csv(tmp_path / "n.csv")
    assert len(table) == 3 and table["in_region"].sum() == 2
    out = capsys.readouterr().out
    assert "tumour" in out and "rest" in out


# -- the Mask R-CNN itself -------------------------------------------------------------
def test_training_steps_lower_loss_and_write_loadable_checkpoint(tmp_path):
    from napari_histoseg.models import load_checkpoint
    from napari_histoseg.nuclei.data import InstanceTile, random_sample
    from napari_histoseg.nuclei.train import train_nuclei

    rng = np.random.default_rng(1)
    centres = [(int(y), int(x)) for y, x in rng.integers(20, 236, size=(12, 2))]
    img, truth = disks_image((256, 256), centres, 9)
    truth = ndi.label(truth > 0)[0]
    tiles = [InstanceTile("t", img, truth, 0.25)]
    kw = {"channels": 32, "representation": 64, "detections": 50}
    out = tmp_path / "nuc.safetensors"
    torch.manual_seed(0)
    summary = train_nuclei(None, out, arch_kwargs=kw, tiles=tiles, max_steps=12, patch_size=128,
                           batch_size=2, lr=1e-3, warmup=1, validate_tiles=False, threads=1,
                           log=lambda s: None)
    assert summary["steps"] == 12
    model, meta = load_checkpoint(out)
    assert meta.task == "instances" and meta.mpp == 0.25 and meta.arch == "maskrcnn-mobilenet_v2"
    # the trained weights fit a fixed batch better than fresh ones
    from napari_histoseg.models import build_model
    from napari_histoseg.nuclei.train import freeze_bn

    batch = [random_sample(tiles[0], 128, np.random.default_rng(5), 0.25) for _ in range(2)]

    def loss_of(m):
        torch.manual_seed(3)
        m.train()
        freeze_bn(m)
        with torch.no_grad():
            return float(sum(m([b[0] for b in batch], [b[1] for b in batch]).values()))

    torch.manual_seed(0)
    assert loss_of(model) < loss_of(build_model("maskrcnn-mobilenet_v2", **kw))


def test_segmenter_refuses_an_instances_checkpoint(tmp_path):
    from napari_histoseg.models import CheckpointError, build_model, save_checkpoint
    from napari_histoseg.models.segmenter import Segmenter

    kw = {"channels": 32, "representation": 64}
    path = save_checkpoint(build_model("maskrcnn-mobilenet_v2", **kw), tmp_path / "n.safetensors",
                           ModelMeta(arch="maskrcnn-mobilenet_v2", task="instances", arch_kwargs=kw))
    with pytest.raises(CheckpointError, match="nucleus detection model.*histoseg nuclei"):
        Segmenter.from_checkpoint(path)


@pytest.mark.skipif(not BUNDLED.is_file(), reason="no bundled nucleus model")
def test_bundled_model_finds_dark_disks():
    img, truth = disks_image((256, 256), [(60, 60), (60, 190), (180, 120)], 14)
    labels, _ = detect_nuclei(img, mpp=0.25)
    assert pq(truth, labels)["tp"] == 3


@pytest.mark.skipif(not BUNDLED.is_file(), reason="no bundled nucleus model")
def test_boxes_whose_mask_would_be_dropped_skip_the_mask_head_and_the_kept_nuclei_do_not_change():
    from napari_histoseg.models.detector import detect
    from napari_histoseg.nuclei.infer import load_nuclei_detector

    rng = np.random.default_rng(0)
    centres = [tuple(int(v) for v in rng.integers(20, 236, 2)) for _ in range(40)]
    img, _ = disks_image((256, 256), centres, 9)
    batch = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    module = load_nuclei_detector().module.eval()
    [every] = detect(module, batch)
    [strong] = detect(module, batch, min_score=0.8)
    keep = every["scores"] >= 0.8
    assert 0 < len(strong["scores"]) == int(keep.sum()) < len(every["scores"])   # fewer masks computed
    torch.testing.assert_close(strong["boxes"], every["boxes"][keep])
    torch.testing.assert_close(strong["masks"], every["masks"][keep])
    assert module.roi_heads.score_thresh == pytest.approx(0.05)                    # the module is left as it was
    # boxes that cannot hold a centroid in the tile's core skip the mask head; the rest are unchanged
    [core] = detect(module, batch, min_score=0.8, regions=[(0, 128, 0, 128)])
    b = strong["boxes"]
    inside = (b[:, 2] > 0) & (b[:, 0] < 128) & (b[:, 3] > 0) & (b[:, 1] < 128)
    assert 0 < len(core["scores"]) == int(inside.sum()) < len(strong["scores"])
    torch.testing.assert_close(core["masks"], strong["masks"][inside])


def test_score_threshold_is_tuned_on_held_out_tiles():
    from napari_histoseg.nuclei.data import InstanceTile
    from napari_histoseg.nuclei.train import tune_score_threshold

    class Scored(FakeDetector):  # the big disk scores 0.9, the small specks 0.35
        def detect_batch(self, batch):
            out = super().detect_batch(batch)
            for d in out:
                area = (d["boxes"][:, 2] - d["boxes"][:, 0]) * (d["boxes"][:, 3] - d["boxes"][:, 1])
                d["scores"] = torch.where(area > 400, 0.9, 0.35)
            return out

    img, truth = disks_image((200, 200), [(60, 60), (140, 140)], 16)
    img[20:24, 150:154] = NUCLEUS                 # a speck that is no nucleus
    thr, table = tune_score_threshold(Scored(), [InstanceTile("v", img, truth)], candidates=(0.3, 0.5))
    assert thr == 0.5 and table[0.5]["pq"] > table[0.3]["pq"]


def test_cli_train_and_evaluate_instances(tmp_path, capsys):
    """`histoseg train/evaluate --task instances` on a tiny instances folder: plumbing only."""
    import json

    from skimage.io import imsave

    from napari_histoseg.cli import main

    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "instances").mkdir()
    tiles = []
    for i, split in enumerate(["train", "test"]):
        img, truth = disks_image((192, 192), [(50, 50), (60, 140), (140, 90)], 12)
        imsave(root / "images" / f"t{i}.png", img, check_contrast=False)
        imsave(root / "instances" / f"t{i}.png", truth.astype(np.uint16), check_contrast=False)
        tiles.append({"id": f"t{i}", "image": f"images/t{i}.png", "instances": f"instances/t{i}.png",
                      "split": split, "organ": "breast", "mpp": 0.25})
    (root / "dataset.json").write_text(json.dumps({"format": "histoseg-dataset", "version": 1,
                                                   "task": "instances", "classes": {"1": "nucleus"},
                                                   "tiles": tiles}))
    out = tmp_path / "n.safetensors"
    kw = json.dumps({"channels": 32, "representation": 64, "detections": 50})
    assert main(["train", str(root), "-o", str(out), "--epochs", "1", "--steps-per-epoch", "2",
                 "--batch-size", "1", "--patch-size", "128", "--arch-kwargs", kw, "--threads", "1",
                 "--half-weights"]) == 0
    assert out.is_file() and "thresholds chosen" in capsys.readouterr().out
    assert main(["evaluate", str(root), "--model", str(out), "--json", str(tmp_path / "e.json")]) == 0
    text = capsys.readouterr().out
    assert "baseline" in text and "breast" in text and "AJI" in text
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["baseline"]["overall"]["aji"] > 0.8       # disks are easy for the watershed


def test_a_patch_without_nuclei_gives_empty_targets_not_an_error():
    import numpy as np

    from napari_histoseg.nuclei.data import targets_from_labels

    t = targets_from_labels(np.zeros((32, 48), np.uint16))
    assert t["boxes"].shape == (0, 4) and t["masks"].shape == (0, 32, 48) and len(t["labels"]) == 0
