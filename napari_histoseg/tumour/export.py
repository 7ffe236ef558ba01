"""Export an image and its corrected mask as tiles of a training-data folder.

The folder follows ``docs/ARCHITECTURE.md`` (read back by :mod:`napari_histoseg.io.dataset`)::

    DATASET/dataset.json, images/ID.png, masks/ID.png, edits/ID.png (optional)

Every tile carries its provenance in ``dataset.json``: the source file and its sha256,
its position (``x``, ``y``, ``width``, ``height`` in pixels of pyramid ``level``), the
``level`` and ``mpp``, the model that made the first mask, the time (ISO 8601, UTC) and
the annotator. A tile's id is derived from the source hash, the level and the position,
so exporting the same tile again *replaces* it and exporting other tiles *adds* them.

The commit is atomic at every instant: a file that ``dataset.json`` names is never changed.
New pixels go to new files (written under a temporary name, then renamed to a name no record
uses: ``images/ID.png``, or ``images/ID-<8 hex>.png`` when a record still names that one; a
re-exported tile whose pixels did not change keeps its file). Only when all are in place is
``dataset.json`` (staged beside it and flushed with fsync) renamed over the old one: that one
``os.replace`` is the commit. After it, the files that only the old records named are removed.
A kill at any moment leaves either the old ``dataset.json`` with all its old files, or the new
one with all its new files; files of an interrupted export that no record names are removed by
the next export. An exception or a full disk removes what the export wrote.

Example
-------
>>> export_tiles(rgb, mask, "DATASET", source="slide.svs", mpp=0.5,
...              model={"name": "bundled", "version": "1"}, annotator="A. Path")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from napari_histoseg.core.hashing import array_sha256, file_sha256
from napari_histoseg.io.checks import InputError, inside
from napari_histoseg.io.dataset import FORMAT, FORMAT_VERSION, DatasetError, load_dataset

__all__ = ["export_tiles", "ExportError"]

DEFAULT_CLASSES = {"0": "not tumour", "1": "tumour"}
_TMP_MARK = ".histoseg-tmp-"


class ExportError(DatasetError):
    """The export cannot go ahead (the folder is not a histoseg dataset, bad input)."""


def _write_png(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as PNG (the one writer, so tests can inject a failure here)."""
    from skimage.io import imsave

    imsave(str(path), array, check_contrast=False)


def _model_record(model):
    if model is None or isinstance(model, str):
        return model
    if isinstance(model, dict):
        return dict(model)
    meta = getattr(model, "meta", None)
    if meta is not None:  # a loaded Segmenter
        return {"name": getattr(meta, "name", None), "version": str(getattr(meta, "model_version", ""))}
    return str(model)


def _read_existing(out: Path):
    """``(meta dict or None)`` of ``out``; refuses a folder that is not a histoseg dataset."""
    if not out.exists():
        return None
    if not out.is_dir():
        raise ExportError(f"{out} exists and is not a folder")
    if not (out / "dataset.json").is_file():
        if not _is_blank(out):
            raise ExportError(
                f"{out} is not empty and has no dataset.json: it is not a histoseg training-data "
                "folder, and export will not write into it; choose a new or empty folder"
            )
        return None
    try:
        raw = json.loads((out / "dataset.json").read_text())
    except (OSError, ValueError) as e:
        raise ExportError(f"{out / 'dataset.json'} cannot be read ({e}); export will not replace it") from None
    if (isinstance(raw, dict) and raw.get("format") == FORMAT and raw.get("tiles") == []
            and raw.get("task", "semantic") == "semantic" and int(raw.get("version", 1)) <= FORMAT_VERSION):
        return raw  # a dataset without tiles yet (the reader refuses those)
    try:  # the reader validates format, version, task and the tile records
        load_dataset(out, check_files=False, check_masks=False)
    except DatasetError as e:
        raise ExportError(f"{out} is not a histoseg training-data folder export can extend: {e}") from None
    return raw


def _is_blank(out: Path) -> bool:
    """True for a folder holding nothing but hidden files and empty tile folders
    (what an interrupted first export leaves)."""
    for p in out.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_dir() and p.name in ("images", "masks", "edits") and not any(
                q for q in p.iterdir() if not q.name.startswith(".")):
            continue
        return False
    return True


def _tmp_name(target: Path) -> Path:
    # keeps the extension last so the PNG writer knows the format
    return target.with_name(f".{target.stem}{_TMP_MARK}{uuid.uuid4().hex[:8]}{target.suffix}")


_OWN_NAME = re.compile(r"^[0-9a-f]{16}_L\d+_x-?\d+_y-?\d+(-[0-9a-f]{8})?\.png$")  # files export names
_FILE_KEYS = ("image", "mask", "edits")


def _referenced(tiles) -> set[str]:
    return {str(t[k]) for t in tiles for k in _FILE_KEYS if isinstance(t.get(k), str)}


