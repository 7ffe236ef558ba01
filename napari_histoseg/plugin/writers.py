"""npe2 writer contributions: File > Save Selected Layers as QuPath GeoJSON, TIFF or OME-Zarr.

Each writer has npe2's single-layer signature ``write(path, data, meta) -> [path]`` and
imports no napari: ``meta`` is the layer's state (``scale``, ``translate``, ``metadata``,
``name``, for Shapes ``shape_type``).

Where a layer lies on the slide: a layer pixel is ``scale / mpp`` full-resolution slide
pixels when the layer's metadata holds the slide's ``mpp`` (as the reader's layers and the
widgets' results do), else one slide pixel; ``translate`` is converted the same way, so
GeoJSON coordinates are full-resolution slide pixels as QuPath expects.

Nuclei (a Labels layer of many labels, or one whose ``features`` table is the nucleus
detector's) are written as QuPath's own cell detection writes them
(:func:`napari_histoseg.core.geojson.nuclei_to_geojson`): ``detection`` objects classified
``Nucleus`` with ``Nucleus: Area µm^2``, ``Nucleus: Perimeter µm``, ``Nucleus: Circularity`` and
the table's eccentricity, solidity, haematoxylin OD and detection probability under QuPath's
names. A nucleus painted over since the table was made (its area no longer that of its
row) keeps only the measurements of its outline, so no number describes a shape that is gone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

__all__ = ["write_labels_geojson", "write_detections_geojson", "write_shapes_geojson", "write_labels_tiff",
           "write_labels_omezarr", "placement"]

# A Labels layer with more distinct values than this is written as one detection per label
# (nuclei), otherwise as annotations per class code.
MAX_CLASS_CODES = 16
_UNKNOWN = 255


def placement(meta: dict) -> tuple[float, tuple[float, float], float | None]:
    """``(factor, offset, mpp)``: slide px per layer px, slide position (x, y) of the layer's
    top-left pixel corner, and µm per layer px (None when unknown)."""
    scale = [float(v) for v in (meta.get("scale") or (1.0, 1.0))][-2:]
    translate = [float(v) for v in (meta.get("translate") or (0.0, 0.0))][-2:]
    slide_mpp = (meta.get("metadata") or {}).get("mpp")
    if slide_mpp:
        factor = scale[-1] / float(slide_mpp)
        off = tuple(t / float(slide_mpp) - (factor - 1) / 2 for t in translate[::-1])
        return factor, off, scale[-1]
    return 1.0, tuple(t / s for t, s in zip(translate[::-1], scale[::-1])), None


def _level0(data) -> np.ndarray:
    if isinstance(data, (list, tuple)):
        data = data[0]
    a = np.asarray(data)
    if a.ndim != 2:
        raise ValueError(f"napari-histoseg writes 2-D layers; this one has shape {a.shape}")
    return a


def _provenance(meta: dict) -> dict:
    md = meta.get("metadata") or {}
    out = {"layer": meta.get("name")}
    for key in ("model", "annotator", "source", "path"):
        if md.get(key) not in (None, ""):
            out[key] = md[key]
    return out


def _write_json(path, fc) -> list[str]:
    from napari_histoseg.io.atomic import atomic_write_text

    return [str(atomic_write_text(Path(path), json.dumps(fc, allow_nan=False)))]


def write_labels_geojson(path: str, data, meta: dict) -> list[str]:
    """Labels -> QuPath GeoJSON: code 1 as ``Tumor`` annotations, other codes as ``Class k``
    (255, unknown, left out); nuclei (many labels, or a nucleus features table) as one
    detection per label with its measurements."""
    from napari_histoseg.core.geojson import mask_to_geojson

    labels = _level0(data)
    codes = [int(v) for v in np.unique(labels) if v not in (0, _UNKNOWN)]
    if len(codes) > MAX_CLASS_CODES or _nucleus_table(meta) is not None:
        return write_detections_geojson(path, labels, meta)
    factor, offset, mpp = placement(meta)
    feats = []
    for k in codes:
        name, color = ("Tumor", (200, 0, 0)) if k == 1 else (f"Class {k}", _colour(k))
        fc = mask_to_geojson(labels, label=k, classification=name, color=color, offset=offset, scale=factor,
                             mpp=mpp, min_region_px=0, provenance=_provenance(meta))
        feats += fc["features"]
    return _write_json(path, {"type": "FeatureCollection", "features": feats})


def write_detections_geojson(path: str, data, meta: dict) -> list[str]:
    """Labels -> QuPath GeoJSON detections, one per label value (nuclei), classified
    ``Nucleus``, with QuPath's nucleus measurements (those of the layer's features table
    where it still describes the label)."""
    from napari_histoseg.core.geojson import nuclei_to_geojson

    labels = _level0(data)
    factor, offset, mpp = placement(meta)
    table = _current_rows(_nucleus_table(meta), labels)
    fc = nuclei_to_geojson(labels, table, object_type="detection", offset=offset, scale=factor, mpp=mpp,
                           provenance=_provenance(meta))
    return _write_json(path, fc)


def _nucleus_table(meta: dict):
    """The layer's features as a DataFrame when they are per-nucleus measurements (a ``label``
    column and one of the nucleus detector's), else None."""
    import pandas as pd

    from napari_histoseg.core.geojson import QUPATH_NUCLEUS_COLUMNS

    table = meta.get("features")
    if table is None:
        return None
    try:
        table = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
    except (ValueError, TypeError):
        return None
    if "label" not in table.columns or not set(QUPATH_NUCLEUS_COLUMNS) & set(table.columns):
        return None
    return table


