"""QuPath GeoJSON back into masks: read every form QuPath writes, map class names to codes,
and fill the polygons with a scanline fill.

:func:`geojson_to_mask` fills polygons with :func:`napari_histoseg.core.polygons.fill_rings`
(a pixel belongs to a polygon when its centre does, so the masks that
:func:`napari_histoseg.tumour.geojson.mask_to_geojson` writes come back pixel for pixel) and
maps class names to codes (:func:`class_codes`; Tumour/Tumor and unclassified -> 1 by
default). Measurements are read as a map or in QuPath's older list form.
"""

from __future__ import annotations

import json
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from napari_histoseg.core.polygons import fill_rings

__all__ = ["geojson_to_mask", "geojson_to_mask_report", "read_geojson", "features_of", "class_name", "class_codes",
           "measurements_of", "TUMOUR_NAMES"]

TUMOUR_NAMES = ("tumour", "tumor")  # class names (any case, also derived "Tumor: Positive") read as code 1


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
