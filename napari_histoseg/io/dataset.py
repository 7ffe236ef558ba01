"""Read, validate and split a training-data folder (the layout of ``docs/ARCHITECTURE.md``).

::

    DATASET/
      dataset.json   {"format": "histoseg-dataset", "version": 1, "classes": {...},
                      "ignore_index": 255, "tiles": [{"id", "image", "mask", "split"?,
                      "group"?, ...}]}
      images/ID.png  RGB uint8
      masks/ID.png   uint8 class codes (the codes of ``classes`` plus ``ignore_index``)

:func:`load_dataset` checks the folder and raises :class:`DatasetError` with a message
that names the tile and the problem (a missing file, a mask whose size differs from its
image, class codes that ``dataset.json`` does not declare). :func:`split_tiles` honours
each tile's ``split`` and otherwise splits by ``group`` with a seeded shuffle, so tiles
of one slide or patient never land on both sides.

Example
-------
>>> ds = load_dataset("../shared/data/camelyon")            # doctest: +SKIP
>>> train = ds.subset("train"); test = ds.subset("test")    # doctest: +SKIP
>>> image, mask = train.load(0)                             # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from napari_histoseg.io.checks import InputError, check_type, inside
from napari_histoseg.io.checks import field as json_field

FORMAT = "histoseg-dataset"
FORMAT_VERSION = 1


class DatasetError(ValueError):
    """A training-data folder that cannot be used; the message says which tile and why."""


#: Tile fields that name files; each must be a relative path that stays inside the folder.
PATH_FIELDS = ("image", "mask", "edits", "instances", "ignore")


def read_dataset_json(root, task: str, need: str = "") -> dict:
    """``root/dataset.json``, checked for format, version and ``task`` ("semantic" when
    absent, "instances" or "classification"); :class:`DatasetError` says what is wrong,
    ``need`` what the caller wanted instead.

    The fields every task shares are checked against the documented schema (messages name
    the field: ``tiles[3].image must be a string; got null``), and every file a tile names
    (:data:`PATH_FIELDS`) must be a relative path that stays inside ``root``: absolute paths,
    ``..`` and links that lead elsewhere are refused, so a dataset never reads files outside
    its folder."""
    path = Path(root) / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{root}: no dataset.json; is this a histoseg training-data folder?")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DatasetError(f"{path}: not readable JSON ({e})") from None
    where = f"{path}:"
    if not isinstance(meta, dict):
        raise DatasetError(f"{path} must hold a JSON object; got "
                           f"{'null' if meta is None else 'a list' if isinstance(meta, list) else repr(meta)[:40]}")
    fmt = json_field(meta, "format", str, where, default=None, error=DatasetError)
    if fmt != FORMAT:
        raise DatasetError(f"{path}: format is {fmt!r}, expected {FORMAT!r}")
    version = json_field(meta, "version", int, where, default=1, error=DatasetError)
    if version > FORMAT_VERSION:
        raise DatasetError(f"{path}: version {version} is newer than this reader")
    found = json_field(meta, "task", str, where, default="semantic", error=DatasetError)
    if found != task:
        raise DatasetError(f"{path}: task {found!r}, not {task!r}" + (f"; {need}" if need else ""))
    _check_schema(meta, Path(root), where)
    return meta


def _check_schema(meta: dict, root: Path, where: str) -> None:
    classes = json_field(meta, "classes", dict, where, default={}, error=DatasetError)
    for k, v in classes.items():
        check_type(v, str, f"{where} classes[{k!r}]", error=DatasetError)
    if "ignore_index" in meta:
        ignore = json_field(meta, "ignore_index", int, where, error=DatasetError)
        if not 0 <= ignore <= 255:
            raise DatasetError(f"{where} ignore_index must be a mask code 0..255; got {ignore}")
    json_field(meta, "name", str, where, default="", error=DatasetError)
    tiles = json_field(meta, "tiles", list, where, default=[], error=DatasetError)
    for n, t in enumerate(tiles):
        at = f"{where} tiles[{n}]"
        if not isinstance(t, dict):
            raise DatasetError(f"{at} must be an object; got {type(t).__name__}")
        json_field(t, "id", (str, int), at, error=DatasetError)
        json_field(t, "split", (str, type(None)), at, default=None, error=DatasetError)
        json_field(t, "group", (str, int, type(None)), at, default=None, error=DatasetError)
        for key in PATH_FIELDS:
            if key in t and not (key in ("edits", "ignore") and t[key] is None):
                rel = json_field(t, key, str, at, error=DatasetError)
                try:
                    inside(root, rel, f"{at}.{key}")
                except InputError as e:
                    raise DatasetError(str(e)) from None


def _read(path: Path, what: str) -> np.ndarray:
    """Pixels of a tile file, the header checked against the pixel budget first."""
    from napari_histoseg.io.bounded import read_plane
    from napari_histoseg.io.validate import ImageFormatError

    try:
        return read_plane(path, what)
    except (InputError, ImageFormatError) as e:
        raise DatasetError(str(e)) from None


def read_rgb(path: Path) -> np.ndarray:
    img = _read(Path(path), "image")
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[-1] not in (3, 4):
        raise DatasetError(f"{path}: expected an RGB image, got shape {img.shape}")
    img = img[..., :3]
    if img.dtype != np.uint8:
        raise DatasetError(f"{path}: expected uint8 RGB, got {img.dtype}")
    return np.ascontiguousarray(img)


def read_mask_png(path: Path) -> np.ndarray:
    m = _read(Path(path), "mask")
    if m.ndim == 3:  # a grey mask saved as RGB(A): all channels must agree
        if not (m[..., :3] == m[..., :1]).all():
            raise DatasetError(f"{path}: mask is a colour image; masks hold one class code per pixel")
        m = m[..., 0]
    if m.dtype != np.uint8:
        if m.min() < 0 or m.max() > 255:
            raise DatasetError(f"{path}: mask values outside 0..255 ({m.dtype})")
        m = m.astype(np.uint8)
    return m


@dataclass
class Dataset:
    """A validated training-data folder, or a subset of one.

    Attributes
    ----------
    root : Path
        The folder.
    classes : dict
        ``{"0": "not tumour", "1": "tumour"}`` as in ``dataset.json``.
    ignore_index : int
        Mask code of pixels that count for nothing (255).
    tiles : list of dict
        The tile records of ``dataset.json`` (only those of this subset), each with an
        added ``"_split"`` key (``"train"``, ``"val"`` or ``"test"``) once split.
    """

    root: Path
    classes: dict
    ignore_index: int = 255
    tiles: list = field(default_factory=list)
    name: str = ""

    def __len__(self) -> int:
        return len(self.tiles)

    @property
    def class_codes(self) -> set[int]:
        return {int(k) for k in self.classes}

    def path(self, i: int, key: str = "image") -> Path:
        """The file ``key`` of tile ``i``, resolved and refused unless it is inside the folder."""
        try:
            return inside(self.root, self.tiles[i][key], f"tile {self.tiles[i].get('id')!r} {key}")
        except InputError as e:
            raise DatasetError(str(e)) from None

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """``(image uint8 (H, W, 3), mask uint8 (H, W))`` of tile ``i``."""
        return read_rgb(self.path(i, "image")), read_mask_png(self.path(i, "mask"))

    def load_all(self) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """All images and masks of this subset, in memory."""
        pairs = [self.load(i) for i in range(len(self))]
        return [p[0] for p in pairs], [p[1] for p in pairs]

    def subset(self, split: str) -> "Dataset":
        """The tiles whose (assigned) split is ``split``."""
        tiles = [t for t in self.tiles if t.get("_split", t.get("split")) == split]
        return Dataset(self.root, self.classes, self.ignore_index, tiles, self.name)

    def ids(self) -> list[str]:
        return [t["id"] for t in self.tiles]


def load_dataset(root: str | Path, check_files: bool = True, check_masks: bool = True) -> Dataset:
    """Read and validate ``root/dataset.json`` and the files it names.

    Parameters
    ----------
    root : path
        The dataset folder.
    check_files : bool
        Check that every image and mask file exists.
    check_masks : bool
        Also read every image and mask and check sizes and class codes (reads all
        pixels once; tens of 512² tiles take about a second).

    Raises
    ------
    DatasetError
        For a missing or malformed ``dataset.json``, a task other than semantic
        segmentation, a missing file, a mask of another size than its image, or mask
        codes outside the declared classes and ``ignore_index``.
    """
    root = Path(root)
    meta_path = root / "dataset.json"
    meta = read_dataset_json(root, "semantic", "training and evaluation of tumour masks read semantic masks")
    classes = meta.get("classes") or {"0": "not tumour", "1": "tumour"}
    for k in ("image", "mask"):
        for n, t in enumerate(meta.get("tiles") or []):
            if k not in t:
                raise DatasetError(f"{meta_path}: tile #{n} has no {k!r}")
    try:
        codes = {int(k) for k in classes}
    except ValueError:
        raise DatasetError(f"{meta_path}: class keys must be integer codes, got {list(classes)}") from None
    ignore = int(meta.get("ignore_index", 255))
    tiles = meta.get("tiles")
    if not isinstance(tiles, list) or not tiles:
        raise DatasetError(f"{meta_path}: no tiles listed; a training-data folder needs at least one "
                           "tile (export an image and its corrected mask into it)")
    seen = set()
    for n, t in enumerate(tiles):
        for key in ("id", "image", "mask"):
            if key not in t:
                raise DatasetError(f"{meta_path}: tile #{n} has no {key!r}")
        if t["id"] in seen:
            raise DatasetError(f"{meta_path}: tile id {t['id']!r} appears twice")
        seen.add(t["id"])
        if t.get("split") not in (None, "train", "val", "test"):
            raise DatasetError(f"tile {t['id']!r}: split {t['split']!r} is not train, val or test")
    ds = Dataset(root, classes, ignore, [dict(t) for t in tiles], meta.get("name", root.name))
    if check_files or check_masks:
        for i, t in enumerate(ds.tiles):
            for key in ("image", "mask"):
                if not ds.path(i, key).is_file():
                    raise DatasetError(f"tile {t['id']!r}: {key} file {t[key]} is missing in {root}")
    if check_masks:
        allowed = codes | {ignore}
        for i, t in enumerate(ds.tiles):
            img, mask = ds.load(i)
            if mask.shape != img.shape[:2]:
                raise DatasetError(
                    f"tile {t['id']!r}: mask {t['mask']} is {mask.shape[1]}x{mask.shape[0]} px "
                    f"but image {t['image']} is {img.shape[1]}x{img.shape[0]} px"
                )
            bad = sorted(set(np.unique(mask).tolist()) - allowed)
            if bad:
                raise DatasetError(
                    f"tile {t['id']!r}: mask {t['mask']} holds class codes {bad[:10]} that "
                    f"dataset.json does not declare (classes {sorted(codes)}, "
                    f"ignore_index {ignore})"
                )
    return ds


def class_frequencies(masks: Iterable[np.ndarray], codes: Sequence[int], ignore_index: int = 255) -> dict:
    """Fraction of labelled pixels per class code over ``masks`` (ignore excluded)."""
    counts = {c: 0 for c in codes}
    total = 0
    for m in masks:
        valid = m != ignore_index
        total += int(valid.sum())
        for c in codes:
            counts[c] += int((m == c).sum())
    return {c: counts[c] / max(total, 1) for c in codes}

