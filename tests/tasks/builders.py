"""Tiny synthetic training-data folders, one per task, for the contract tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from skimage.draw import disk
from skimage.io import imsave

PURPLE, PINK = (90, 40, 120), (230, 200, 220)


def _write(root: Path, tiles: list, **info) -> Path:
    (root / "dataset.json").write_text(json.dumps({"format": "histoseg-dataset", "version": 1, **info,
                                                   "tiles": tiles}))
    return root


def segmentation_folder(root: Path, n: int = 6, size: int = 64) -> Path:
    """Tumour (1) dark purple, the rest pale pink; 4 train tiles, 2 test."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng, tiles = np.random.default_rng(0), []
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[8 + i:40 + i, 10:50] = 1
        img = np.where(mask[..., None] == 1, PURPLE, PINK).astype(float)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        imsave(root / "images" / f"t{i}.png", img, check_contrast=False)
        imsave(root / "masks" / f"t{i}.png", mask, check_contrast=False)
        tiles.append({"id": f"t{i}", "image": f"images/t{i}.png", "mask": f"masks/t{i}.png",
                      "split": "test" if i >= 4 else "train", "group": f"t{i}"})
    return _write(root, tiles, classes={"0": "not tumour", "1": "tumour"}, ignore_index=255)


def instances_folder(root: Path, size: int = 160) -> Path:
    """Dark disks (one label each) on pink; one train tile, one test tile, at 0.25 µm/px."""
    (root / "images").mkdir(parents=True)
    (root / "instances").mkdir()
    tiles = []
    for i, split in enumerate(["train", "test"]):
        img = np.empty((size, size, 3), np.uint8)
        img[:] = PINK
        labels = np.zeros((size, size), np.uint16)
        for k, (cy, cx) in enumerate([(40, 40), (50, 115), (115, 75)], start=1):
            rr, cc = disk((cy + 4 * i, cx), 12, shape=labels.shape)
            img[rr, cc], labels[rr, cc] = PURPLE, k
        imsave(root / "images" / f"t{i}.png", img, check_contrast=False)
        imsave(root / "instances" / f"t{i}.png", labels, check_contrast=False)
        tiles.append({"id": f"t{i}", "image": f"images/t{i}.png", "instances": f"instances/t{i}.png",
                      "split": split, "mpp": 0.25, "organ": "breast"})
    return _write(root, tiles, task="instances", classes={"1": "nucleus"})


def classification_folder(root: Path, patients: int = 3, per: int = 2, size: int = 80) -> Path:
    """Benign pale pink, malignant dense purple; whole patients per label, all train."""
    (root / "images").mkdir(parents=True)
    rng, tiles = np.random.default_rng(0), []
    for label, base in ((0, PINK), (1, PURPLE)):
        for p in range(patients):
            for k in range(per):
                img = np.clip(np.array(base) + rng.normal(0, 18, (size, size, 3)), 0, 255).astype(np.uint8)
                tid = f"{label}-{p}-{k}"
                imsave(root / "images" / f"{tid}.png", img, check_contrast=False)
                tiles.append({"id": tid, "image": f"images/{tid}.png", "label": label, "subtype": "X",
                              "group": f"patient-{label}-{p}", "split": "test" if p == 0 else "train"})
    return _write(root, tiles, task="classification", classes={"0": "benign", "1": "malignant"})


BUILDERS = {"segmentation": segmentation_folder, "instances": instances_folder,
            "classification": classification_folder}
