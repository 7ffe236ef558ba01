"""Masks to and from GeoJSON as QuPath writes and reads it.

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
instance label image) as ``detection`` objects, one per instance.
:func:`geojson_to_mask` fills polygons with a scanline fill
(:func:`napari_histoseg.core.polygons.fill_rings`: a pixel belongs to a polygon when its
centre does) and maps class names to codes (:func:`class_codes`; Tumour/Tumor and
unclassified -> 1 by default).

Example
-------
>>> fc = mask_to_geojson(mask, classification="Tumor", offset=(x0, y0), scale=4.0)  # doctest: +SKIP
>>> json.dump(fc, open("tumour.geojson", "w"))                                       # doctest: +SKIP
>>> back = geojson_to_mask(fc, mask.shape, offset=(x0, y0), scale=4.0)               # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import uuid
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
from skimage import measure

from napari_histoseg.core.polygons import fill_rings, ring_area, trace_rings
from napari_histoseg.core.regions import clean_regions
from napari_histoseg.core.regions import min_region_px as _min_px

__all__ = ["mask_to_geojson", "mask_to_geojson_report", "instances_to_geojson", "geojson_to_mask",
           "geojson_to_mask_report", "read_geojson", "features_of", "class_name", "class_codes", "measurements_of",
           "TUMOUR_NAMES"]

TUMOUR_NAMES = ("tumour", "tumor")  # class names (any case, also derived "Tumor: Positive") read as code 1


def _num(v: float):
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
    return [[_num(x), _num(y)] for x, y in xy]


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


def _metadata(provenance: dict | None) -> dict:
    meta = {"software": "napari-histoseg", "version": _version()}
    for k, v in (provenance or {}).items():
        if v is not None and str(v) != "":
            meta[str(k)] = str(v)  # QuPath's object metadata holds strings
    return meta


def _measure(n_px: int, perimeter: float, scale: float, mpp) -> dict:
    out = {"Area px^2": _num(n_px * scale * scale), "Perimeter px": _num(perimeter * scale)}
    if mpp:
        out["Area µm^2"] = _num(n_px * mpp * mpp)
        out["Perimeter µm"] = _num(perimeter * mpp)
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


def _feature(geometry: dict, object_type: str, cls, measurements: dict, metadata: dict) -> dict:
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
    cls, meta = _classification(classification, color), _metadata(provenance)
    regions = []
    for reg in measure.regionprops(cleaned.labels):  # 4-connected, as quantify counts them
        r0, c0, _, _ = reg.bbox
        polys = _region_polygons(reg.image, r0, c0, offset, scale, tolerance)
        regions.append((polys, int(reg.area)))
    if one_feature and regions:
        polys = [p for ps, _ in regions for p in ps]
        n = sum(a for _, a in regions)
        feats = [_feature({"type": "MultiPolygon", "coordinates": polys}, "annotation", cls,
                          _measure(n, _perimeter(polys) / scale, scale, mpp), meta)]
    else:
        feats = [_feature(_geometry(ps), "annotation", cls, _measure(a, _perimeter(ps) / scale, scale, mpp), meta)
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
    scale, meta = float(scale), _metadata(provenance)
    feats = []
    for reg in measure.regionprops(labels.astype(np.int64, copy=False)):
        r0, c0, _, _ = reg.bbox
        polys = _region_polygons(reg.image, r0, c0, offset, scale, 0.0)
        name = (classes or {}).get(reg.label, classification)
        cls = _classification(name, (colors or {}).get(name, color))
        ms = _measure(int(reg.area), _perimeter(polys) / scale, scale, mpp)
        for k, v in ((measurements or {}).get(reg.label) or {}).items():
            if v is not None and math.isfinite(float(v)):  # QuPath 0.4 refuses NaN
                ms[str(k)] = _num(v) if abs(float(v)) >= 0.01 else float(v)
        feats.append(_feature(_geometry(polys), object_type, cls, ms, {**meta, "label": str(reg.label)}))
    return {"type": "FeatureCollection", "features": feats}


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


def measurements_of(feature: dict) -> dict:
    """A Feature's measurements as ``{name: float}``: the map QuPath writes since 0.5 (with
    ``"NaN"``/``"Infinity"`` strings) or the older list of ``{"name", "value"}``."""
    m = (feature.get("properties") or {}).get("measurements") or {}
    items = [(d.get("name"), d.get("value")) for d in m if isinstance(d, dict)] if isinstance(m, list) else m.items()
    out = {}
    for k, v in items:
        try:
            out[str(k)] = float(v)
        except (TypeError, ValueError):
            continue
    return out


def _base(name: str | None) -> str | None:
    return None if name is None else name.split(":")[0].strip()


def class_codes(data, classes="tumour") -> dict:
    """Class name -> mask code for the Features of ``data``.

    ``classes`` is a dict (returned as it is; ``None`` as a key for unclassified objects),
    or a rule: ``"tumour"`` (default) Tumour/Tumor (any case, derived classes such as
    ``"Tumor: Positive"`` included) and unclassified objects -> 1, other classes left out;
    ``"all"`` as ``"tumour"`` and every other class its own code 2, 3, ... (in name order);
    ``"any"`` every object -> 1 whatever its class.
    """
    if isinstance(classes, dict):
        return dict(classes)
    if classes not in ("tumour", "all", "any"):
        raise ValueError(f"classes must be a dict or 'tumour', 'all' or 'any', not {classes!r}")
    names = {class_name(f) for f in features_of(data)}
    tumour = {n for n in names if n is None or _base(n).lower() in TUMOUR_NAMES}
    codes = {n: 1 for n in tumour}
    if classes == "any":
        codes.update({n: 1 for n in names})
    elif classes == "all":
        others = sorted({_base(n) for n in names - tumour})
        if len(others) > 253:
            raise ValueError(f"{len(others)} classes do not fit in a uint8 mask (2..254; 255 is unknown)")
        code = {b: k + 2 for k, b in enumerate(others)}
        codes.update({n: code[_base(n)] for n in names - tumour})
    return codes


def geojson_to_mask(data, shape, *, offset=(0, 0), scale: float = 1.0, classes="tumour",
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
    classes : dict or {"tumour", "all", "any"}
        QuPath class name -> mask code (``None`` as a key for unclassified objects), or a
        rule of :func:`class_codes`. Default ``"tumour"``: Tumour/Tumor and unclassified
        objects -> 1, other classes left out (and said). Features of classes not mapped
        are left out.
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
                           classes="tumour") -> tuple[np.ndarray, dict]:
    """As :func:`geojson_to_mask`, returning ``(mask, skipped)`` where ``skipped`` counts
    what was left out by reason (``{"Point": 3, "class 'Stroma'": 2}``)."""
    if isinstance(data, (str, Path)):
        data = read_geojson(data)
    codes = class_codes(data, "any" if classes is None else classes)
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
        name = class_name(f)
        if name not in codes:
            skipped[f"class {name!r}"] += 1
            continue
        for p in polys:
            if p and len(p[0]) >= 3:
                _fill(out, p, int(codes[name]), offset, float(scale))
    return out, dict(skipped)


def _fill(out: np.ndarray, polygon: list, value: int, offset, scale) -> None:
    """Set pixels whose centre lies inside ``polygon`` (outer ring minus holes) to ``value``."""
    h, w = out.shape
    outer = np.asarray(polygon[0], dtype=np.float64)[:, :2]
    c0 = max(0, int(np.floor((outer[:, 0].min() - offset[0]) / scale)))
    c1 = min(w, int(np.ceil((outer[:, 0].max() - offset[0]) / scale)) + 1)
    r0 = max(0, int(np.floor((outer[:, 1].min() - offset[1]) / scale)))
    r1 = min(h, int(np.ceil((outer[:, 1].max() - offset[1]) / scale)) + 1)
    if r0 >= r1 or c0 >= c1:
        return
    local = fill_rings(polygon, (r1 - r0, c1 - c0), offset=(offset[0] + c0 * scale, offset[1] + r0 * scale),
                       scale=scale)
    out[r0:r1, c0:c1][local] = value
