"""Masks to and from GeoJSON as QuPath writes and reads it.

QuPath's convention (``qupath-core``, ``ROITypeAdapters``): full-resolution slide pixel
coordinates as ``[x, y]``, origin at the top-left *corner* of the top-left pixel, y down,
so pixel ``(row r, column c)`` is the unit square ``[c, c + 1] x [r, r + 1]``. Holes are
inner rings of a Polygon; ellipses are Polygons marked ``isEllipse``; at most two
decimals. An annotation's ``properties`` hold ``objectType`` and a ``classification``
``{"name", "color": [r, g, b]}`` (QuPath rejects a file whose classification has a name
and no colour, so a colour is always written).

:func:`mask_to_geojson` traces each connected region with
:func:`skimage.measure.find_contours` (half-way between pixel centres), simplifies the
rings lightly with :func:`skimage.measure.approximate_polygon` and writes one Feature
per region; regions follow :mod:`napari_histoseg.core.regions` (4-connected, specks under a
minimum size left out and reported by :func:`mask_to_geojson_report`), as in
:func:`~napari_histoseg.tumour.quantify.quantify`, so both count the same regions.
:func:`geojson_to_mask` fills polygons with :func:`skimage.draw.polygon`
(a pixel belongs to a polygon when its centre does). rasterio/shapely would do the same
but are heavy dependencies for two short functions.

Example
-------
>>> fc = mask_to_geojson(mask, classification="Tumor", offset=(x0, y0), scale=4.0)  # doctest: +SKIP
>>> json.dump(fc, open("tumour.geojson", "w"))                                       # doctest: +SKIP
>>> back = geojson_to_mask(fc, mask.shape, offset=(x0, y0), scale=4.0)               # doctest: +SKIP
"""

from __future__ import annotations

import json
import uuid
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from skimage import draw, measure

from napari_histoseg.core.regions import clean_regions
from napari_histoseg.core.regions import min_region_px as _min_px

__all__ = ["mask_to_geojson", "mask_to_geojson_report", "geojson_to_mask", "geojson_to_mask_report", "read_geojson",
           "features_of", "class_name"]


def _num(v: float):
    v = round(float(v), 2)
    return int(v) if v.is_integer() else v


def _signed_area(xy: np.ndarray) -> float:
    x, y = xy[:, 0], xy[:, 1]
    return 0.5 * float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1]))


def _ring(contour: np.ndarray, r0: int, c0: int, offset, scale, tolerance, outer: bool) -> list:
    """A closed ring of ``[x, y]`` from a find_contours ``(row, col)`` contour."""
    simple = measure.approximate_polygon(contour, tolerance) if tolerance > 0 else contour
    if len(simple) < 4:  # a pixel or two: simplification would collapse it
        simple = contour
    rows, cols = simple[:, 0] + r0 + 0.5, simple[:, 1] + c0 + 0.5  # centre -> corner convention
    xy = np.stack([cols * scale + offset[0], rows * scale + offset[1]], axis=1)
    if not np.array_equal(xy[0], xy[-1]):
        xy = np.vstack([xy, xy[:1]])
    # RFC 7946 orientation in the written numbers: outer counter-clockwise, holes clockwise
    if (_signed_area(xy) > 0) != outer:
        xy = xy[::-1]
    return [[_num(x), _num(y)] for x, y in xy]


def _region_polygon(region_mask: np.ndarray, r0: int, c0: int, offset, scale, tolerance) -> list:
    """Rings (outer first, then holes) of one 4-connected region in its bounding box."""
    padded = np.pad(region_mask, 1).astype(np.float32)
    contours = [c for c in measure.find_contours(padded, 0.5) if len(c) >= 3]
    areas = [abs(_signed_area(c[:, ::-1])) for c in contours]
    k = int(np.argmax(areas))
    rings = [_ring(contours[k], r0 - 1, c0 - 1, offset, scale, tolerance, True)]
    rings += [_ring(c, r0 - 1, c0 - 1, offset, scale, tolerance, False)
              for i, c in enumerate(contours) if i != k]
    return rings


