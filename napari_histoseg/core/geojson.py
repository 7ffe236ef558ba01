"""Masks and nuclei to GeoJSON as QuPath writes and reads it.

QuPath's convention (``qupath-core``, ``ROITypeAdapters``): full-resolution slide pixel
coordinates as ``[x, y]``, origin at the top-left *corner* of the top-left pixel, y down,
so pixel ``(row r, column c)`` is the unit square ``[c, c + 1] x [r, r + 1]``. Holes are
inner rings of a Polygon; ellipses are Polygons marked ``isEllipse``; at most two
decimals. An annotation's ``properties`` hold ``objectType`` and a ``classification``
``{"name", "color": [r, g, b]}`` (QuPath rejects a file whose classification has a name
and no colour, so a colour is always written).

:func:`mask_to_geojson` traces each region along pixel edges
(:func:`napari_histoseg.core.polygons.trace_rings`: vertices on pixel corners, as QuPath's
own tracing), so a region's polygon area is its pixel count and the round trip is exact;
simplification is off unless a ``tolerance`` is given. Regions follow
:mod:`napari_histoseg.core.regions` (4-connected, specks under a minimum size left out and
reported by :func:`mask_to_geojson_report`), as in :func:`~napari_histoseg.tumour.quantify.quantify`.
Each Feature has ``objectType`` ``annotation``, a ``classification`` only when it has a name
(never an empty one: QuPath rejects the whole file), ``measurements`` as a map and
``metadata`` (strings: provenance). :func:`instances_to_geojson` writes nuclei (an
instance label image) as ``detection`` objects, one per instance; :func:`nuclei_to_geojson`
writes the nucleus detector's result as QuPath's own cell detection does: ``detection``
objects (or ``cell`` objects with a cell boundary in ``geometry`` and the nucleus in
``nucleusGeometry``) classified ``Nucleus``, with the measurements named as QuPath names them
(``Nucleus: Area µm^2``, ``Nucleus: Perimeter µm``, ``Nucleus: Circularity``, ...,
``Detection probability``), so they sort, colour and export in QuPath like its own.
Reading QuPath's files back into masks is :mod:`napari_histoseg.core.geojson_import`.

Example
-------
>>> fc = mask_to_geojson(mask, classification="Tumor", offset=(x0, y0), scale=4.0)  # doctest: +SKIP
>>> json.dump(fc, open("tumour.geojson", "w"))                                       # doctest: +SKIP
>>> from napari_histoseg.core.geojson_import import geojson_to_mask                  # doctest: +SKIP
>>> back = geojson_to_mask(fc, mask.shape, offset=(x0, y0), scale=4.0)               # doctest: +SKIP
"""

from __future__ import annotations

import math
import uuid

import numpy as np
from skimage import measure

from napari_histoseg.core.polygons import ring_area, trace_rings
from napari_histoseg.core.regions import clean_regions
from napari_histoseg.core.regions import min_region_px as _min_px

__all__ = ["mask_to_geojson", "mask_to_geojson_report", "instances_to_geojson", "nuclei_to_geojson",
           "nucleus_measurements", "write_nuclei_geojson", "feature", "provenance_metadata", "json_number"]


def json_number(v: float):
    v = round(float(v), 2)
    return int(v) if v.is_integer() else v


def _ring_xy(ring: np.ndarray, r0: int, c0: int, offset, scale, tolerance, outer: bool) -> list:
    """A closed ring of ``[x, y]`` slide pixels from a traced ring in bounding-box pixels."""
    xy = ring
    if tolerance > 0:  # lossy, only when asked: approximate_polygon works on (row, col)
        simple = measure.approximate_polygon(ring[:, ::-1], tolerance)[:, ::-1]
        if len(simple) >= 4:
            xy = simple
    xy = np.stack([(xy[:, 0] + c0) * scale + offset[0], (xy[:, 1] + r0) * scale + offset[1]], axis=1)
    # RFC 7946 orientation with y up: outer counter-clockwise, holes clockwise
    if (ring_area(xy) > 0) != outer:
        xy = xy[::-1]
    return [[json_number(x), json_number(y)] for x, y in xy]


def _region_polygons(region_mask: np.ndarray, r0: int, c0: int, offset, scale, tolerance) -> list:
    """Polygons (each: outer ring, then its holes) of the pixels of ``region_mask``."""
    polys = []
    lab = measure.label(region_mask, connectivity=1)
    for reg in measure.regionprops(lab):
        rings = trace_rings(reg.image)
        br, bc = r0 + reg.bbox[0], c0 + reg.bbox[1]
        outer = [r for r in rings if ring_area(r) > 0]
        holes = [r for r in rings if ring_area(r) < 0]
        polys.append([_ring_xy(outer[0], br, bc, offset, scale, tolerance, True)]
                     + [_ring_xy(h, br, bc, offset, scale, tolerance, False) for h in holes])
    return polys


