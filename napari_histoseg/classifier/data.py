"""Classification data: the ``"task": "classification"`` training-data folder.

::

    DATASET/
      dataset.json   {"format": "histoseg-dataset", "task": "classification",
                      "classes": {"0": "benign", "1": "malignant"},
                      "tiles": [{"id", "image", "label", "group", "split"?, "subtype"?,
                                 "magnification"?, "mpp"?}]}
      images/ID.jpg  RGB

:func:`load_classification` validates the folder (task, labels, files) and returns the
records. :func:`patient_split` holds out whole patients (``group``), stratified by label,
so no patient's images are ever on both sides of a split: images of one slide are
near-duplicates, and mixing them would measure recall of a slide, not generalisation.

Training patches (:func:`augmented_crop`) are random crops of the image at its native
scale with scale jitter, 90-degree rotations, flips, HED stain perturbation and
brightness/contrast (the project's :mod:`napari_histoseg.training.augment`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_histoseg.io.dataset import DatasetError, read_dataset_json, read_rgb


@dataclass
class Classified:
    """A classification folder (or a subset): ``records`` hold the tile dicts."""

    root: Path
    classes: dict
    records: list = field(default_factory=list)
    subtypes: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> np.ndarray:
        return np.array([int(r["label"]) for r in self.records], np.int64)

    @property
    def groups(self) -> list[str]:
        return [str(r.get("group", r["id"])) for r in self.records]

    def load(self, i: int) -> np.ndarray:
        return read_rgb(self.root / self.records[i]["image"])

    def subset(self, split: str) -> "Classified":
        """Records whose ``split`` is ``split`` (``"all"`` gives every record)."""
        recs = self.records if split == "all" else [r for r in self.records if r.get("split") == split]
        return Classified(self.root, self.classes, recs, self.subtypes)

    def only_groups(self, groups) -> "Classified":
        groups = set(groups)
        recs = [r for r in self.records if str(r.get("group", r["id"])) in groups]
        return Classified(self.root, self.classes, recs, self.subtypes)


def load_classification(root, check_files: bool = True) -> Classified:
    """Read and validate a classification folder; :class:`DatasetError` says what is wrong."""
    root = Path(root)
    path = root / "dataset.json"
    meta = read_dataset_json(root, "classification", "the classifier needs one 'label' per image")
    classes = {str(k): v for k, v in meta.get("classes", {}).items()}
    if len(classes) < 2:
        raise DatasetError(f"{path}: 'classes' must name at least two classes")
    records = meta.get("tiles", [])
    if not records:
        raise DatasetError(f"{path}: no tiles")
    for r in records:
        if "label" not in r or str(r["label"]) not in classes:
            raise DatasetError(f"{path}: tile {r.get('id')!r} has label {r.get('label')!r}, "
                               f"not one of {sorted(classes)}")
        if check_files and not (root / r["image"]).is_file():
            raise DatasetError(f"{path}: tile {r.get('id')!r}: image {r['image']} is missing")
    return Classified(root, classes, list(records), meta.get("subtypes", {}))


def patient_split(groups, labels, fraction: float = 0.2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks ``(train, held_out)`` that hold out whole groups (patients).

    Groups are shuffled with ``seed`` within each label (a group's label is its most
    common one) and ``round(fraction * n)`` of each label's groups, at least one where the
    label has two or more, are held out. A group is always entirely on one side.
    """
    groups = np.asarray([str(g) for g in groups])
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = set()
    uniq = sorted(set(groups))
    glabel = {g: int(np.bincount(labels[groups == g]).argmax()) for g in uniq}
    for lab in sorted(set(glabel.values())):
        gs = [g for g in uniq if glabel[g] == lab]
        rng.shuffle(gs)
        k = int(round(fraction * len(gs)))
        if len(gs) >= 2:
            k = min(max(k, 1), len(gs) - 1)
        else:
            k = 0
        held.update(gs[:k])
    out = np.array([g in held for g in groups])
    return ~out, out


def augmented_crop(image: np.ndarray, size: int, rng: np.random.Generator, cfg=None) -> np.ndarray:
    """One augmented ``size`` x ``size`` training patch of a uint8 RGB image."""
    from napari_histoseg.training.augment import AugmentConfig, random_patch

    cfg = cfg or AugmentConfig(hed_sigma=0.08, hed_bias=0.015, hed_prob=0.9)
    dummy = np.zeros(image.shape[:2], np.uint8)
    patch, _ = random_patch(image, dummy, size, rng, cfg)
    return patch