def mask_to_geojson(mask, *, classification: str | None = "Tumor", color=(200, 0, 0), offset=(0, 0),
                    scale: float = 1.0, label: int = 1, tolerance: float = 0.5,
                    one_feature: bool = False, mpp: float | None = None, min_region_um2: float | None = None,
                    min_region_px: int | None = None) -> dict:
    """A QuPath-importable FeatureCollection of the regions where ``mask == label``.

    Parameters
    ----------
    mask : (H, W) array
        Class codes (or a boolean mask, read as 0/1).
    classification : str or None
        QuPath class name of the annotations (None: unclassified).
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
        Ring simplification tolerance in mask pixels (0: none).
    one_feature : bool
        Write all regions as one Feature with a MultiPolygon (as QuPath's merged
        annotations) instead of one Feature with a Polygon per region.
    mpp : float, optional
        µm per pixel of ``mask``, for a minimum region size in µm².
    min_region_um2, min_region_px : float, int, optional
        Regions smaller than this are left out and smaller holes filled
        (:func:`napari_histoseg.core.regions.min_region_px`: 50 µm² with ``mpp``, 16 px
        without; 0 keeps all). ``mask`` itself is not changed.

    Returns
    -------
    feature_collection : dict
        ``{"type": "FeatureCollection", "features": [...]}``, each Feature with a
        uuid4 ``id``, a Polygon (outer ring, then holes) in ``[x, y]`` slide pixel
        coordinates rounded to two decimals, and ``properties`` ``{"objectType":
        "annotation", "classification": {"name", "color"}}``. :func:`mask_to_geojson_report`
        also says how many specks were left out.
    """
    return mask_to_geojson_report(mask, classification=classification, color=color, offset=offset, scale=scale,
                                  label=label, tolerance=tolerance, one_feature=one_feature, mpp=mpp,
                                  min_region_um2=min_region_um2, min_region_px=min_region_px)[0]


def mask_to_geojson_report(mask, *, classification: str | None = "Tumor", color=(200, 0, 0), offset=(0, 0),
                           scale: float = 1.0, label: int = 1, tolerance: float = 0.5, one_feature: bool = False,
                           mpp: float | None = None, min_region_um2: float | None = None,
                           min_region_px: int | None = None) -> tuple[dict, dict]:
    """As :func:`mask_to_geojson`, returning ``(feature_collection, report)`` where
    ``report`` is ``{"regions", "dropped_regions", "dropped_px", "filled_holes", "min_region_px"}``."""
    cleaned = clean_regions(np.asarray(mask) == label, _min_px(mpp, min_region_um2, min_region_px))
    polygons = []
    for reg in measure.regionprops(cleaned.labels):  # 4-connected: find_contours' view of the foreground
        r0, c0, _, _ = reg.bbox
        polygons.append(_region_polygon(reg.image, r0, c0, offset, float(scale), tolerance))
    props = {"objectType": "annotation"}
    if classification is not None:
        props["classification"] = {"name": str(classification), "color": [int(v) for v in color[:3]]}

    def feature(geometry):
        return {"type": "Feature", "id": str(uuid.uuid4()), "geometry": geometry, "properties": dict(props)}

    if one_feature and polygons:
        feats = [feature({"type": "MultiPolygon", "coordinates": polygons})]
    else:
        feats = [feature({"type": "Polygon", "coordinates": p}) for p in polygons]
    report = {"regions": len(polygons), "dropped_regions": cleaned.dropped_regions, "dropped_px": cleaned.dropped_px,
              "filled_holes": cleaned.filled_holes, "min_region_px": cleaned.min_px}
    return {"type": "FeatureCollection", "features": feats}, report


def read_geojson(path) -> object:
    """The parsed JSON of a ``.geojson`` / ``.json`` file."""
    return json.loads(Path(path).read_text())


def features_of(data) -> list[dict]:
    """The Features of a FeatureCollection, a bare Feature, a JSON array of Features or a
    bare geometry (read as a Feature, as QuPath does)."""
    if isinstance(data, (str, Path)):
        data = read_geojson(data)
    if isinstance(data, list):
        return [f for d in data for f in features_of(d)]
    if not isinstance(data, dict):
        raise ValueError(f"not GeoJSON: a {type(data).__name__}")
    kind = data.get("type")
    if kind == "FeatureCollection":
        return list(data.get("features") or [])
    if kind == "Feature":
        return [data]
    if kind in ("Polygon", "MultiPolygon", "Point", "MultiPoint", "LineString", "MultiLineString",
                "GeometryCollection"):
        return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise ValueError(f"not GeoJSON: type {kind!r}")


