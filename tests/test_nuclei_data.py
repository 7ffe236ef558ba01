"""Nuclei on more data: several folders, held-out parts, ignore regions, size recall, touching
nuclei, batched tiles, QuPath detections and cells."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage as ndi
from test_nuclei import FakeDetector

from napari_histoseg.io.checks import InputError
from napari_histoseg.models import ModelMeta
from napari_histoseg.nuclei.data import (
    GLASS,
    InstanceDatasetError,
    InstanceTile,
    held_out_ids,
    load_instances,
    load_many,
    random_sample,
)
from napari_histoseg.nuclei.metrics import score, size_recall
from napari_histoseg.nuclei.postprocess import split_touching
from napari_histoseg.testing import disks_image, nuclei_dataset


def _retag(root, **per_tile):
    info = json.loads((root / "dataset.json").read_text())
    for t in info["tiles"]:
        t.update(per_tile)
    (root / "dataset.json").write_text(json.dumps(info))


def test_folder_without_test_split_holds_out_the_same_tiles_every_time(tmp_path):
    root = nuclei_dataset(tmp_path / "tnbc", splits=("train",) * 6)
    info = json.loads((root / "dataset.json").read_text())
    held = held_out_ids(info)
    assert len(held) == 2 and held == held_out_ids(info)
    train = {t.id for t in load_instances(root, "train")}
    test = {t.id for t in load_instances(root, "test")}
    assert test == held and not train & test and len(train | test) == 6


def test_a_slide_on_both_sides_of_two_folders_is_refused(tmp_path):
    a = nuclei_dataset(tmp_path / "a", splits=("train",))
    b = nuclei_dataset(tmp_path / "b", splits=("test",))
    _retag(a, group="TCGA-X")
    _retag(b, group="TCGA-X")
    with pytest.raises(InstanceDatasetError, match="TCGA-X"):
        load_many([a, b], "train")
    _retag(b, group="TCGA-Y")
    assert [t.source for t in load_many([a, b], "train")] == ["a"]


def test_ignored_region_counts_neither_as_found_nor_missed():
    truth = np.zeros((40, 40), int)
    truth[2:10, 2:10] = 1
    pred = truth.copy()
    pred[25:35, 25:35] = 2                       # a nucleus the annotators left unlabelled
    ignore = np.zeros((40, 40), bool)
    ignore[20:40, 20:40] = True
    assert score(truth, pred)["fp"] == 1
    s = score(truth, pred, ignore)
    assert s["fp"] == 0 and s["pq"] == 1.0 and s["aji"] == 1.0


def test_training_patch_paints_ignored_nest_as_glass_and_drops_its_nuclei():
    img, lab = disks_image((64, 64), [(16, 16), (48, 48)], 6)
    lab = ndi.label(lab > 0)[0]
    ignore = np.zeros((64, 64), bool)
    ignore[36:64, 36:64] = True                  # covers the second nucleus
    tile = InstanceTile("t", img, lab, 0.25, ignore=ignore)
    x, target = random_sample(tile, 64, np.random.default_rng(0), 0.25, scale=(1, 1))
    assert len(target["boxes"]) == 1             # only the labelled nucleus is a target
    img_out = (x.permute(1, 2, 0).numpy() * 255)
    assert (np.abs(img_out - GLASS) < 40).all(-1).mean() > 0.15   # the nest is blank, not "background"


def test_small_tile_is_padded_not_stretched():
    img, lab = disks_image((40, 30), [(20, 15)], 8)
    tile = InstanceTile("t", img, ndi.label(lab > 0)[0], 0.25)
    x, target = random_sample(tile, 128, np.random.default_rng(1), 0.25, scale=(1, 1))
    assert x.shape == (3, 128, 128) and len(target["boxes"]) == 1
    w = target["boxes"][0, 2] - target["boxes"][0, 0]
    assert 14 <= float(w) <= 20                  # the nucleus keeps its size (about 17 px)


def test_stain_augmentation_recolours_patches_and_keeps_every_nucleus():
    from napari_histoseg.nuclei.data import augment_config

    img, lab = disks_image((96, 96), [(24, 24), (24, 72), (72, 48)], 9)
    tile = InstanceTile("t", img, ndi.label(lab > 0)[0], 0.25)
    colours = {}
    for name in ("light", "stain"):
        rng, means = np.random.default_rng(3), []
        for _ in range(12):
            x, target = random_sample(tile, 96, rng, 0.25, scale=(1, 1), cfg=augment_config(name))
            assert len(target["boxes"]) == 3     # colour never costs a nucleus
            nuclei = target["masks"].any(0).numpy().astype(bool)
            means.append(x.permute(1, 2, 0).numpy()[nuclei].mean(0))
        colours[name] = np.std(means, axis=0).mean()
    assert colours["stain"] > 1.5 * colours["light"]   # another lab's stain: wider than v1's jitter
    with pytest.raises(ValueError, match="light, stain"):
        augment_config("strong")


def test_size_recall_bins_show_a_miss_of_the_large_nuclei():
    areas = np.array([10, 12, 14, 100, 120, 140])
    found = np.array([True, True, True, False, False, True])
    rows = size_recall(areas, found, [10, 50, 140])
    assert [r["n"] for r in rows] == [3, 3]
    assert rows[0]["recall"] == 1.0 and rows[1]["recall"] == pytest.approx(1 / 3)


def test_touching_pair_is_cut_and_single_nuclei_are_not():
    yy, xx = np.mgrid[:60, :160]
    labels = np.zeros((60, 160), np.int32)
    labels[((yy - 30) ** 2 + (xx - 20) ** 2) < 144] = 1          # single
    labels[((yy - 30) ** 2 + (xx - 50) ** 2) < 100] = 2          # single
    labels[((yy - 30) ** 2 + (xx - 75) ** 2) < 100] = 3          # single
    labels[((yy - 30) ** 2 + (xx - 100) ** 2) < 121] = 4         # single
    pair = (((yy - 30) ** 2 + (xx - 125) ** 2) < 144) | (((yy - 30) ** 2 + (xx - 147) ** 2) < 144)
    labels[pair] = 5
    out = split_touching(labels, min_area=50)
    assert len(np.unique(out[pair])) == 2                        # the pair became two nuclei
    for k in (1, 2, 3, 4):
        assert len(np.unique(out[labels == k])) == 1             # the singles stay whole


def test_batched_tiles_give_the_same_nuclei():
    from napari_histoseg.nuclei.infer import detect_nuclei

    rng = np.random.default_rng(3)
    centres = [tuple(int(v) for v in c) for c in rng.integers(15, 385, size=(25, 2))]
    img, _ = disks_image((400, 400), centres, 7)
    fake = (FakeDetector(), ModelMeta(arch="fake", task="instances", mpp=0.25))
    one, _ = detect_nuclei(img, fake, tile=160, overlap=48, batch=1, features=False)
    four, _ = detect_nuclei(img, fake, tile=160, overlap=48, batch=4, features=False)
    np.testing.assert_array_equal(one, four)
    assert one.max() > 15


@pytest.mark.parametrize("kw", [{"mpp": 0.0}, {"mpp": float("nan")}, {"batch": 0}, {"score_threshold": 1.5}])
def test_bad_numbers_are_refused_with_a_message(kw):
    from napari_histoseg.nuclei.infer import detect_nuclei

    img, _ = disks_image((64, 64), [(32, 32)], 8)
    fake = (FakeDetector(), ModelMeta(arch="fake", task="instances", mpp=0.25))
    with pytest.raises(InputError, match=next(iter(kw))):
        detect_nuclei(img, fake, **kw)


def test_evaluate_reports_recall_by_size_quintile(tmp_path):
    from napari_histoseg.nuclei.evaluate import evaluate_nuclei, format_table

    root = nuclei_dataset(tmp_path / "d")
    fake = (FakeDetector(), ModelMeta(arch="fake", task="instances", mpp=0.25))
    r = evaluate_nuclei(root, fake, split="test", baseline=False, tile=192, overlap=64)
    assert len(r["model"]["size_recall"]) == 5
    assert r["model"]["overall"]["pq"] > 0.8
    assert "size quintile" in format_table(r)


def test_a_pale_stain_is_brought_to_the_models_stain_first():
    from napari_histoseg.colour.normalise import MacenkoNormaliser
    from napari_histoseg.colour.stain import optical_density, rgb_from_od
    from napari_histoseg.nuclei.infer import detect_nuclei
    from napari_histoseg.testing import he_image

    img = he_image()[:256, :256]
    pale = rgb_from_od(optical_density(img) * 0.4)      # another lab's lighter haematoxylin
    target = MacenkoNormaliser().fit_target(img).to_dict()
    meta = ModelMeta(arch="fake", task="instances", mpp=0.25, preprocessing={"stain": target})
    kw = {"features": False, "tile": 256, "overlap": 64}
    found = int(detect_nuclei(img, (FakeDetector(), meta), stain=False, **kw)[0].max())
    assert int(detect_nuclei(pale, (FakeDetector(), meta), stain=False, **kw)[0].max()) < 0.1 * found
    assert int(detect_nuclei(pale, (FakeDetector(), meta), **kw)[0].max()) > 0.7 * found


def test_stain_normalisation_is_off_unless_asked_or_named_by_the_model():
    from napari_histoseg.nuclei.infer import MONUSEG_STAIN, stain_target

    plain = ModelMeta(arch="fake", task="instances", mpp=0.25)
    own = ModelMeta(arch="fake", task="instances", mpp=0.25, preprocessing={"stain": {"method": "macenko"}})
    assert stain_target(plain) is None and stain_target(plain, True) is MONUSEG_STAIN
    assert stain_target(own) == {"method": "macenko"} and stain_target(own, False) is None


def test_train_cli_takes_the_stain_augmentation_and_its_help_prints(capsys):
    from napari_histoseg.cli import build_parser

    args = build_parser().parse_args(["train", "a", "b", "--task", "instances", "-o", "n.safetensors",
                                      "--nuclei-augment", "stain"])
    assert args.augment == "stain"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--help"])
    assert "--nuclei-augment" in capsys.readouterr().out