def _classification(name, color) -> dict | None:
    if name is None or not str(name).strip():
        return None  # unclassified: no classification at all (an empty name makes QuPath reject the file)
    return {"name": str(name).strip(), "color": [int(v) for v in color[:3]]}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("napari-histoseg")
    except PackageNotFoundError:
        return "unknown"


def provenance_metadata(provenance: dict | None) -> dict:
    meta = {"software": "napari-histoseg", "version": _version()}
    for k, v in (provenance or {}).items():
        if v is not None and str(v) != "":
            meta[str(k)] = str(v)  # QuPath's object metadata holds strings
    return meta


def _measure(n_px: int, perimeter: float, scale: float, mpp) -> dict:
    out = {"Area px^2": json_number(n_px * scale * scale), "Perimeter px": json_number(perimeter * scale)}
    if mpp:
        out["Area µm^2"] = json_number(n_px * mpp * mpp)
        out["Perimeter µm"] = json_number(perimeter * mpp)
    return out


def _perimeter(polygons: list) -> float:
    total = 0.0
    for poly in polygons:
        for ring in poly:
            xy = np.asarray(ring, float)
            total += float(np.hypot(*np.diff(xy, axis=0).T).sum())
    return total


def mask_to_geojson(mask, *, classification: str | None = "Tumor", color=(200, 0, 0), offset=(0, 0),
                    scale: float = 1.0, label: int = 1, tolerance: float = 0.0,
                    one_feature: bool = False, mpp: float | None = None, min_region_um2: float | None = None,
                    min_region_px: int | None = None, provenance: dict | None = None) -> dict:
    """A QuPath-importable FeatureCollection of the regions where ``mask == label``.

    Parameters
    ----------
    mask : (H, W) array
        Class codes (or a boolean mask, read as 0/1).
    classification : str or None
        QuPath class name of the annotations (None or ``""``: unclassified, no
        ``classification`` written).
    color : (r, g, b)
        The class colour (QuPath needs one with every class name).
    offset : (x, y)
        Slide position of ``mask[0, 0]``'s top-left corner, in full-resolution pixels.
    scale : float
        Full-resolution pixels per mask pixel (a mask of pyramid level with
        downsample 4 has ``scale=4``).
    label : int
        The mask code to export.
    tolerance : float
        Ring simplification tolerance in mask pixels. 0 (default): none; the outline
        follows the pixel edges exactly (only collinear vertices are left out).
    one_feature : bool
        Write all regions as one Feature with a MultiPolygon (as QuPath's merged
        annotations) instead of one Feature with a Polygon per region.
    mpp : float, optional
        µm per pixel of ``mask``, for a minimum region size in µm² and µm measurements.
    min_region_um2, min_region_px : float, int, optional
        Regions smaller than this are left out and smaller holes filled
        (:func:`napari_histoseg.core.regions.min_region_px`: 50 µm² with ``mpp``, 16 px
        without; 0 keeps all). ``mask`` itself is not changed.
    provenance : dict, optional
        Written as strings into each object's ``metadata`` (e.g. ``model``, ``annotator``),
        with ``software`` and ``version``.

    Returns
    -------
    feature_collection : dict
        ``{"type": "FeatureCollection", "features": [...]}``, each Feature with a uuid4
        ``id``, a Polygon (outer ring, then holes) in ``[x, y]`` slide pixel coordinates on
        pixel corners, and ``properties`` ``{"objectType": "annotation", "classification":
        {"name", "color"}, "measurements": {"Area px^2", "Perimeter px", ...}, "metadata"}``.
        :func:`mask_to_geojson_report` also says how many specks were left out.
    """
    return mask_to_geojson_report(mask, classification=classification, color=color, offset=offset, scale=scale,
                                  label=label, tolerance=tolerance, one_feature=one_feature, mpp=mpp,
                                  min_region_um2=min_region_um2, min_region_px=min_region_px,
                                  provenance=provenance)[0]


def feature(geometry: dict, object_type: str, cls, measurements: dict, metadata: dict) -> dict:
    props = {"objectType": object_type}
    if cls is not None:
        props["classification"] = dict(cls)
    props["measurements"] = measurements
    props["metadata"] = dict(metadata)
    return {"type": "Feature", "id": str(uuid.uuid4()), "geometry": geometry, "properties": props}


def _geometry(polygons: list) -> dict:
    if len(polygons) == 1:
        return {"type": "Polygon", "coordinates": polygons[0]}
    return {"type": "MultiPolygon", "coordinates": polygons}


