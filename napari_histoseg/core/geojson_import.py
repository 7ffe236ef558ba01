"""QuPath GeoJSON back into masks: read every form QuPath writes, map class names to codes,
and fill the polygons with a scanline fill.

:func:`geojson_to_mask` fills polygons with :func:`napari_histoseg.core.polygons.fill_rings`
(a pixel belongs to a polygon when its centre does, so the masks that
:func:`napari_histoseg.core.geojson.mask_to_geojson` writes come back pixel for pixel) and
maps class names to codes (:func:`class_codes`; Tumour/Tumor and unclassified -> 1 by
default). Measurements are read as a map or in QuPath's older list form.

Malformed input is refused with :class:`~napari_histoseg.io.checks.InputError` naming the
feature (``features[3]: ...``): features that are not objects, coordinates that are not
lists of [x, y] numbers, NaN or infinite coordinates, coordinates beyond any slide
(|x|, |y| > 10^9 px), JSON nested too deeply to be GeoJSON.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from napari_histoseg.core.polygons import fill_rings
from napari_histoseg.io.checks import InputError, check_float, check_int, check_pixels

__all__ = ["geojson_to_mask", "geojson_to_mask_report", "read_geojson", "features_of", "class_name", "class_codes",
           "measurements_of", "TUMOUR_NAMES"]

TUMOUR_NAMES = ("tumour", "tumor")  # class names (any case, also derived "Tumor: Positive") read as code 1
MAX_COORD = 1e9      # slide pixels; no slide is larger
_MAX_DEPTH = 16      # GeometryCollections inside GeometryCollections


def read_geojson(path) -> object:
    """The parsed JSON of a ``.geojson`` / ``.json`` file (InputError when it is not JSON)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path} is not a text (GeoJSON) file") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path} is not valid JSON ({e})") from None
    except RecursionError:
        raise InputError(f"{path} is nested too deeply to be GeoJSON") from None


def features_of(data) -> list[dict]:
    """The Features of a FeatureCollection, a bare Feature, a JSON array of Features or a
    bare geometry (read as a Feature, as QuPath does)."""
    if isinstance(data, (str, Path)):
        data = read_geojson(data)
    if isinstance(data, list):
        out = []
        for i, d in enumerate(data):
            if not isinstance(d, dict):
                raise InputError(f"not GeoJSON: item {i} of the list is {_what(d)}, not a Feature")
            out += features_of(d)
        return out
    if not isinstance(data, dict):
        raise InputError(f"not GeoJSON: {_what(data)}")
    kind = data.get("type")
    if kind == "FeatureCollection":
        feats = data.get("features") or []
        if not isinstance(feats, list):
            raise InputError(f"not GeoJSON: features must be a list of Features; got {_what(feats)}")
        for i, f in enumerate(feats):
            _check_feature(f, f"features[{i}]")
        return list(feats)
    if kind == "Feature":
        _check_feature(data, "the Feature")
        return [data]
    if kind in ("Polygon", "MultiPolygon", "Point", "MultiPoint", "LineString", "MultiLineString",
                "GeometryCollection"):
        return [{"type": "Feature", "geometry": data, "properties": {}}]
    raise InputError(f"not GeoJSON: type {kind!r}")


def _what(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, (dict, list)):
        return "an object" if isinstance(value, dict) else "a list"
    if isinstance(value, str):
        return f"the string {value[:30]!r}"
    return f"the {type(value).__name__} {str(value)[:30]}"


def _check_feature(f, where: str) -> None:
    if not isinstance(f, dict):
        raise InputError(f"not GeoJSON: {where} is {_what(f)}, not a Feature (an object)")
    for key in ("geometry", "properties"):
        if f.get(key) is not None and not isinstance(f[key], dict):
            raise InputError(f"not GeoJSON: {where}.{key} is {_what(f[key])}, not an object")


def class_name(feature: dict) -> str | None:
    """QuPath's class name of a Feature (``"Tumor"``, ``"Tumor: Positive"``) or None."""
    c = (feature.get("properties") or {}).get("classification")
    if c is None:
        return None
    if isinstance(c, str):
        return c
    if not isinstance(c, dict):
        return str(c)
    names = c.get("names")
    if isinstance(names, list) and names:
        return ": ".join(str(n) for n in names)
    name = c.get("name")
    return None if name is None else str(name)


def _ring(ring, where: str) -> np.ndarray:
    """A ring as an (N, 2) float array of finite slide coordinates, or InputError."""
    if not isinstance(ring, (list, tuple, np.ndarray)):
        raise InputError(f"{where}: a ring must be a list of [x, y] positions; got {_what(ring)}")
    try:
        xy = np.asarray(ring, dtype=np.float64)
    except (ValueError, TypeError, RecursionError):
        raise InputError(f"{where}: a ring must be a list of [x, y] positions (two numbers each)") from None
    if xy.ndim != 2 or xy.shape[1] < 2:
        raise InputError(f"{where}: a ring must be a list of [x, y] positions; got an array of shape {xy.shape}")
    xy = xy[:, :2]
    if not np.isfinite(xy).all():
        raise InputError(f"{where}: coordinates must be finite numbers (found NaN or infinity)")
    if xy.size and np.abs(xy).max() > MAX_COORD:
        raise InputError(f"{where}: coordinate {np.abs(xy).max():g} is beyond any slide (|x|, |y| ≤ {MAX_COORD:g} px)")
    return xy


def _polygon(coords, where: str) -> list:
    if not isinstance(coords, (list, tuple)):
        raise InputError(f"{where}: Polygon coordinates must be a list of rings; got {_what(coords)}")
    return [_ring(r, f"{where} ring {k}") for k, r in enumerate(coords)]


def _polygons(geometry, where: str = "geometry", depth: int = 0) -> list:
    """The polygons of a geometry, each a list of (N, 2) rings (outer first), validated."""
    if not isinstance(geometry, dict):
        raise InputError(f"{where} is {_what(geometry)}, not a geometry object")
    t = geometry.get("type")
    if t == "Polygon":
        return [_polygon(geometry.get("coordinates"), where)]
    if t == "MultiPolygon":
        coords = geometry.get("coordinates")
        if not isinstance(coords, (list, tuple)):
            raise InputError(f"{where}: MultiPolygon coordinates must be a list of polygons; got {_what(coords)}")
        return [_polygon(c, f"{where} polygon {k}") for k, c in enumerate(coords)]
    if t == "GeometryCollection":
        if depth >= _MAX_DEPTH:
            raise InputError(f"{where}: GeometryCollections nested more than {_MAX_DEPTH} deep")
        geoms = geometry.get("geometries") or []
        if not isinstance(geoms, list):
            raise InputError(f"{where}: geometries must be a list; got {_what(geoms)}")
        return [p for k, g in enumerate(geoms) for p in _polygons(g, f"{where}.geometries[{k}]", depth + 1)]
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
    shape = tuple(check_int(v, "mask shape", lo=1) for v in tuple(shape)[:2])
    check_pixels(shape, f"a {shape[0]} x {shape[1]} mask", hint="fill a lower resolution mask (a larger scale)")
    scale = check_float(scale, "scale", lo=0, lo_open=True)
    offset = tuple(check_float(v, "offset", lo=-MAX_COORD, hi=MAX_COORD) for v in offset)
    out = np.zeros(shape, np.uint8)
    skipped: Counter = Counter()
    for i, f in enumerate(features_of(data)):
        geom = f.get("geometry")
        if not geom:
            skipped["without geometry"] += 1
            continue
        polys = _polygons(geom, f"features[{i}].geometry")
        if not polys:
            skipped[str(geom.get("type", "unknown"))] += 1
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