def _clean_stale(out: Path, tiles) -> None:
    """Remove temporary files and tile files of an interrupted export (export's own names that
    no record of ``dataset.json`` names); nothing else is touched."""
    keep = _referenced(tiles)
    for sub in ("images", "masks", "edits", "."):
        d = out / sub
        if d.is_dir():
            for p in d.glob(f".*{_TMP_MARK}*"):
                p.unlink(missing_ok=True)
            if sub != ".":
                for p in d.iterdir():
                    if _OWN_NAME.match(p.name) and f"{sub}/{p.name}" not in keep:
                        p.unlink(missing_ok=True)


def _free_name(out: Path, rel: str, taken: set[str]) -> str:
    """``rel`` if no record names it and no file is there, else ``rel`` with a fresh suffix."""
    if rel not in taken and not (out / rel).exists():
        return rel
    head, _, name = rel.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    return f"{head}/{stem}-{uuid.uuid4().hex[:8]}{dot}{ext}"


def _same_bytes(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_size == b.stat().st_size and a.read_bytes() == b.read_bytes()
    except OSError:
        return False


def _stage_json(path: Path, meta: dict) -> Path:
    """Write ``meta`` to a temporary file beside ``path`` (flushed to disk); its name."""
    tmp = _tmp_name(path)
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(meta, indent=1, allow_nan=False))
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def export_tiles(image, mask, out_dir, *, tile: int = 512, only_edited: bool = False, edits=None,
                 source=None, level: int = 0, mpp=None, model=None, annotator=None, x0: int = 0,
                 y0: int = 0, min_tissue: float = 0.0, split=None, classes=None,
                 ignore_index: int = 255) -> list[dict]:
    """Cut ``image`` and ``mask`` into tiles and add them to a training-data folder.

    Parameters
    ----------
    image : (H, W, 3) or (H, W, 4) uint8 array-like
        The image (a numpy, zarr or dask array: tiles are read one at a time).
    mask : (H, W) array-like
        The corrected mask: class codes of ``classes`` (0 not tumour, 1 tumour) and
        ``ignore_index`` for unknown pixels. A boolean mask is read as 0/1.
    out_dir : path
        The dataset folder, created if missing. An existing one must be a histoseg
        semantic dataset (or an empty folder).
    tile : int
        Tile edge in pixels. Edge tiles are smaller where the image ends.
    only_edited : bool
        Export only the tiles where ``edits`` has a non-zero pixel.
    edits : (H, W) array-like, optional
        Non-zero where a person changed the model's answer; written as
        ``edits/ID.png`` (uint8 0/1) for each tile.
    source : path, optional
        The file the image was read from; its sha256 goes into the provenance and the
        tile ids. Without it the ids hash the image pixels instead.
    level : int
        Pyramid level the image was read at.
    mpp : float, optional
        Microns per pixel of ``image``.
    model : str, dict or model object, optional
        The model that made the first mask: a name, ``{"name", "version"}``, or a
        loaded model (its ``meta.name`` and ``meta.model_version`` are recorded).
    annotator : str, optional
        Who corrected the mask.
    x0, y0 : int
        Position of ``image[0, 0]`` in the level (when ``image`` is a region).
    min_tissue : float
        Skip tiles whose tissue fraction (:func:`napari_histoseg.colour.stain.tissue_mask`)
        is below this; 0 (the default) keeps all. Tiles whose mask is all
        ``ignore_index`` are always skipped (they teach nothing).
    split : {"train", "val", "test"}, optional
        Split to record for the new tiles; a replaced tile keeps its earlier split
        when this is None.
    classes : dict, optional
        Class codes to names for a new folder (default 0 not tumour, 1 tumour).
    ignore_index : int
        Mask code of unknown pixels.

    Returns
    -------
    records : list of dict
        The tile records written to ``dataset.json``, each with an extra key
        ``"replaced"`` (True where a tile of the same id existed before).

    Raises
    ------
    ExportError
        When ``out_dir`` is not a histoseg dataset, shapes disagree, or the mask holds
        codes the dataset does not declare.

    Notes
    -----
    A tile's id is ``{sha256[:16]}_L{level}_x{x}_y{y}``: the tile size is not part of
    it, so re-exporting at the same position with another ``tile`` replaces the tile,
    while tiles of different sizes at different positions may overlap.
    """
    out = Path(out_dir)
    if np.shape(mask)[:2] != np.shape(image)[:2]:
        raise ExportError(f"mask is {np.shape(mask)[:2]} but image is {np.shape(image)[:2]}")
    if edits is not None and np.shape(edits)[:2] != np.shape(image)[:2]:
        raise ExportError(f"edits are {np.shape(edits)[:2]} but image is {np.shape(image)[:2]}")
    if only_edited and edits is None:
        raise ExportError("only_edited needs the edits (where a person changed the mask)")
    if split not in (None, "train", "val", "test"):
        raise ExportError(f"split {split!r} is not train, val or test")
    meta = _read_existing(out)
    if meta is None:
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "classes": dict(classes or DEFAULT_CLASSES),
                "ignore_index": int(ignore_index), "tiles": []}
    meta.setdefault("classes", dict(DEFAULT_CLASSES))
    ignore = int(meta.get("ignore_index", 255))
    allowed = {int(k) for k in meta["classes"]} | {ignore}

    if source is not None:
        src_name, src_hash = str(Path(source).resolve()), file_sha256(source)
    else:
        src_name, src_hash = None, array_sha256(image)
    created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    model_rec = _model_record(model)
    h, w = np.shape(image)[:2]

    old = {t["id"]: t for t in meta["tiles"]}
    taken = _referenced(meta["tiles"])
    records, staged, placed = [], [], []  # staged: (tmp, final) pairs; placed: finals renamed in
    _clean_stale(out, meta["tiles"])
    try:
        for y in range(0, h, tile):
            for x in range(0, w, tile):
                ys, xs = slice(y, min(y + tile, h)), slice(x, min(x + tile, w))
                m = np.asarray(mask[ys, xs])
                m = m.astype(np.uint8) if m.dtype == bool else m
                e = None if edits is None else (np.asarray(edits[ys, xs]) != 0)
                if only_edited and not e.any():
                    continue
                if (m == ignore).all():
                    continue
                img = np.asarray(image[ys, xs])
                if img.ndim == 2:
                    img = np.stack([img] * 3, axis=-1)
                img = img[..., :3]
                if img.dtype != np.uint8:
                    raise ExportError(f"image must be uint8 RGB, got {img.dtype}")
                if min_tissue > 0:
                    from napari_histoseg.colour.stain import tissue_mask

                    if tissue_mask(img).mean() < min_tissue:
                        continue
                bad = sorted(set(np.unique(m).tolist()) - allowed)
                if bad:
                    raise ExportError(f"mask holds codes {bad[:10]} that the dataset does not declare "
                                      f"(classes {sorted(allowed - {ignore})}, ignore {ignore})")
                gx, gy = x0 + x, y0 + y
                tid = f"{src_hash[:16]}_L{level}_x{gx}_y{gy}"
                prev = old.get(tid, {})
                rec = {"id": tid}
                files = [("image", img), ("mask", m.astype(np.uint8))]
                if e is not None:
                    files.append(("edits", e.astype(np.uint8)))
                for key, arr in files:
                    rel = f"{'edits' if key == 'edits' else key + 's'}/{tid}.png"
                    final = out / rel
                    final.parent.mkdir(parents=True, exist_ok=True)
                    tmp = _tmp_name(final)
                    staged.append((tmp, None))
                    _write_png(tmp, arr)
                    was = prev.get(key)
                    if isinstance(was, str) and _same_bytes(tmp, out / was):
                        tmp.unlink(missing_ok=True)   # unchanged pixels: the file stays as it is
                        staged.pop()
                        rec[key] = was
                        continue
                    rel = _free_name(out, rel, taken)
                    taken.add(rel)
                    staged[-1] = (tmp, out / rel)
                    rec[key] = rel
                if split is not None or "split" in prev:
                    rec["split"] = split if split is not None else prev["split"]
                rec.update({"group": prev.get("group", src_hash[:16]), "source": src_name,
                            "source_sha256": src_hash if source is not None else None,
                            "x": gx, "y": gy, "width": int(img.shape[1]), "height": int(img.shape[0]),
                            "level": int(level), "mpp": None if mpp is None else float(mpp),
                            "model": model_rec, "created": created, "annotator": annotator})
                records.append(rec)
        if not records:
            _discard(staged)
            return []
        new_ids = {r["id"] for r in records}
        meta["tiles"] = [t for t in meta["tiles"] if t["id"] not in new_ids] + records
        # everything that needs disk space is written before anything is renamed
        json_tmp = _stage_json(out / "dataset.json", meta)
        staged.append((json_tmp, None))
        for tmp, final in staged[:-1]:  # new files to names no record uses: the old dataset is untouched
            os.replace(tmp, final)
            placed.append(final)
        os.replace(json_tmp, out / "dataset.json")   # the commit
    except BaseException:
        _discard(staged, placed)
        raise
    keep = _referenced(meta["tiles"])
    for r in records:   # files only the replaced records named (old pixels, edits that no longer apply)
        for key in _FILE_KEYS:
            was = old.get(r["id"], {}).get(key)
            if isinstance(was, str) and was not in keep:
                try:
                    inside(out, was).unlink(missing_ok=True)
                except (InputError, OSError):
                    pass   # left for the next export's clean-up; the dataset is already consistent
    return [dict(r, replaced=r["id"] in old) for r in records]


def _discard(staged, placed=()) -> None:
    """Remove what an export that did not commit wrote (nothing that a record names)."""
    for path in [tmp for tmp, _ in staged] + list(placed):
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
