"""Instance training data: the ``"task": "instances"`` layout of ``docs/ARCHITECTURE.md``.

::

    DATASET/dataset.json   {"task": "instances", "tiles": [{"id", "image", "instances",
                            "split"?, "organ"?, "mpp"?, ...}]}
    DATASET/images/ID.png        RGB uint8
    DATASET/instances/ID.png     uint16: 0 background, 1..N one nucleus each
    DATASET/ignore/ID.png        optional (the tile's ``ignore`` key): non-zero = unlabelled,
                                 neither trained on nor scored

:func:`load_instances` reads and checks one folder, :func:`load_many` several (and refuses
a slide that would sit on both sides of the split). A folder without a ``test`` split
(every tile ``train``, e.g. TNBC) gets a seeded held-out part (:func:`held_out_ids`), the
same one every time, so training never sees the tiles evaluation scores.

:func:`random_sample` cuts one augmented training patch and its Mask R-CNN target (boxes,
labels, masks): a window of random place, scaled log-uniformly around the ratio of the
tile's mpp to the model's (``scale``: wide enough for large tumour nuclei), a rotation by
k·90°, flips, then the colour augmentation of an
:class:`~napari_histoseg.training.augment.AugmentConfig` (:func:`augment_config`: ``"light"``,
HED jitter ± 5 % and brightness/contrast, what v1 trained with; ``"stain"``, another lab's
stain: HED jitter ± 30 % with moved stain vectors, sometimes Macenko-normalised, gamma,
saturation, a little blur and JPEG), all from :mod:`napari_histoseg.training.augment`. Labels are resized nearest-neighbour, so every
nucleus keeps its own id; nuclei cut to a sliver by the window's border are dropped.
Windows avoid ignore regions where they can; what is left of one is painted as glass (and
any nucleus touching it dropped), so the loss never calls an unlabelled nucleus background.
Tiles smaller than the window are padded with glass.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi
from skimage.io import imread

from napari_histoseg.io.dataset import DatasetError
from napari_histoseg.io.dataset import read_dataset_json as _read_dataset_json
from napari_histoseg.training.augment import AugmentConfig, augment_colour, geometric


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
    ignore: np.ndarray | None = None   # (H, W) bool: unlabelled, neither trained on nor scored
    group: str = ""
    source: str = ""                   # the folder's name


GLASS = 240          # grey level of the padding and of painted-out ignore regions
HELD_OUT_FRACTION = 1 / 3


def held_out_ids(info: dict, fraction: float = HELD_OUT_FRACTION, seed: int = 0) -> set[str]:
    """Tile ids held out as ``test`` of a folder that has no ``test`` split (empty otherwise).

    Whole groups are held out where there are at least three; otherwise (one patient or
    unknown) single tiles, ``ceil(fraction x n)`` of them, chosen by a seeded shuffle of the
    sorted ids, so the choice never changes. A folder of fewer than three tiles keeps them all."""
    tiles = info.get("tiles", [])
    if len(tiles) < 3 or any(t.get("split") == "test" for t in tiles):
        return set()
    rng = np.random.default_rng(seed)
    groups = sorted({t.get("group") or t["id"] for t in tiles})
    if len(groups) >= 3:
        pick = set(rng.permutation(groups)[:max(1, int(np.ceil(fraction * len(groups))))].tolist())
        return {t["id"] for t in tiles if (t.get("group") or t["id"]) in pick}
    ids = sorted(t["id"] for t in tiles)
    return set(rng.permutation(ids)[:max(1, int(np.ceil(fraction * len(ids))))].tolist())


def _split_of(t: dict, held: set[str]) -> str:
    return "test" if t["id"] in held else t.get("split", "")


def read_dataset_json(root) -> dict:
    return _read_dataset_json(root, "instances", "nuclei training and evaluation need an 'instances' "
                                                 "folder (instances/ID.png with one label per nucleus)")


def load_instances(root, split: str | None = None, ids=None) -> list[InstanceTile]:
    """Read the tiles of an instances folder (``split``: 'train', 'test', or None/'all')."""
    root = Path(root)
    info = read_dataset_json(root)
    held = held_out_ids(info)
    tiles = []
    for t in info.get("tiles", []):
        if split not in (None, "all") and _split_of(t, held) != split:
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
        ignore = None
        if t.get("ignore"):
            ignore = np.asarray(imread(str(root / t["ignore"]))) > 0
            if ignore.ndim == 3:
                ignore = ignore.any(-1)
            if ignore.shape != lab.shape:
                raise InstanceDatasetError(
                    f"{root}: tile {t['id']}: ignore mask {ignore.shape} differs from image {img.shape[:2]}")
            if not ignore.any():
                ignore = None
        tiles.append(InstanceTile(t["id"], img, lab, t.get("mpp"), t.get("organ", ""),
                                  _split_of(t, held), t, ignore, t.get("group", ""), root.name))
    if not tiles:
        raise InstanceDatasetError(f"{root}: no tiles with split {split!r}")
    return tiles


def load_many(roots, split: str | None = None) -> list[InstanceTile]:
    """:func:`load_instances` of several folders, one list. Refuses a group (slide) that is in
    several folders and on both sides of the split (MoNuSAC shares slides with MoNuSeg)."""
    roots = [roots] if isinstance(roots, (str, Path)) else list(roots)
    if len(roots) > 1:
        sides: dict[str, dict] = {}
        for r in roots:
            info = read_dataset_json(r)
            held = held_out_ids(info)
            for t in info.get("tiles", []):
                if t.get("group"):
                    sides.setdefault(t["group"], {}).setdefault(str(r), set()).add(_split_of(t, held))
        both = sorted(g for g, by in sides.items()
                      if len(by) > 1 and {"train", "test"} <= set().union(*by.values()))
        if both:
            raise InstanceDatasetError(f"slide(s) {', '.join(both[:3])} are in several of these folders, on "
                                       "both sides of the split; move them to one side")
    out = []
    for r in roots:
        try:
            out += load_instances(r, split)
        except InstanceDatasetError:
            if len(roots) == 1:
                raise
    if not out:
        raise InstanceDatasetError(f"{', '.join(map(str, roots))}: no tiles with split {split!r}")
    return out


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


def _pad(a: np.ndarray, side: int, value) -> np.ndarray:
    h, w = a.shape[:2]
    if h >= side and w >= side:
        return a
    pad = [(0, max(0, side - h)), (0, max(0, side - w))] + [(0, 0)] * (a.ndim - 2)
    return np.pad(a, pad, constant_values=value)


AUGMENTATIONS = ("light", "stain")


def augment_config(name: str = "light") -> AugmentConfig:
    """The colour augmentation of nucleus training by name (see the module's docstring)."""
    if name == "light":
        return AugmentConfig()
    if name == "stain":
        # the tumour model's stain and scanner variation, with less blur: a nucleus's outline is the target
        return replace(AugmentConfig.heavy(), blur_prob=0.1, blur_sigma=(0.4, 1.0))
    raise ValueError(f"nucleus augmentation {name!r}: choose one of {', '.join(AUGMENTATIONS)}")


def random_sample(tile: InstanceTile, size: int, rng: np.random.Generator, model_mpp: float | None = None,
                  scale: tuple = (0.8, 1.25), cfg: AugmentConfig | None = None, tries: int = 8):
    """One augmented ``(image tensor (3, size, size) in [0, 1], target dict)``.

    ``scale``: the (min, max) of a log-uniform zoom around the tile's mpp / ``model_mpp``
    (above 1 nuclei grow). Of ``tries`` windows the one with least ignored area is taken."""
    cfg = cfg or AugmentConfig()
    base = (tile.mpp / model_mpp) if (tile.mpp and model_mpp) else 1.0
    s = base * float(np.exp(rng.uniform(np.log(scale[0]), np.log(scale[1]))))   # output px per input px
    image, labels, ignore = tile.image, tile.labels, tile.ignore
    side = int(max(16, round(size / s)))
    if min(labels.shape) < side:
        image, labels = _pad(image, side, GLASS), _pad(labels, side, 0)
        ignore = None if ignore is None else _pad(ignore, side, False)
    h, w = labels.shape
    best = None
    for _ in range(tries if ignore is not None else 1):
        y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
        bad = 0 if ignore is None else int(ignore[y:y + side, x:x + side].sum())
        if best is None or bad < best[0]:
            best = (bad, y, x)
        if bad == 0:
            break
    bad, y, x = best
    img = image[y:y + side, x:x + side]
    lab = labels[y:y + side, x:x + side]
    if bad:
        ign = ignore[y:y + side, x:x + side]
        img, lab = img.copy(), lab.copy()
        touched = np.unique(lab[ign])
        lab[np.isin(lab, touched[touched > 0])] = 0
        img[ign] = GLASS
    img, lab = _resize_pair(img, lab, size)
    img, lab = geometric(img, lab, rng, cfg)
    img = augment_colour(img, rng, cfg)
    x_t = torch.from_numpy(np.require(img, requirements=["C", "W"])).permute(2, 0, 1).float() / 255.0
    return x_t, targets_from_labels(np.ascontiguousarray(lab))
