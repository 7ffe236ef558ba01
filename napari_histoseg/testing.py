"""Synthetic images, models and training-data folders for tests and benchmarks.

Everything here is small, seeded and needs neither ``../shared`` nor a network: images of
dark purple (haematoxylin-like) shapes on pale pink, written as training-data folders of
each task (see docs/ARCHITECTURE.md, "Training-data folder"):

* :func:`tumour_dataset`: ``images/`` + ``masks/`` (task ``semantic``, tumour = code 1);
* :func:`nuclei_dataset`: ``images/`` + ``instances/`` (task ``instances``, uint16 labels);
* :func:`classification_dataset`: ``images/`` + a ``label`` per tile (task ``classification``,
  patients as groups).

Models: :func:`random_segmenter` and :func:`save_random_checkpoint`. Real data: :func:`he_image`
(the bundled breast carcinoma sample). This module imports neither napari nor pytest.

>>> from napari_histoseg.testing import disks_image
>>> img, truth = disks_image((64, 64), [(20, 20), (40, 44)], 6)
>>> img.shape, int(truth.max())
((64, 64, 3), 2)
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

PINK = (230, 200, 220)         # tumour tiles' background (stroma-like)
PURPLE = (90, 40, 120)         # tumour
NUCLEUS_BG = (235, 215, 230)   # nuclei tiles' background
NUCLEUS = (95, 45, 140)        # haematoxylin-purple nuclei
BENIGN, MALIGNANT = (235, 170, 205), (120, 70, 160)

_FORMAT = {"format": "histoseg-dataset", "version": 1}


def _imsave(path: Path, array: np.ndarray) -> None:
    from skimage.io import imsave

    imsave(path, array, check_contrast=False)


def he_image() -> np.ndarray:
    """The bundled 1000 x 1000 breast carcinoma sample, RGB uint8."""
    from napari_histoseg.plugin.samples import breast_carcinoma

    return np.asarray(breast_carcinoma()[0][0])


def noisy(base: np.ndarray, rng: np.random.Generator, sigma: float = 8.0) -> np.ndarray:
    """``base`` (float or uint8 RGB) plus Gaussian noise, clipped to uint8."""
    return np.clip(np.asarray(base, np.float64) + rng.normal(0, sigma, np.shape(base)), 0, 255).astype(np.uint8)


def tumour_tile(mask: np.ndarray, rng: np.random.Generator, sigma: float = 8.0) -> np.ndarray:
    """RGB tile with tumour (purple) where ``mask`` is 1 and pale pink elsewhere, plus noise."""
    return noisy(np.where(np.asarray(mask)[..., None] == 1, PURPLE, PINK), rng, sigma)


def disks_image(shape, centres, radius) -> tuple[np.ndarray, np.ndarray]:
    """RGB image of dark disks (nuclei) on pink, and its true label image (int32, 1..N)."""
    from skimage.draw import disk

    img = np.empty((*shape, 3), np.uint8)
    img[:] = NUCLEUS_BG
    truth = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, start=1):
        rr, cc = disk((cy, cx), radius, shape=shape)
        img[rr, cc] = NUCLEUS
        truth[rr, cc] = i
    return img, truth


def tumour_dataset(root, n: int = 6, size: int = 64, groups=None, splits=None) -> Path:
    """A segmentation folder of ``n`` tiles: tumour (code 1) is a dark purple left part of each
    tile, ``size // 2 + i`` px wide. ``groups``/``splits``: one per tile, or None (no key)."""
    root = Path(root)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    tiles = []
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[:, : size // 2 + i] = 1
        tid = f"t{i}"
        _imsave(root / "images" / f"{tid}.png", tumour_tile(mask, rng))
        _imsave(root / "masks" / f"{tid}.png", mask)
        t = {"id": tid, "image": f"images/{tid}.png", "mask": f"masks/{tid}.png", "source": "synthetic",
             "x": (i % 3) * size, "y": (i // 3) * size, "width": size, "height": size}
        if groups is not None:
            t["group"] = groups[i]
        if splits is not None:
            t["split"] = splits[i]
        tiles.append(t)
    meta = {**_FORMAT, "classes": {"0": "not tumour", "1": "tumour"}, "ignore_index": 255, "tiles": tiles}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def nuclei_dataset(root, splits=("train", "test"), size: int = 192, radius: int = 12,
                   centres=((50, 50), (60, 140), (140, 90)), mpp: float = 0.25, organ: str = "breast") -> Path:
    """An instances folder: one tile of dark disks per entry of ``splits``, labels as uint16 PNGs."""
    root = Path(root)
    (root / "images").mkdir(parents=True)
    (root / "instances").mkdir()
    tiles = []
    for i, split in enumerate(splits):
        img, truth = disks_image((size, size), centres, radius)
        _imsave(root / "images" / f"t{i}.png", img)
        _imsave(root / "instances" / f"t{i}.png", truth.astype(np.uint16))
        tiles.append({"id": f"t{i}", "image": f"images/t{i}.png", "instances": f"instances/t{i}.png",
                      "split": split, "organ": organ, "mpp": mpp})
    meta = {**_FORMAT, "task": "instances", "classes": {"1": "nucleus"}, "tiles": tiles}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def classification_dataset(root, patients: int = 3, per: int = 3, size: int = 96, seed: int = 0) -> Path:
    """A classification folder: benign = pale pink, malignant = dense purple, ``per`` tiles for
    each of ``patients`` patients per class (the patient is the tile's ``group``)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    tiles = []
    for label, base in ((0, BENIGN), (1, MALIGNANT)):
        for p in range(patients):
            for k in range(per):
                img = noisy(np.broadcast_to(np.array(base, np.float64), (size, size, 3)), rng, 18)
                tid = f"{label}-{p}-{k}"
                _imsave(root / "images" / f"{tid}.png", img)
                tiles.append({"id": tid, "image": f"images/{tid}.png", "label": label,
                              "subtype": "X" if label else "Y", "group": f"patient-{label}-{p}", "split": "train"})
    meta = {**_FORMAT, "task": "classification", "classes": {"0": "benign", "1": "malignant"}, "tiles": tiles}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def random_segmenter(arch: str = "unet-mobilenet_v2", seed: int = 0, device: str = "cpu", **kwargs):
    """A randomly initialised :class:`~napari_histoseg.models.segmenter.Segmenter` (no weights needed)."""
    from napari_histoseg.models.segmenter import Segmenter

    return Segmenter.random(arch, seed=seed, device=device, **kwargs)


def save_random_checkpoint(path, model=None, tile_size: int = 256) -> Path:
    """``model`` (default: :func:`random_segmenter`) saved as a .safetensors checkpoint with
    ``tile_size`` px tiles."""
    from napari_histoseg.models import save_checkpoint

    model = model if model is not None else random_segmenter()
    model.meta.tile_size = tile_size
    return save_checkpoint(model.module, Path(path), model.meta)
