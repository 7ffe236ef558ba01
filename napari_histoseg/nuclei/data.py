"""Instance training data: the ``"task": "instances"`` layout of ``docs/ARCHITECTURE.md``.

::

    DATASET/dataset.json   {"task": "instances", "tiles": [{"id", "image", "instances",
                            "split"?, "organ"?, "mpp"?, ...}]}
    DATASET/images/ID.png        RGB uint8
    DATASET/instances/ID.png     uint16: 0 background, 1..N one nucleus each

:func:`load_instances` reads and checks it; :func:`random_sample` cuts one augmented
training patch and its Mask R-CNN target (boxes, labels, masks): a window of random
place, scaled around the ratio of the tile's mpp to the model's (scale jitter), a
rotation by k·90°, flips, HED stain jitter and brightness/contrast (the last three from
:mod:`napari_histoseg.training.augment`). Labels are resized nearest-neighbour, so every nucleus
keeps its own id; nuclei cut to a sliver by the window's border are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.io import imread

from napari_histoseg.io.dataset import DatasetError
from napari_histoseg.io.dataset import read_dataset_json as _read_dataset_json
from napari_histoseg.training.augment import AugmentConfig, geometric, hed_perturb, intensity


class InstanceDatasetError(DatasetError):
    """An instances folder that cannot be used; the message says which tile and why."""


@dataclass
class InstanceTile:
    id: str
    image: np.ndarray     # (H, W, 3) uint8
    labels: np.ndarray    # (H, W) int32, 0 background
    mpp: float | None = None
    organ: str = ""
    split: str = ""
    meta: dict = field(default_factory=dict)


def read_dataset_json(root) -> dict:
    return _read_dataset_json(root, "instances", "nuclei training and evaluation need an 'instances' "
                                                 "folder (instances/ID.png with one label per nucleus)")


def load_instances(root, split: str | None = None, ids=None) -> list[InstanceTile]:
    """Read the tiles of an instances folder (``split``: 'train', 'test', or None/'all')."""
    root = Path(root)
    info = read_dataset_json(root)
    tiles = []
    for t in info.get("tiles", []):
        if split not in (None, "all") and t.get("split") != split:
            continue
        if ids is not None and t["id"] not in ids:
            continue
        img = np.asarray(imread(str(root / t["image"])))
        if img.ndim == 2:
            img = np.stack([img] * 3, -1)
        img = np.ascontiguousarray(img[..., :3]).astype(np.uint8)
        lab = np.asarray(imread(str(root / t["instances"]))).astype(np.int32)
        if lab.shape != img.shape[:2]:
            raise InstanceDatasetError(
                f"{root}: tile {t['id']}: instances {lab.shape} differ from image {img.shape[:2]}")
        tiles.append(InstanceTile(t["id"], img, lab, t.get("mpp"), t.get("organ", ""),
                                  t.get("split", ""), t))
    if not tiles:
        raise InstanceDatasetError(f"{root}: no tiles with split {split!r}")
    return tiles


def _resize_pair(image: np.ndarray, labels: np.ndarray, size: int):
    if image.shape[0] == size and image.shape[1] == size:
        return image, labels
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    img = t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    m = torch.from_numpy(np.ascontiguousarray(labels)).double()[None, None]
    m = F.interpolate(m, size=(size, size), mode="nearest")[0, 0].to(torch.int32).numpy()
    return img, m


def targets_from_labels(labels: np.ndarray, min_area: int = 12) -> dict:
    """Mask R-CNN target of a label image: ``boxes`` (N, 4) xyxy, ``labels`` (N,), ``masks`` (N, H, W)."""
    objs = ndi.find_objects(labels)
    boxes, masks = [], []
    for i, sl in enumerate(objs, start=1):
        if sl is None:
            continue
        m = labels[sl] == i
        if m.sum() < min_area:
            continue
        full = np.zeros(labels.shape, np.uint8)
        full[sl][m] = 1
        boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
        masks.append(full)
    h, w = labels.shape
    return {
        "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        "labels": torch.ones(len(boxes), dtype=torch.int64),
        "masks": torch.from_numpy(np.stack(masks)) if masks else torch.zeros((0, h, w), dtype=torch.uint8),
    }


def random_sample(tile: InstanceTile, size: int, rng: np.random.Generator, model_mpp: float | None = None,
                  scale_jitter: float = 0.15, cfg: AugmentConfig | None = None):
    """One augmented ``(image tensor (3, size, size) in [0, 1], target dict)``."""
    cfg = cfg or AugmentConfig()
    base = (tile.mpp / model_mpp) if (tile.mpp and model_mpp) else 1.0
    s = base * rng.uniform(1 - scale_jitter, 1 + scale_jitter)   # output px per input px
    h, w = tile.labels.shape
    side = int(max(16, min(round(size / s), h, w)))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    img, lab = _resize_pair(tile.image[y:y + side, x:x + side], tile.labels[y:y + side, x:x + side], size)
    img, lab = geometric(img, lab, rng, cfg)
    if cfg.hed_sigma > 0 and rng.random() < cfg.hed_prob:
        img = hed_perturb(img, rng, cfg.hed_sigma, cfg.hed_bias)
    img = intensity(img, rng, cfg)
    x_t = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).float() / 255.0
    return x_t, targets_from_labels(np.ascontiguousarray(lab))
