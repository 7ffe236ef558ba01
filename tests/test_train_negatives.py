"""Tumour-free folders (benign tissue taken as all not tumour) in tumour training: how they are
drawn (``folder_weights``) and how validation reports them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from skimage.io import imread, imsave

from napari_histoseg.io.checks import InputError
from napari_histoseg.models import load_checkpoint
from napari_histoseg.tumour.train import train, validate


def folder(root: Path, n: int, tumour: bool, size: int = 48) -> Path:
    """``n`` train tiles: with ``tumour``, a dark purple block marked 1; without, pale pink, all 0."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(len(root.name))
    tiles = []
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        if tumour:
            mask[6 + i:30 + i, 8:40] = 1
        img = np.where(mask[..., None] == 1, [90, 40, 120], [230, 200, 220]).astype(float)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        imsave(root / "images" / f"t{i}.png", img, check_contrast=False)
        imsave(root / "masks" / f"t{i}.png", mask, check_contrast=False)
        tiles.append({"id": f"t{i}", "image": f"images/t{i}.png", "mask": f"masks/t{i}.png", "split": "train",
                      "group": f"g{i}", "source": "synthetic", "x": 0, "y": 0, "width": size, "height": size})
    (root / "dataset.json").write_text(json.dumps({
        "format": "histoseg-dataset", "version": 1, "name": root.name,
        "classes": {"0": "not tumour", "1": "tumour"}, "ignore_index": 255, "tiles": tiles}))
    return root


TINY = dict(epochs=1, patch_size=32, batch_size=2, steps_per_epoch=1, val_fraction=0.25, seed=0, mpp=0,
            calibrate=False)


def test_a_benign_folder_is_reported_as_tumour_called_and_does_not_move_the_score(tmp_path):
    tum, benign = folder(tmp_path / "tumour", 4, True), folder(tmp_path / "benign", 4, False)
    logs = []
    s = train([tum, benign], tmp_path / "m.safetensors", log=logs.append, **TINY)
    rec = s["history"][-1]
    assert 0.0 <= rec["val_called_benign"] <= 1.0                 # share of its pixels called tumour
    assert rec["score"] == pytest.approx(rec["val_dice"])
    assert "val_dice_benign" not in rec                          # a folder without tumour has no Dice
    module, _ = load_checkpoint(tmp_path / "m.safetensors")     # the score is the tumour folder's Dice alone
    ids = s["data"][0]["val_ids"]
    imgs = [imread(tum / "images" / f"{i}.png") for i in ids]
    masks = [imread(tum / "masks" / f"{i}.png") for i in ids]
    assert rec["score"] == pytest.approx(validate(module, imgs, masks)[0])
    assert any("val_called_benign" in line for line in logs)


def test_folder_weights_set_the_share_of_patches_each_folder_gives(tmp_path):
    tum, benign = folder(tmp_path / "tumour", 4, True), folder(tmp_path / "benign", 4, False)
    logs = []
    train([tum, benign], tmp_path / "m.safetensors", log=logs.append, folder_weights={"benign": 0.5}, **TINY)
    assert "labelled patches drawn from tumour 67%, benign 33%" in logs


@pytest.mark.parametrize("weights, said", [({"bnign": 1}, "bnign, not among the folders tumour, benign"),
                                           ({"benign": -1}, "folder_weights['benign'] must be"),
                                           ({"benign": float("nan")}, "must be a finite number"),
                                           ({"tumour": 0, "benign": 0}, "every folder has weight 0")])
def test_nonsense_folder_weights_are_refused_by_name_before_training(tmp_path, weights, said):
    tum, benign = folder(tmp_path / "tumour", 4, True), folder(tmp_path / "benign", 4, False)
    with pytest.raises(InputError) as exc:
        train([tum, benign], tmp_path / "m.safetensors", log=lambda *_: None, folder_weights=weights, **TINY)
    assert said in str(exc.value)
    assert not (tmp_path / "m.safetensors").exists()
