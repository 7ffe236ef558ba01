"""What slide adaptation learns from: a person's corrected fields and a replay of the start
model's own training tiles.

A :class:`Correction` is one field a person reviewed: its image, the mask they accepted
(0 not tumour, 1 tumour, 255 unknown) and where they changed the model's answer (the edit
map; all False for a field accepted as the model drew it). They come from an Export folder
(:func:`corrections_from_dataset`: every tile, its ``edits/ID.png`` where there is one) or
from a mask with its edit map (:func:`corrections_from_mask`: the fields of a grid that hold an
edit).

The replay (:func:`replay_tiles`) is drawn from the training split the start model's
checkpoint names (``training.data``: each folder and the ids it held out for validation),
so adaptation keeps seeing what the model learnt from and forgets less.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from napari_histoseg.io.dataset import DatasetError, load_dataset, read_mask_png

__all__ = ["Correction", "corrections_from_dataset", "corrections_from_mask", "replay_tiles", "resolve_data_dir"]

REPO = Path(__file__).resolve().parents[2]


@dataclass
class Correction:
    """One reviewed field: ``image`` (H, W, 3) uint8, accepted ``mask`` (H, W) uint8 and
    ``edits`` (H, W) bool, True where the person changed the model's answer."""

    id: str
    image: np.ndarray
    mask: np.ndarray
    edits: Optional[np.ndarray] = None

    def __post_init__(self):
        self.image = np.asarray(self.image)
        self.mask = np.asarray(self.mask).astype(np.uint8)
        if self.image.ndim != 3 or self.image.shape[2] != 3 or self.image.dtype != np.uint8:
            raise ValueError(f"field {self.id}: the image must be RGB uint8 (H, W, 3), got "
                             f"{self.image.dtype} {self.image.shape}")
        if self.mask.shape != self.image.shape[:2]:
            raise ValueError(f"field {self.id}: mask {self.mask.shape} does not match image {self.image.shape[:2]}")
        bad = set(np.unique(self.mask).tolist()) - {0, 1, 255}
        if bad:
            raise ValueError(f"field {self.id}: mask codes must be 0, 1 or 255; found {sorted(bad)}")
        self.edits = (np.zeros(self.mask.shape, bool) if self.edits is None
                      else np.asarray(self.edits).astype(bool))
        if self.edits.shape != self.mask.shape:
            raise ValueError(f"field {self.id}: edit map {self.edits.shape} does not match mask {self.mask.shape}")

    @property
    def edited(self) -> int:
        """How many pixels the person changed."""
        return int(self.edits.sum())

    def record(self) -> dict:
        """Provenance of this field in an adapted checkpoint."""
        return {"id": self.id, "pixels": int(self.mask.size), "edited_pixels": self.edited,
                "tumour_pixels": int((self.mask == 1).sum())}


def corrections_from_dataset(root, split: Optional[str] = None) -> list[Correction]:
    """Every tile of an Export folder (``split``: only those) as a :class:`Correction`."""
    ds = load_dataset(root)
    tiles = [t for t in ds.tiles if split is None or t.get("split") == split]
    if not tiles:
        raise DatasetError(f"{root}: no tiles{f' in split {split!r}' if split else ''} to learn from")
    out = []
    for t in tiles:
        i = ds.tiles.index(t)
        image, mask = ds.load(i)
        edits = t.get("edits")
        edit_map = read_mask_png(ds.root / edits) > 0 if edits and (ds.root / edits).is_file() else None
        out.append(Correction(str(t["id"]), image, mask, edit_map))
    return out


def corrections_from_mask(image, mask, edits, size: int = 512, prefix: str = "field") -> list[Correction]:
    """The fields (a grid of ``size`` px from the top left) of ``mask`` that hold at least one
    edited pixel, as corrections; ids ``PREFIX-yY-xX``."""
    image, mask = np.asarray(image), np.asarray(mask)
    edits = np.asarray(edits).astype(bool)
    if edits.shape != mask.shape or mask.shape != image.shape[:2]:
        raise ValueError(f"image {image.shape[:2]}, mask {mask.shape} and edit map {edits.shape} must match")
    out = []
    for y in range(0, mask.shape[0], size):
        for x in range(0, mask.shape[1], size):
            sl = (slice(y, y + size), slice(x, x + size))
            if edits[sl].any():
                m = mask[sl]
                out.append(Correction(f"{prefix}-y{y}-x{x}", image[sl], np.where(m == 255, 255, m > 0), edits[sl]))
    return out


def resolve_data_dir(path) -> Optional[Path]:
    """A training folder named in a checkpoint, where it is on this computer (as given,
    or relative to the repository), or None."""
    p = Path(path)
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p, REPO / p]):
        if (cand / "dataset.json").is_file():
            return cand.resolve()
    return None


_LOADED: dict = {}
_DATASETS: dict = {}


def replay_tiles(meta, n: int = 8, seed: int = 0, dirs: Optional[Sequence] = None,
                 log=lambda *_: None) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``n`` tiles ``(id, image, mask)`` of the start model's training split (the folders of
    ``meta.training["data"]`` minus their validation ids; ``dirs`` instead where given), drawn
    evenly over the folders with a seeded choice; [] where none is on this computer."""
    entries = [] if dirs is not None else list((meta.training or {}).get("data") or [])
    folders = [(resolve_data_dir(d), set()) for d in dirs] if dirs is not None else [
        (resolve_data_dir(e.get("dataset", "")), set(e.get("val_ids") or [])) for e in entries]
    missing = [str(e.get("dataset")) for e, (f, _) in zip(entries, folders) if f is None]
    if missing:
        log(f"replay: {', '.join(missing)} not found on this computer")
    pools = []
    for folder, held in folders:
        if folder is None:
            continue
        if str(folder) not in _DATASETS:
            _DATASETS[str(folder)] = load_dataset(folder)
        ds = _DATASETS[str(folder)]
        pools.append((folder, ds, [i for i, t in enumerate(ds.tiles)
                                   if t.get("split", "train") == "train" and t["id"] not in held]))
    pools = [p for p in pools if p[2]]
    if not pools or n <= 0:
        return []
    rng = np.random.default_rng(seed)
    order = [list(rng.permutation(idx)) for _, _, idx in pools]
    picked, k = [], 0
    while len(picked) < n and any(order):
        j = k % len(pools)
        if order[j]:
            picked.append((j, int(order[j].pop(0))))
        k += 1
    out = []
    for j, i in picked:
        folder, ds, _ = pools[j]
        key = (str(folder), i)
        if key not in _LOADED:
            _LOADED[key] = ds.load(i)
        image, mask = _LOADED[key]
        out.append((f"{ds.name or folder.name}/{ds.tiles[i]['id']}", image, mask))
    return out
