"""Training-data folders: validation with clear errors, and splits by group."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.io import imsave

from napari_histoseg.io.dataset import DatasetError, load_dataset
from napari_histoseg.testing import tumour_dataset as make_dataset
from napari_histoseg.training.augment import AugmentConfig, hed_perturb, random_patch
from napari_histoseg.training.splits import holdout_validation, split_tiles

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"


def test_valid_dataset_loads(tmp_path):
    ds = load_dataset(make_dataset(tmp_path / "d"))
    assert len(ds) == 6
    img, mask = ds.load(0)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    assert set(np.unique(mask)) <= {0, 1}


def test_missing_file_is_refused(tmp_path):
    root = make_dataset(tmp_path / "d")
    (root / "masks" / "t3.png").unlink()
    with pytest.raises(DatasetError, match=r"t3.*mask file masks/t3.png is missing"):
        load_dataset(root)


def test_mask_of_wrong_size_is_refused(tmp_path):
    root = make_dataset(tmp_path / "d")
    imsave(root / "masks" / "t2.png", np.zeros((32, 64), np.uint8), check_contrast=False)
    with pytest.raises(DatasetError, match=r"t2.*64x32 px but image .* 64x64 px"):
        load_dataset(root)


def test_unknown_class_codes_are_refused(tmp_path):
    root = make_dataset(tmp_path / "d")
    bad = np.zeros((64, 64), np.uint8)
    bad[0, 0], bad[1, 1], bad[2, 2] = 7, 255, 1  # 255 is the ignore index: allowed
    imsave(root / "masks" / "t1.png", bad, check_contrast=False)
    with pytest.raises(DatasetError, match=r"t1.*class codes \[7\]"):
        load_dataset(root)


def test_missing_dataset_json_and_wrong_format(tmp_path):
    with pytest.raises(DatasetError, match="no dataset.json"):
        load_dataset(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DatasetError, match="format"):
        load_dataset(tmp_path)


def test_split_field_is_honoured(tmp_path):
    splits = ["train", "train", "test", "train", "test", "train"]
    ds = split_tiles(load_dataset(make_dataset(tmp_path / "d", splits=splits)), test_fraction=0.5)
    assert ds.subset("test").ids() == ["t2", "t4"]
    assert ds.subset("train").ids() == ["t0", "t1", "t3", "t5"]


def test_group_split_keeps_groups_together_and_is_seeded(tmp_path):
    groups = ["a", "a", "b", "b", "c", "c"]
    ds = load_dataset(make_dataset(tmp_path / "d", groups=groups))
    s1 = split_tiles(ds, val_fraction=0.3, test_fraction=0.3, seed=3)
    s2 = split_tiles(ds, val_fraction=0.3, test_fraction=0.3, seed=3)
    assert [t["_split"] for t in s1.tiles] == [t["_split"] for t in s2.tiles]
    by_group = {}
    for t in s1.tiles:
        by_group.setdefault(t["group"], set()).add(t["_split"])
    assert all(len(v) == 1 for v in by_group.values())
    assert {"train", "test"} <= {t["_split"] for t in s1.tiles}


def test_holdout_validation_by_group_and_single_group_block(tmp_path):
    ds = load_dataset(make_dataset(tmp_path / "a", groups=list("abcdef"), splits=["train"] * 6))
    tr, va, how = holdout_validation(ds, 0.34, seed=0)
    assert len(va) == 2 and len(tr) == 4 and not set(tr.ids()) & set(va.ids())
    one = load_dataset(make_dataset(tmp_path / "b", groups=["g"] * 6, splits=["train"] * 6))
    tr, va, how = holdout_validation(one, 0.34, seed=0)
    assert "spatial block" in how
    assert {t["x"] for t in va.tiles}.isdisjoint({t["x"] for t in tr.tiles})


def test_augmentation_keeps_codes_and_shapes():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (100, 120, 3), dtype=np.uint8)
    mask = (rng.random((100, 120)) > 0.5).astype(np.uint8)
    mask[0, 0] = 255
    for _ in range(5):
        x, y = random_patch(img, mask, 64, rng, AugmentConfig())
        assert x.shape == (64, 64, 3) and x.dtype == np.uint8 and y.shape == (64, 64)
        assert set(np.unique(y)) <= {0, 1, 255}
    small = random_patch(img[:40, :40], mask[:40, :40], 64, rng)[0]
    assert small.shape == (64, 64, 3)
    # on H&E colours the HED round trip is near exact, and the perturbation is mild
    he = np.where(mask[..., None] == 1, [90, 40, 120], [230, 200, 220]).astype(np.uint8)
    same = hed_perturb(he, np.random.default_rng(1), sigma=0.0, bias=0.0)
    assert np.abs(same.astype(int) - he.astype(int)).max() <= 2
    out = hed_perturb(he, np.random.default_rng(1), sigma=0.05, bias=0.01)
    assert 0 < np.abs(out.astype(int) - he.astype(int)).mean() < 25


@pytest.mark.skipif(not (SHARED / "camelyon" / "dataset.json").is_file(), reason="../shared/data absent")
def test_shared_camelyon_is_valid():
    ds = load_dataset(SHARED / "camelyon", check_masks=False)
    assert len(ds.subset("train")) == 50 and len(ds.subset("test")) == 12


def test_a_folder_of_one_slide_without_splits_still_trains(tmp_path):
    """Export writes tiles of one source and no split: split_tiles must keep that one
    group for training instead of sending it all to test."""
    import numpy as np

    from napari_histoseg.io.dataset import load_dataset
    from napari_histoseg.training.splits import split_tiles
    from napari_histoseg.tumour.export import export_tiles

    rng = np.random.default_rng(0)
    export_tiles(rng.integers(0, 255, (256, 512, 3), dtype=np.uint8), np.ones((256, 512), np.uint8),
                 tmp_path / "ds", tile=256)
    ds = split_tiles(load_dataset(tmp_path / "ds"), val_fraction=0.0, test_fraction=0.2)
    assert len(ds.subset("train").tiles) == 2 and not ds.subset("test").tiles


def test_small_tiles_are_padded_with_the_ignore_index_not_with_invented_labels():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)
    mask = np.ones((20, 30), np.uint8)  # all tumour: padding must not become tumour (or not tumour)
    x, y = random_patch(img, mask, 64, rng, AugmentConfig())
    assert x.shape == (64, 64, 3) and y.shape == (64, 64)
    assert set(np.unique(y)) == {1, 255} and 0 < (y == 1).mean() < 0.5


def test_training_plan_counts_tiles_and_says_what_validation_uses(tmp_path):
    from napari_histoseg.training.plan import MIN_HOLDOUT_TILES, training_plan

    plan = training_plan(make_dataset(tmp_path / "six", groups=list("abcdef"), splits=["train"] * 6),
                         val_fraction=0.34)
    assert (plan.train_tiles, plan.val_tiles, plan.validate_on_train) == (4, 2, False)
    assert "4 tiles to train on, 2 held out for validation" in plan.message
    assert not set(plan.folders[0]["train"].ids()) & set(plan.folders[0]["val"].ids())
    n = MIN_HOLDOUT_TILES - 1
    few = training_plan(make_dataset(tmp_path / "few", n=n, splits=["train"] * n))
    assert (few.train_tiles, few.val_tiles, few.validate_on_train) == (3, 3, True)
    assert f"needs at least {MIN_HOLDOUT_TILES} tiles" in few.message and "validation uses the same 3 tiles" in few.message


def test_training_plan_leaves_out_all_ignore_tiles_and_warns_of_a_missing_class(tmp_path):
    from napari_histoseg.training.plan import training_plan

    root = make_dataset(tmp_path / "d", n=2, splits=["train"] * 2)
    imsave(root / "masks" / "t1.png", np.full((64, 64), 255, np.uint8), check_contrast=False)
    imsave(root / "masks" / "t0.png", np.ones((64, 64), np.uint8), check_contrast=False)
    plan = training_plan(root)
    assert plan.train_tiles == 1 and plan.folders[0]["train"].ids() == ["t0"]
    assert "1 tile whose mask is all ignore (255) left out" in plan.message
    assert "no mask marks any 'not tumour' pixel" in plan.message
    imsave(root / "masks" / "t0.png", np.full((64, 64), 255, np.uint8), check_contrast=False)
    with pytest.raises(DatasetError, match=r"hold no labelled pixel.*needs at least 1 training tile"):
        training_plan(root)
