"""Results of a whole-slide run as an OME-Zarr (NGFF 0.4, zarr format 2) pyramid.

Layout of ``SLIDE.ome.zarr/``::

    .zattrs              multiscales (the tumour probability image), histoseg run settings
    0/ 1/ ...            tumour probability, uint8 = round(255 p), one level per halving
    labels/tumour/0 ...  tumour mask, uint8 (0 not tumour, 1 tumour), NGFF image-label
    labels/tissue/0      tissue mask found on the slide's thumbnail (coarser pixels)
    histoseg-blocks/     one small JSON per finished block (a resumed run skips them)

Every level has one chunk per block of the run (the chunk edge halves with the level), so
a block task writes its own chunks at every level and no two tasks ever write one chunk:
processes need no locks, and a viewer sees the pyramid fill in block by block. Coordinates
are µm when the slide's mpp is known (pixel units otherwise), with the translation that
puts each pixel's centre where its level-0 pixels' centre is.

We write the NGFF metadata with zarr directly: it is a few small JSON dicts, and the
``ome-zarr`` package would add a dependency (and its own dask/fsspec pins) for them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import uuid
from pathlib import Path

import numpy as np

__all__ = ["create_store", "write_block", "mark_done", "finished_blocks", "read_result", "level_count", "write_labels"]

_BLOCKS = "histoseg-blocks"
_CREATING = ".histoseg-creating-"
_V2 = {"name": "v2", "separator": "/"}
TUMOUR_RGBA = [255, 64, 0, 255]
TISSUE_RGBA = [64, 160, 255, 255]


def level_count(shape, chunk: int, smallest: int = 256) -> int:
    """Levels to write: halve until the image fits in ``smallest`` px or the chunk would
    fall below 32 px."""
    n = 1
    while max(math.ceil(s / 2 ** n) for s in shape) * 2 >= smallest * 2 and (chunk >> n) >= 32:
        n += 1
    return n


def _transforms(k: int, mpp, translate) -> list:
    s = (mpp or 1.0) * 2 ** k
    t = [translate[i] + (2 ** k - 1) / 2 * (mpp or 1.0) for i in range(2)]
    return [{"type": "scale", "scale": [s, s]}, {"type": "translation", "translation": t}]


def _axes(mpp) -> list:
    unit = {"unit": "micrometer"} if mpp else {}
    return [{"name": "y", "type": "space", **unit}, {"name": "x", "type": "space", **unit}]


def _multiscales(name: str, levels: int, mpp, translate, downsample="mean") -> list:
    return [{
        "version": "0.4", "name": name, "axes": _axes(mpp), "type": downsample,
        "datasets": [{"path": str(k), "coordinateTransformations": _transforms(k, mpp, translate)}
                     for k in range(levels)],
    }]


def _pyramid(group, shape, chunk, levels):
    for k in range(levels):
        shp = tuple(math.ceil(s / 2 ** k) for s in shape)
        group.create_array(str(k), shape=shp, chunks=(chunk >> k, chunk >> k), dtype="uint8",
                           fill_value=0, chunk_key_encoding=_V2, overwrite=True)


def create_store(path, *, shape, chunk: int, mpp, translate=(0.0, 0.0), tissue=None,
                 tissue_scale=1.0, settings: dict, overwrite: bool = False):
    """Create (or reopen, to resume) the OME-Zarr for one slide.

    An existing store made with the same ``settings`` is reopened as it is, so the blocks
    already finished are kept; one made with other settings is refused unless
    ``overwrite`` (then it is deleted first).

    A new store is built under a temporary name beside ``path`` and renamed into place when it
    is complete, so a run killed while creating it leaves no half store: the same command
    starts again (and removes what the killed one left).

    Returns ``(group, resumed)``.
    """
    import zarr

    path = Path(path)
    for stale in path.parent.glob(f".{path.name}{_CREATING}*"):   # a creation that was killed
        shutil.rmtree(stale, ignore_errors=True)
    if path.exists():
        old = None
        try:
            old = dict(zarr.open_group(str(path), mode="r").attrs).get("histoseg", {}).get("settings")
        except Exception:  # noqa: BLE001 - not a store of ours: refuse below
            pass
        if old == settings and not overwrite:
            return zarr.open_group(str(path), mode="r+"), True
        if not overwrite:
            why = "with other settings" if old is not None else "and is not a histoseg result"
            raise ValueError(f"{path} already exists {why}; choose another output or overwrite it")
        shutil.rmtree(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    final, path = path, path.with_name(f".{path.name}{_CREATING}{uuid.uuid4().hex[:8]}")
    try:
        _build(path, shape=shape, chunk=chunk, mpp=mpp, translate=translate, tissue=tissue,
               tissue_scale=tissue_scale, settings=settings)
        os.rename(path, final)   # complete, or not there at all
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise
    return zarr.open_group(str(final), mode="r+"), False


def _build(path: Path, *, shape, chunk, mpp, translate, tissue, tissue_scale, settings) -> None:
    import zarr

    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    levels = level_count(shape, chunk)
    _pyramid(root, shape, chunk, levels)
    labels = root.create_group("labels")
    labels.attrs["labels"] = ["tumour", "tissue"]
    tum = labels.create_group("tumour")
    _pyramid(tum, shape, chunk, levels)
    tum.attrs.update({"multiscales": _multiscales("tumour", levels, mpp, translate, "nearest"),
                      "image-label": {"version": "0.4", "source": {"image": "../../"},
                                      "colors": [{"label-value": 1, "rgba": TUMOUR_RGBA}]}})
    tis = labels.create_group("tissue")
    if tissue is not None:
        t = np.asarray(tissue, np.uint8)
        tis.create_array("0", shape=t.shape, chunks=t.shape, dtype="uint8", fill_value=0,
                         chunk_key_encoding=_V2)[...] = t
        ts = (mpp or 1.0) * tissue_scale
        tt = [translate[i] + (tissue_scale - 1) / 2 * (mpp or 1.0) for i in range(2)]
        tis.attrs.update({
            "multiscales": [{"version": "0.4", "name": "tissue", "axes": _axes(mpp), "datasets": [
                {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [ts, ts]},
                                                            {"type": "translation", "translation": tt}]}]}],
            "image-label": {"version": "0.4", "source": {"image": "../../"},
                            "colors": [{"label-value": 1, "rgba": TISSUE_RGBA}]}})
    root.attrs.update({
        "multiscales": _multiscales("tumour probability", levels, mpp, translate),
        "omero": {"version": "0.4", "name": "tumour probability", "rdefs": {"model": "color"},
                  "channels": [{"label": "tumour probability (255 = 1.0)", "color": "FF4000", "active": True,
                                "window": {"start": 0, "end": 255, "min": 0, "max": 255}}]},
        "histoseg": {"settings": settings, "probability_scale": 1 / 255, "chunk": chunk},
    })
    (path / _BLOCKS).mkdir(exist_ok=True)


def _halve(a: np.ndarray, mean: bool) -> np.ndarray:
    if not mean:
        return a[::2, ::2]
    ph, pw = a.shape[0] % 2, a.shape[1] % 2
    if ph or pw:
        a = np.pad(a, ((0, ph), (0, pw)), mode="edge")
    h, w = a.shape
    m = a.reshape(h // 2, 2, w // 2, 2).mean(axis=(1, 3), dtype=np.float32)
    return np.rint(m).astype(np.uint8)


def write_block(root, y0: int, x0: int, prob_u8: np.ndarray, mask_u8: np.ndarray) -> None:
    """Write one block (its top-left at ``y0, x0`` on level 0) at every level."""
    tum = root["labels/tumour"]
    k = 0
    while str(k) in root:
        p, m = root[str(k)], tum[str(k)]
        yk, xk = y0 >> k, x0 >> k
        h, w = min(prob_u8.shape[0], p.shape[0] - yk), min(prob_u8.shape[1], p.shape[1] - xk)
        p[yk:yk + h, xk:xk + w] = prob_u8[:h, :w]
        m[yk:yk + h, xk:xk + w] = mask_u8[:h, :w]
        prob_u8, mask_u8 = _halve(prob_u8, True), _halve(mask_u8, False)
        k += 1


def mark_done(path, by: int, bx: int, stats: dict) -> None:
    """Record that block (by, bx) is written (atomically: a half-written marker never
    counts), with its statistics."""
    d = Path(path) / _BLOCKS
    d.mkdir(exist_ok=True)
    tmp = d / f".{by}_{bx}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(stats))
    tmp.replace(d / f"{by}_{bx}.json")


def finished_blocks(path) -> dict:
    """``{(by, bx): stats}`` of the blocks already written."""
    d = Path(path) / _BLOCKS
    out = {}
    if d.is_dir():
        for f in d.glob("*.json"):
            by, bx = (int(v) for v in f.stem.split("_"))
            try:
                out[(by, bx)] = json.loads(f.read_text())
            except (OSError, json.JSONDecodeError):
                continue
    return out


def read_result(path) -> dict:
    """Open a result for reading: lazy zarr levels and where they lie.

    Returns a dict with ``probability`` (list of uint8 levels, 255 = 1.0), ``tumour``
    (list of levels), ``tissue`` (one array or None), ``scale``, ``translate`` (level 0 of
    probability and tumour), ``tissue_scale``, ``tissue_translate``, ``units`` (``"µm"``
    or None) and ``attrs`` (the histoseg settings).
    """
    import zarr

    root = zarr.open_group(str(path), mode="r")
    attrs = dict(root.attrs)
    ms = attrs.get("multiscales")
    if not ms:
        raise ValueError(f"{path} is not an OME-Zarr image (no 'multiscales' in its attributes)")

    def levels_of(group, multiscales):
        ds = multiscales[0]["datasets"]
        tr = {t["type"]: t for t in ds[0]["coordinateTransformations"]}
        arrays = [group[d["path"]] for d in ds]
        return arrays, tuple(tr["scale"]["scale"]), tuple(tr.get("translation", {}).get("translation", (0, 0)))

    prob, scale, translate = levels_of(root, ms)
    out = {"probability": prob, "scale": scale, "translate": translate,
           "units": "µm" if ms[0]["axes"][0].get("unit") == "micrometer" else None,
           "attrs": attrs.get("histoseg", {}), "tumour": None, "tissue": None}
    if "labels/tumour" in root:
        out["tumour"] = levels_of(root["labels/tumour"], root["labels/tumour"].attrs["multiscales"])[0]
    if "labels/tissue/0" in root:
        t = root["labels/tissue"]
        arrays, ts, tt = levels_of(t, t.attrs["multiscales"])
        out.update(tissue=arrays[0], tissue_scale=ts, tissue_translate=tt)
    return out


def write_labels(path, labels, *, mpp=None, name: str = "labels", overwrite: bool = False) -> None:
    """Write a label image (a napari Labels layer) as an OME-Zarr (NGFF 0.4, zarr format 2).

    The root is a greyscale image of the label values (``omero`` window 0..max: readers
    that need an image, such as QuPath, open it) and ``labels/<name>`` the same pyramid as
    an NGFF image-label (nearest-neighbour levels), so napari-ome-zarr gives a Labels layer.
    µm axes with ``mpp``. An existing path is refused unless ``overwrite``. Written under a
    temporary name and renamed into place: never half a store.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ValueError(f"{path} already exists; choose another name")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}{_CREATING}{uuid.uuid4().hex[:8]}")
    try:
        _write_labels(tmp, labels, mpp=mpp, name=name)
        if path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_labels(path: Path, labels, *, mpp, name: str) -> None:
    import zarr

    labels = np.asarray(labels)
    dtype = np.uint8 if labels.max(initial=0) < 256 else np.uint32
    chunk = 512
    levels = level_count(labels.shape, chunk)
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    pyramid = [labels.astype(dtype, copy=False)]
    for _ in range(1, levels):
        pyramid.append(pyramid[-1][::2, ::2])
    for group in (root, root.create_group("labels").create_group(name)):
        for k, a in enumerate(pyramid):
            c = max(32, chunk >> k)
            group.create_array(str(k), shape=a.shape, chunks=(c, c), dtype=dtype, fill_value=0,
                               chunk_key_encoding=_V2)[...] = a
    top = int(labels.max(initial=0))
    root.attrs.update({
        "multiscales": _multiscales(name, levels, mpp, (0.0, 0.0), "nearest"),
        "omero": {"version": "0.4", "name": name, "rdefs": {"model": "greyscale"},
                  "channels": [{"label": name, "color": "FFFFFF", "active": True,
                                "window": {"start": 0, "end": max(top, 1), "min": 0, "max": max(top, 1)}}]},
        "histoseg-labels": {"name": name, "mpp": mpp},
    })
    root["labels"].attrs["labels"] = [name]
    root[f"labels/{name}"].attrs.update({
        "multiscales": _multiscales(name, levels, mpp, (0.0, 0.0), "nearest"),
        "image-label": {"version": "0.4", "source": {"image": "../../"},
                        "colors": [{"label-value": 1, "rgba": TUMOUR_RGBA}]},
    })