def class_name(feature: dict) -> str | None:
    """QuPath's class name of a Feature (``"Tumor"``, ``"Tumor: Positive"``) or None."""
    c = (feature.get("properties") or {}).get("classification")
    if c is None:
        return None
    if isinstance(c, str):
        return c
    if "names" in c:
        return ": ".join(c["names"])
    return c.get("name")


def _polygons(geometry: dict) -> list:
    t = geometry.get("type")
    if t == "Polygon":
        return [geometry["coordinates"]]
    if t == "MultiPolygon":
        return list(geometry["coordinates"])
    if t == "GeometryCollection":
        return [p for g in geometry.get("geometries", []) for p in _polygons(g)]
    return []


def _fill(out: np.ndarray, polygon: list, value: int, offset, scale) -> None:
    """Set pixels whose centre lies inside ``polygon`` (outer ring minus holes) to ``value``."""
    h, w = out.shape
    rings = []
    for ring in polygon:
        xy = np.asarray(ring, dtype=np.float64)[:, :2]
        rings.append(((xy[:, 1] - offset[1]) / scale - 0.5, (xy[:, 0] - offset[0]) / scale - 0.5))
    rr, cc = rings[0]
    r0, r1 = max(0, int(np.floor(rr.min()))), min(h, int(np.ceil(rr.max())) + 1)
    c0, c1 = max(0, int(np.floor(cc.min()))), min(w, int(np.ceil(cc.max())) + 1)
    if r0 >= r1 or c0 >= c1:
        return
    local = np.zeros((r1 - r0, c1 - c0), bool)
    for i, (rr, cc) in enumerate(rings):
        pr, pc = draw.polygon(rr - r0, cc - c0, shape=local.shape)
        local[pr, pc] = i == 0  # the outer ring fills, holes clear
    out[r0:r1, c0:c1][local] = value


def geojson_to_mask(data, shape, *, offset=(0, 0), scale: float = 1.0, classes: dict | None = None,
                    warn: bool = True) -> np.ndarray:
    """Fill the polygons of QuPath GeoJSON into a uint8 label mask.

    Parameters
    ----------
    data : dict, list, str or Path
        A FeatureCollection, a Feature, a list of Features, a bare geometry, or the
        path of a file holding one.
    shape : (H, W)
        Shape of the mask to fill (GeoJSON does not record the image size).
    offset : (x, y)
        Slide position of the mask's top-left corner, in full-resolution pixels.
    scale : float
        Full-resolution pixels per mask pixel.
    classes : dict, optional
        QuPath class name -> mask code (``None`` as a key for unclassified objects).
        Features of other classes are left out. Default: every polygon -> 1.
    warn : bool
        Warn (``UserWarning``) about what was left out: Points, LineStrings, classes
        not in ``classes``.

    Returns
    -------
    mask : (H, W) uint8
        0 outside every polygon; later Features overwrite earlier ones where they
        overlap. :func:`geojson_to_mask_report` also returns what was left out.
    """
    mask, skipped = geojson_to_mask_report(data, shape, offset=offset, scale=scale, classes=classes)
    if warn and skipped:
        warnings.warn("GeoJSON import left out " + ", ".join(f"{n} {k}" for k, n in sorted(skipped.items())),
                      stacklevel=2)
    return mask


def geojson_to_mask_report(data, shape, *, offset=(0, 0), scale: float = 1.0,
                           classes: dict | None = None) -> tuple[np.ndarray, dict]:
    """As :func:`geojson_to_mask`, returning ``(mask, skipped)`` where ``skipped`` counts
    what was left out by reason (``{"Point": 3, "class 'Stroma'": 2}``)."""
    out = np.zeros(tuple(shape)[:2], np.uint8)
    skipped: Counter = Counter()
    for f in features_of(data):
        geom = f.get("geometry")
        if not geom:
            skipped["without geometry"] += 1
            continue
        polys = _polygons(geom)
        if not polys:
            skipped[geom.get("type", "unknown")] += 1
            continue
        if classes is None:
            value = 1
        else:
            name = class_name(f)
            if name not in classes:
                skipped[f"class {name!r}"] += 1
                continue
            value = int(classes[name])
        for p in polys:
            if p and len(p[0]) >= 3:
                _fill(out, p, value, offset, float(scale))
    return out, dict(skipped)
