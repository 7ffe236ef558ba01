"""Every GeoJSON file QuPath wrote in ../shared/samples/qupath-geojson: read, filled, measured.

The samples are real exports (QuPath 0.3 to 0.6) from public repositories; they stay in
../shared and the tests skip where it is absent.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import shared_path

from napari_histoseg.core.polygons import ring_area
from napari_histoseg.core.geojson import mask_to_geojson
from napari_histoseg.core.geojson_import import (
    class_codes,
    class_name,
    features_of,
    geojson_to_mask,
    geojson_to_mask_report,
)

QP = ("samples", "qupath-geojson")


def _all_files():
    return sorted(shared_path(*QP).glob("*/*.geojson"))


def _polys(f):
    g = f.get("geometry") or {}
    return [g["coordinates"]] if g.get("type") == "Polygon" else g["coordinates"] if g.get("type") == "MultiPolygon" else []


def _area(poly) -> float:
    return abs(ring_area(poly[0])) - sum(abs(ring_area(h)) for h in poly[1:])


def _fill_alone(f):
    """The Feature filled into a 1000-px grid over its bounding box: (pixels, area of one pixel)."""
    xy = np.array([pt[:2] for p in _polys(f) for pt in p[0]], float)
    lo, hi = np.floor(xy.min(axis=0)) - 1, np.ceil(xy.max(axis=0)) + 1
    scale = float((hi - lo).max() / 1000)
    shape = (int((hi[1] - lo[1]) / scale) + 2, int((hi[0] - lo[0]) / scale) + 2)
    m = geojson_to_mask(f, shape, offset=tuple(lo), scale=scale, classes="any")
    return int(m.sum()), scale * scale


def test_every_file_loads_and_every_polygon_fills_to_its_area():
    files = _all_files()
    assert len(files) == 5
    checked = 0
    for path in files:
        feats = features_of(path)
        assert feats, path
        _, skipped = geojson_to_mask_report(path, (100, 100), classes="any")
        assert set(skipped) <= {"Point", "MultiPoint", "LineString"}, (path, skipped)
        for f in feats:
            polys = _polys(f)
            if not polys:
                continue
            want = sum(_area(p) for p in polys)
            px, px_area = _fill_alone(f)
            assert abs(px * px_area - want) <= 0.005 * want, (path.name, f.get("id"), px * px_area, want)
            checked += 1
    assert checked >= 100


def test_holes_stay_holes():
    path = shared_path(*QP, "CosciaLab__Qupath_to_LMD", "2023_02_02__CD163_CD31_CDH1.geojson")
    [f] = [f for f in features_of(path) if any(len(p) > 1 for p in _polys(f))]
    outer, hole = f["geometry"]["coordinates"][0], f["geometry"]["coordinates"][1]
    x0, y0 = np.floor(np.asarray(outer, float).min(axis=0)) - 2
    w, h = np.ptp(np.asarray(outer, float), axis=0).astype(int) + 6
    full = geojson_to_mask(f, (h, w), offset=(x0, y0), classes="any")
    hole_only = geojson_to_mask({"type": "Polygon", "coordinates": [hole]}, (h, w), offset=(x0, y0))
    outer_only = geojson_to_mask({"type": "Polygon", "coordinates": [outer]}, (h, w), offset=(x0, y0))
    assert hole_only.sum() > 0 and not (full & hole_only).any()
    assert full.sum() == outer_only.sum() - hole_only.sum()
    again = mask_to_geojson(full, offset=(x0, y0), min_region_px=0)  # our export keeps the hole
    assert any(len(g["geometry"]["coordinates"]) > 1 for g in again["features"])
    np.testing.assert_array_equal(geojson_to_mask(again, (h, w), offset=(x0, y0)), full)


def test_classifications_are_kept():
    names = {p.name: sorted({str(class_name(f)) for f in features_of(p)}) for p in _all_files()}
    assert len(names["QuPath_Annotations_wo_calibs.geojson"]) >= 40
    assert len(names["2023_02_02__CD163_CD31_CDH1.geojson"]) >= 8
    assert names["multilabel_qupath_export.geojson"] == ["None"]
    path = shared_path(*QP, "CosciaLab__Qupath_to_LMD", "2023_02_02__CD163_CD31_CDH1.geojson")
    codes = class_codes(path, "all")
    assert len(set(codes.values())) == len({c for c in codes.values()})
    assert all(1 <= v <= 254 for v in codes.values())
    # each class gets its own code, and each code's pixels are that class's polygons
    feats = features_of(path)
    xy = np.array([pt[:2] for f in feats for p in _polys(f) for pt in p[0]], float)
    scale = float(np.ceil(xy.max() / 1000))
    shape = (int(xy[:, 1].max() / scale) + 2, int(xy[:, 0].max() / scale) + 2)
    m = geojson_to_mask(path, shape, scale=scale, classes="all", warn=False)
    assert len(set(np.unique(m).tolist()) - {0}) >= 5


def test_old_qupath_03_format_reads():
    path = shared_path(*QP, "tdmorello__napari-geojson", "qp_all_shapes.geojson")
    feats = features_of(path)
    assert any("object_type" in (f.get("properties") or {}) for f in feats)
    m, skipped = geojson_to_mask_report(path, (2000, 2000), classes="any")
    assert m.any() and "Point" in skipped


def test_maskgeo_annotations_against_their_label_image():
    tifffile = pytest.importorskip("tifffile")
    folder = shared_path(*QP, "wuwenrui555__maskgeo")
    labels = tifffile.imread(folder / "multilabel.ome.tiff")
    feats = features_of(folder / "multilabel_qupath_export.geojson")
    assert len(feats) == 5 and sum(bool(f["geometry"].get("isEllipse")) for f in feats) == 2
    # The annotations were drawn around the labelled objects (not traced from them), so
    # each covers exactly one object, and the first rectangle [28, 125] x [76, 144]
    # fills exactly its 97 x 68 pixels and holds all of object 120. They are unclassified:
    # the default import reads them as tumour.
    for f in feats:
        inside = labels[geojson_to_mask(f, labels.shape) == 1]
        assert len(set(np.unique(inside).tolist()) - {0}) == 1
    rect = geojson_to_mask(feats[0], labels.shape)
    assert rect.sum() == 97 * 68 and rect[76:144, 28:125].all()
    assert (labels[rect == 1] == 120).sum() == (labels == 120).sum()


def test_our_export_is_read_by_the_same_parser(tmp_path):
    m = np.zeros((64, 64), np.uint8)
    m[4:30, 4:40] = 1
    m[10:14, 10:14] = 0
    path = tmp_path / "ours.geojson"
    path.write_text(json.dumps(mask_to_geojson(m, min_region_px=0, provenance={"model": "x"}), allow_nan=False))
    [f] = features_of(path)
    assert class_name(f) == "Tumor" and f["properties"]["objectType"] == "annotation"
    np.testing.assert_array_equal(geojson_to_mask(path, m.shape), m)


# -- nuclei as QuPath's own detections and cells -------------------------------------------
def _nuclei():
    from napari_histoseg.nuclei.features import nucleus_features
    from napari_histoseg.testing import disks_image

    img, truth = disks_image((96, 96), [(20, 20), (30, 70), (70, 45)], 9)
    from scipy import ndimage as ndi

    labels = ndi.label(truth > 0)[0]
    return labels, nucleus_features(labels, img, mpp=0.25)


@pytest.mark.parametrize("object_type", ["detection", "cell"])
def test_nuclei_export_as_qupath_objects_with_their_measurements(tmp_path, object_type):
    from napari_histoseg.core.geojson import write_nuclei_geojson
    from napari_histoseg.core.geojson_import import measurements_of

    labels, table = _nuclei()
    path = tmp_path / "nuclei.geojson"
    write_nuclei_geojson(path, labels, table, object_type=object_type, mpp=0.25)
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text           # QuPath 0.4 refuses them
    feats = features_of(json.loads(text))
    assert len(feats) == 3
    for f in feats:
        props = f["properties"]
        assert props["objectType"] == object_type and class_name(f) == "Nucleus"
        assert len(props["classification"]["color"]) == 3           # a class without colour breaks QuPath's import
        ms = measurements_of(f)
        assert {"Nucleus: Area µm^2", "Nucleus: Perimeter µm", "Nucleus: Circularity", "Nucleus: Eccentricity",
                "Nucleus: Hematoxylin OD mean"} <= set(ms)
        assert 0 < ms["Nucleus: Circularity"] <= 1
    # every nucleus fills back to its own pixels
    nucleus = [f.get("nucleusGeometry", f["geometry"]) for f in feats]
    for f, g in zip(feats, nucleus):
        back = geojson_to_mask({"type": "Feature", "geometry": g, "properties": {}}, labels.shape)
        label = int(f["properties"]["metadata"]["label"])
        np.testing.assert_array_equal(back == 1, labels == label)
        area = measurements_of(f)["Nucleus: Area µm^2"]
        assert area == pytest.approx((labels == label).sum() * 0.25 ** 2, abs=0.01)
    if object_type == "cell":                                        # the cell is the nucleus grown by 5 µm
        f = feats[0]
        assert list(f)[:4] == ["type", "id", "geometry", "nucleusGeometry"]
        assert measurements_of(f)["Cell: Area µm^2"] > measurements_of(f)["Nucleus: Area µm^2"]


def test_objects_qupath_drew_come_back_from_our_nuclei_export_as_qupath_writes_them(tmp_path):
    # QuPath's own export (5 objects drawn on maskgeo's 200 x 200 image), filled into an
    # instance label image, saved as nuclei through the napari writer, read back: every
    # object fills back to its own pixels, and each Feature is laid out as QuPath lays out its own.
    import uuid

    from napari_histoseg.plugin.writers import write_detections_geojson

    source = shared_path(*QP, "wuwenrui555__maskgeo", "multilabel_qupath_export.geojson")
    theirs = features_of(source)
    labels = np.zeros((200, 200), np.int32)
    for k, f in enumerate(theirs, start=1):
        labels[(geojson_to_mask(f, labels.shape) == 1) & (labels == 0)] = k
    path = tmp_path / "nuclei.geojson"
    write_detections_geojson(str(path), labels, {"name": "nuclei", "scale": (1.0, 1.0)})
    ours = features_of(path)
    assert len(ours) == len(theirs) == 5
    for f in ours:
        assert list(f) == list(theirs[0]) == ["type", "id", "geometry", "properties"]
        uuid.UUID(f["id"])
        assert f["properties"]["objectType"] == "detection" and class_name(f) == "Nucleus"
        k = int(f["properties"]["metadata"]["label"])
        np.testing.assert_array_equal(geojson_to_mask(f, labels.shape, classes="any") == 1, labels == k)
        assert f["properties"]["measurements"]["Nucleus: Area px^2"] == (labels == k).sum()