def _current_rows(table, labels: np.ndarray):
    """The rows of ``table`` whose area is still their label's pixel count (in the table's own
    unit, the ratio most rows share): a nucleus painted since loses its row, not its outline."""
    if table is None or not len(table):
        return table
    area = next((c for c in ("area_px2", "area_um2", "area") if c in table.columns), None)
    table = table[table["label"].astype(np.int64) > 0]
    if area is None:
        return table.iloc[:0]
    counts = np.bincount(labels.ravel().astype(np.int64, copy=False)) if labels.size else np.zeros(1, np.int64)
    lab = table["label"].to_numpy(np.int64)
    px = np.where(lab < len(counts), counts[np.minimum(lab, len(counts) - 1)], 0).astype(float)
    ratio = np.divide(table[area].to_numpy(float), px, out=np.full(len(px), np.nan), where=px > 0)
    ok = np.isfinite(ratio)
    if not ok.any():
        return table.iloc[:0]
    unit = float(np.median(ratio[ok]))
    return table[ok & (np.abs(ratio - unit) <= 1e-3 * unit)]


def _colour(k: int) -> tuple[int, int, int]:
    rng = np.random.default_rng(k)
    return tuple(int(v) for v in rng.integers(40, 230, 3))


def _ellipse(corners: np.ndarray, n: int = 64) -> np.ndarray:
    centre = corners.mean(axis=0)
    a, b = (corners[1] - corners[0]) / 2, (corners[3] - corners[0]) / 2
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)[:, None]
    return centre + np.cos(t) * a + np.sin(t) * b


def write_shapes_geojson(path: str, data, meta: dict) -> list[str]:
    """Shapes -> QuPath GeoJSON annotations: polygons, rectangles and ellipses as Polygons
    (ellipses marked ``isEllipse``), lines and paths as LineStrings; a ``class`` or
    ``classification`` feature column gives each shape its class."""
    from napari_histoseg.core.geojson import feature, json_number, provenance_metadata

    factor, offset, _ = placement(meta)
    types = meta.get("shape_type") or ["polygon"] * len(data)
    features = meta.get("features")
    names = None
    if features is not None:
        for col in ("classification", "class"):
            if col in features:
                names = list(features[col])
    md = provenance_metadata(_provenance(meta))
    feats = []
    for i, (shape, kind) in enumerate(zip(data, types)):
        rc = np.asarray(shape, float)[:, -2:]
        if kind == "ellipse":
            rc = _ellipse(rc)
        # napari puts a vertex at a pixel's centre; QuPath's origin is the top-left corner
        xy = np.stack([(rc[:, 1] + 0.5) * factor + offset[0], (rc[:, 0] + 0.5) * factor + offset[1]], axis=1)
        pts = [[json_number(x), json_number(y)] for x, y in xy]
        if kind in ("line", "path"):
            geom = {"type": "LineString", "coordinates": pts}
        else:
            geom = {"type": "Polygon", "coordinates": [pts + pts[:1]]}
            if kind == "ellipse":
                geom["isEllipse"] = True
        name = None if names is None else names[i]
        cls = None if name is None or not str(name).strip() or str(name) == "nan" else \
            {"name": str(name).strip(), "color": list(_colour(abs(hash(str(name))) % 1000))}
        feats.append(feature(geom, "annotation", cls, {}, md))
    return _write_json(path, {"type": "FeatureCollection", "features": feats})


def write_labels_tiff(path: str, data, meta: dict) -> list[str]:
    """Labels -> a tiled, zlib-compressed TIFF with its pixel size (µm, as resolution tags)."""
    import tifffile

    labels = _level0(data)
    labels = labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.uint32, copy=False)
    _, _, mpp = placement(meta)
    res = {} if not mpp else {"resolution": (1e4 / mpp, 1e4 / mpp), "resolutionunit": "CENTIMETER"}
    tile = (256, 256) if min(labels.shape) >= 256 else None
    from napari_histoseg.io.atomic import atomic_path

    with atomic_path(path) as tmp:   # whole or not at all
        tifffile.imwrite(tmp, labels, tile=tile, compression="zlib", metadata=None, **res)
    return [str(path)]


def write_labels_omezarr(path: str, data, meta: dict) -> list[str]:
    """Labels -> an OME-Zarr (NGFF 0.4) label pyramid with its µm scale."""
    from napari_histoseg.wsi.omezarr import write_labels

    factor, offset, mpp = placement(meta)
    write_labels(path, _level0(data), mpp=mpp, name=str(meta.get("name") or "labels"))
    return [str(path)]