def mask_to_geojson_report(mask, *, classification: str | None = "Tumor", color=(200, 0, 0), offset=(0, 0),
                           scale: float = 1.0, label: int = 1, tolerance: float = 0.0, one_feature: bool = False,
                           mpp: float | None = None, min_region_um2: float | None = None,
                           min_region_px: int | None = None, provenance: dict | None = None) -> tuple[dict, dict]:
    """As :func:`mask_to_geojson`, returning ``(feature_collection, report)`` where
    ``report`` is ``{"regions", "dropped_regions", "dropped_px", "filled_holes", "min_region_px"}``."""
    cleaned = clean_regions(np.asarray(mask) == label, _min_px(mpp, min_region_um2, min_region_px))
    scale = float(scale)
    cls, meta = _classification(classification, color), provenance_metadata(provenance)
    regions = []
    for reg in measure.regionprops(cleaned.labels):  # 4-connected, as quantify counts them
        r0, c0, _, _ = reg.bbox
        polys = _region_polygons(reg.image, r0, c0, offset, scale, tolerance)
        regions.append((polys, int(reg.area)))
    if one_feature and regions:
        polys = [p for ps, _ in regions for p in ps]
        n = sum(a for _, a in regions)
        feats = [feature({"type": "MultiPolygon", "coordinates": polys}, "annotation", cls,
                          _measure(n, _perimeter(polys) / scale, scale, mpp), meta)]
    else:
        feats = [feature(_geometry(ps), "annotation", cls, _measure(a, _perimeter(ps) / scale, scale, mpp), meta)
                 for ps, a in regions]
    report = {"regions": len(regions), "dropped_regions": cleaned.dropped_regions, "dropped_px": cleaned.dropped_px,
              "filled_holes": cleaned.filled_holes, "min_region_px": cleaned.min_px}
    return {"type": "FeatureCollection", "features": feats}, report


def instances_to_geojson(labels, *, object_type: str = "detection", classification: str | None = "Nucleus",
                         color=(0, 160, 255), offset=(0, 0), scale: float = 1.0, mpp: float | None = None,
                         classes: dict | None = None, colors: dict | None = None,
                         measurements: dict | None = None, provenance: dict | None = None) -> dict:
    """QuPath objects for an instance label image (nuclei): one Feature per label value.

    Parameters
    ----------
    labels : (H, W) int array
        0 background, each instance its own value (a value in pieces gives a MultiPolygon).
    object_type : {"detection", "annotation"}
        QuPath's object type; ``detection`` (default) is what QuPath's cell detection makes.
    classification, color : str or None, (r, g, b)
        Class of every instance (None or ``""``: unclassified).
    classes, colors : dict, optional
        Instance value -> class name (and class name -> colour), overriding ``classification``.
    offset, scale, mpp :
        As :func:`mask_to_geojson`.
    measurements : dict, optional
        Instance value -> ``{name: number}`` added to the area and perimeter.
    provenance : dict, optional
        Strings for each object's ``metadata``.

    Returns
    -------
    feature_collection : dict
        Features in label order, each with ``properties["metadata"]["label"]`` the instance value.
    """
    if object_type not in ("detection", "annotation", "cell"):
        raise ValueError(f"object_type must be detection, annotation or cell, not {object_type!r}")
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"an instance label image must be 2-D, got shape {labels.shape}")
    scale, meta = float(scale), provenance_metadata(provenance)
    feats = []
    for reg in measure.regionprops(labels.astype(np.int64, copy=False)):
        r0, c0, _, _ = reg.bbox
        polys = _region_polygons(reg.image, r0, c0, offset, scale, 0.0)
        name = (classes or {}).get(reg.label, classification)
        cls = _classification(name, (colors or {}).get(name, color))
        ms = _measure(int(reg.area), _perimeter(polys) / scale, scale, mpp)
        for k, v in ((measurements or {}).get(reg.label) or {}).items():
            if v is not None and math.isfinite(float(v)):  # QuPath 0.4 refuses NaN
                ms[str(k)] = json_number(v) if abs(float(v)) >= 0.01 else float(v)
        feats.append(feature(_geometry(polys), object_type, cls, ms, {**meta, "label": str(reg.label)}))
    return {"type": "FeatureCollection", "features": feats}


#: Columns of :func:`napari_histoseg.nuclei.features.nucleus_features` -> QuPath's measurement names
#: (those of its cell detection; units as QuPath writes them). Area and perimeter come from the polygons.
QUPATH_NUCLEUS_COLUMNS = {"eccentricity": "Nucleus: Eccentricity", "solidity": "Nucleus: Solidity",
                          "mean_haematoxylin": "Nucleus: Hematoxylin OD mean", "score": "Detection probability"}


def nucleus_measurements(table, mpp: float | None = None) -> dict:
    """Label -> ``{QuPath measurement name: value}`` from a nucleus feature table (``label`` column;
    any of ``eccentricity``, ``solidity``, ``mean_haematoxylin``, ``score``, ``area_*``, ``perimeter_*``).
    Circularity is QuPath's, 4π·area / perimeter²."""
    if table is None or not len(table):
        return {}
    out = {}
    cols = {c: QUPATH_NUCLEUS_COLUMNS[c] for c in table.columns if c in QUPATH_NUCLEUS_COLUMNS}
    area = next((c for c in ("area_um2", "area_px2") if c in table.columns), None)
    per = next((c for c in ("perimeter_um", "perimeter_px") if c in table.columns), None)
    for row in table.to_dict("records"):
        ms = {name: row[c] for c, name in cols.items()}
        if area and per and row[per] > 0:
            ms["Nucleus: Circularity"] = min(1.0, 4 * math.pi * row[area] / row[per] ** 2)
        out[int(row["label"])] = ms
    return out


def _prefixed(ms: dict, prefix: str) -> dict:
    return {(f"{prefix}: {k}" if not k.startswith(("Nucleus:", "Cell:", "Detection")) else k): v for k, v in ms.items()}


def nuclei_to_geojson(labels, table=None, *, object_type: str = "detection", cell_expansion_um: float = 5.0,
                      offset=(0, 0), scale: float = 1.0, mpp: float | None = None, classification: str = "Nucleus",
                      color=(0, 160, 255), provenance: dict | None = None) -> dict:
    """The nucleus detector's labels (and feature table) as QuPath detections or cells.

    ``object_type`` ``"detection"``: one ``detection`` per nucleus, its outline as the geometry.
    ``"cell"``: one ``cell`` per nucleus whose ``geometry`` is the nucleus grown by
    ``cell_expansion_um`` (µm with ``mpp``, else px; never into a neighbour, as QuPath's
    cell expansion) and whose ``nucleusGeometry`` is the nucleus. Measurements: ``Nucleus: Area``
    and ``Nucleus: Perimeter`` (µm with ``mpp``), the table's columns under QuPath's names
    (:data:`QUPATH_NUCLEUS_COLUMNS`), ``Nucleus: Circularity``; for cells also ``Cell: Area``."""
    if object_type not in ("detection", "cell"):
        raise ValueError(f"object_type must be detection or cell, not {object_type!r}")
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"nucleus labels must be 2-D, got shape {labels.shape}")
    extra = nucleus_measurements(table, mpp)
    nuc = instances_to_geojson(labels, object_type=object_type, classification=classification, color=color,
                               offset=offset, scale=scale, mpp=mpp, provenance=provenance)
    for f in nuc["features"]:
        label = int(f["properties"]["metadata"]["label"])
        ms = _prefixed(f["properties"]["measurements"], "Nucleus")
        ms.update({k: (json_number(v) if abs(float(v)) >= 0.01 else float(v))
                   for k, v in extra.get(label, {}).items() if v is not None and math.isfinite(float(v))})
        f["properties"]["measurements"] = ms
    if object_type == "detection":
        return nuc
    from skimage.segmentation import expand_labels

    grow = float(cell_expansion_um) / mpp if mpp else float(cell_expansion_um)
    cells = expand_labels(labels, distance=max(0.0, grow))
    cell_fc = instances_to_geojson(cells, object_type="cell", classification=classification, color=color,
                                   offset=offset, scale=scale, mpp=mpp)
    by_label = {int(f["properties"]["metadata"]["label"]): f for f in cell_fc["features"]}
    for f in nuc["features"]:
        cell = by_label.get(int(f["properties"]["metadata"]["label"]))
        if cell is None:
            continue
        f["nucleusGeometry"] = f["geometry"]
        f["geometry"] = cell["geometry"]
        f["properties"]["measurements"].update(_prefixed(cell["properties"]["measurements"], "Cell"))
    # QuPath writes a cell's nucleusGeometry beside its geometry
    nuc["features"] = [{"type": f["type"], "id": f["id"], "geometry": f["geometry"],
                        **({"nucleusGeometry": f["nucleusGeometry"]} if "nucleusGeometry" in f else {}),
                        "properties": f["properties"]} for f in nuc["features"]]
    return nuc


def write_nuclei_geojson(path, labels, table=None, *, object_type: str = "detection", mpp: float | None = None,
                         offset=(0, 0), scale: float = 1.0, provenance: dict | None = None) -> str:
    """Write :func:`nuclei_to_geojson` to ``path`` (a temporary file renamed into place, strict JSON:
    no NaN, which QuPath refuses); returns the path."""
    import json
    from pathlib import Path

    from napari_histoseg.io.atomic import atomic_write_text

    fc = nuclei_to_geojson(labels, table, object_type=object_type, mpp=mpp, offset=offset, scale=scale,
                           provenance=provenance)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return str(atomic_write_text(path, json.dumps(fc, allow_nan=False)))
