"""GeoJSON export and import in QuPath's conventions, against real QuPath exports."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import numpy as np
import pytest
from skimage import draw

from napari_histoseg.tumour.geojson import (
    class_name,
    features_of,
    geojson_to_mask,
    geojson_to_mask_report,
    mask_to_geojson,
)

SHARED = Path(os.environ.get("HISTOSEG_SHARED", Path(__file__).resolve().parents[2] / "shared"))
QP = ("samples", "qupath-geojson")


def shared_path(*parts) -> Path:
    """A path under ../shared, or skip the test when it is missing (never copied here)."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is not here (real QuPath exports live in ../shared/samples)")
    return path


def _mask_with_holes():
    m = np.zeros((300, 400), np.uint8)
    rr, cc = draw.disk((150, 150), 100)
    m[rr, cc] = 1
    rr, cc = draw.disk((150, 150), 40)
    m[rr, cc] = 0  # a hole
    m[140:160, 140:160] = 1  # an island inside the hole
    rr, cc = draw.ellipse(220, 320, 40, 60, rotation=0.5, shape=m.shape)
    m[rr, cc] = 1
    m[10:12, 300:390] = 1  # thin
    m[250, 200] = 1  # one pixel
    return m


def _iou(a, b):
    return ((a == 1) & (b == 1)).sum() / ((a == 1) | (b == 1)).sum()


@pytest.mark.parametrize("scale,offset", [(1.0, (0, 0)), (4.0, (12000, 3000.5))])
def test_round_trip_with_holes(scale, offset):
    m = _mask_with_holes()
    fc = mask_to_geojson(m, offset=offset, scale=scale, min_region_px=0)  # keep the one-pixel region
    back = geojson_to_mask(json.loads(json.dumps(fc)), m.shape, offset=offset, scale=scale)
    assert _iou(m, back) > 0.99
    assert back[150, 150 + 30] == 0 and back[150, 150] == 1 and back[150, 150 + 80] == 1
    exact = geojson_to_mask(mask_to_geojson(m, tolerance=0, offset=offset, scale=scale, min_region_px=0), m.shape,
                            offset=offset, scale=scale)
    np.testing.assert_array_equal(exact, m)  # without simplification the round trip is exact


def test_qupath_structure():
    m = _mask_with_holes()
    fc = mask_to_geojson(m, classification="Tumor", color=(200, 0, 0), min_region_px=0)
    text = json.dumps(fc, allow_nan=False)
    assert set(fc) == {"type", "features"} and fc["type"] == "FeatureCollection"
    assert len(fc["features"]) == 5  # disk with hole, island, ellipse, line, pixel
    for f in fc["features"]:
        assert f["type"] == "Feature" and uuid.UUID(f["id"]).version == 4
        assert f["properties"] == {"objectType": "annotation",
                                   "classification": {"name": "Tumor", "color": [200, 0, 0]}}
        g = f["geometry"]
        assert g["type"] == "Polygon"
        for ring in g["coordinates"]:
            assert len(ring) >= 4 and ring[0] == ring[-1]
            assert all(round(v, 2) == v for pt in ring for v in pt)
    holed = [f for f in fc["features"] if len(f["geometry"]["coordinates"]) == 2]
    assert len(holed) == 1
    assert '"NaN"' not in text
    multi = mask_to_geojson(m, one_feature=True, min_region_px=0)
    assert [f["geometry"]["type"] for f in multi["features"]] == ["MultiPolygon"]
    np.testing.assert_array_equal(geojson_to_mask(multi, m.shape), geojson_to_mask(fc, m.shape))


def test_coordinates_are_x_then_y_in_slide_pixels():
    m = np.zeros((50, 200), np.uint8)
    m[10:20, 100:150] = 1
    ring = mask_to_geojson(m, offset=(1000, 5000), scale=2.0)["features"][0]["geometry"]["coordinates"][0]
    xs, ys = [p[0] for p in ring], [p[1] for p in ring]
    assert 1000 + 2 * 100 - 1 <= min(xs) and max(xs) <= 1000 + 2 * 150 + 1
    assert 5000 + 2 * 10 - 1 <= min(ys) and max(ys) <= 5000 + 2 * 20 + 1


def test_reads_feature_array_bare_feature_and_classes():
    sq = {"type": "Polygon", "coordinates": [[[2, 2], [8, 2], [8, 8], [2, 8], [2, 2]]]}
    f1 = {"type": "Feature", "geometry": sq, "properties": {"classification": {"name": "Tumor", "color": [1, 2, 3]}}}
    f2 = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [2, 0], [2, 2], [0, 0]]]},
          "properties": {"classification": {"names": ["Stroma", "Positive"], "color": [1, 2, 3]}}}
    pt = {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]}, "properties": {}}
    assert class_name(f2) == "Stroma: Positive"
    m = geojson_to_mask(f1, (10, 10))
    assert m.sum() == 36 and m[2:8, 2:8].all()  # pixel (r, c) is the square [c, c+1] x [r, r+1]
    with pytest.warns(UserWarning, match="1 Point"):
        m = geojson_to_mask([f1, f2, pt], (10, 10), classes={"Tumor": 1, "Stroma: Positive": 2})
    assert m[5, 5] == 1 and m[0, 1] == 2
    m, skipped = geojson_to_mask_report([f1, f2, pt], (10, 10), classes={"Tumor": 1})
    assert skipped == {"Point": 1, "class 'Stroma: Positive'": 1} and set(np.unique(m)) == {0, 1}
    assert geojson_to_mask(sq, (10, 10)).sum() == 36  # a bare geometry


def _all_files():
    root = shared_path(*QP)
    return sorted(root.glob("*/*.geojson"))


def test_every_qupath_export_loads():
    for path in _all_files():
        feats = features_of(path)
        assert feats, path
        xy = np.array([pt for f in feats for p in _polys(f) for ring in p for pt in ring], float)
        scale = max(1.0, float(np.ceil(xy.max() / 1000)))
        h, w = int(xy[:, 1].max() / scale) + 2, int(xy[:, 0].max() / scale) + 2
        mask, skipped = geojson_to_mask_report(path, (h, w), scale=scale)
        assert mask.any(), path
        assert set(skipped) <= {"Point", "MultiPoint", "LineString"}, (path, skipped)


def _polys(f):
    g = f["geometry"]
    return [g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"] if g["type"] == "MultiPolygon" else []


def test_qupath_polygon_with_a_hole_stays_a_hole():
    path = shared_path(*QP, "CosciaLab__Qupath_to_LMD", "2023_02_02__CD163_CD31_CDH1.geojson")
    holed = [f for f in features_of(path) if f["geometry"]["type"] == "Polygon"
             and len(f["geometry"]["coordinates"]) > 1]
    assert holed
    f = holed[0]
    outer = np.asarray(f["geometry"]["coordinates"][0], float)
    x0, y0 = np.floor(outer.min(axis=0)) - 2
    shape = (int(np.ptp(outer[:, 1])) + 6, int(np.ptp(outer[:, 0])) + 6)
    full = geojson_to_mask(f, shape, offset=(x0, y0))
    hole_only = geojson_to_mask({"type": "Polygon", "coordinates": f["geometry"]["coordinates"][1:2]},
                                shape, offset=(x0, y0))
    outer_only = geojson_to_mask({"type": "Polygon", "coordinates": [f["geometry"]["coordinates"][0]]},
                                 shape, offset=(x0, y0))
    assert hole_only.sum() > 0 and not (full & hole_only).any()
    assert full.sum() == outer_only.sum() - hole_only.sum()
    # and it survives our own export: the hole is an inner ring again
    again = mask_to_geojson(full, offset=(x0, y0), min_region_px=0)
    assert any(len(g["geometry"]["coordinates"]) > 1 for g in again["features"])
    assert _iou(geojson_to_mask(again, shape, offset=(x0, y0)), full) > 0.99


def test_maskgeo_annotations_against_their_label_image():
    tifffile = pytest.importorskip("tifffile")
    folder = shared_path(*QP, "wuwenrui555__maskgeo")
    labels = tifffile.imread(folder / "multilabel.ome.tiff")
    feats = features_of(folder / "multilabel_qupath_export.geojson")
    assert len(feats) == 5 and sum(bool(f["geometry"].get("isEllipse")) for f in feats) == 2
    # The annotations were drawn around the labelled objects (not traced from them), so
    # the check is: each covers exactly one object, and the first rectangle
    # [28, 125] x [76, 144] fills exactly its 97 x 68 pixels and holds all of object 120.
    for f in feats:
        inside = labels[geojson_to_mask(f, labels.shape) == 1]
        assert len(set(np.unique(inside).tolist()) - {0}) == 1
    rect = geojson_to_mask(feats[0], labels.shape)
    assert rect.sum() == 97 * 68 and rect[76:144, 28:125].all()
    assert (labels[rect == 1] == 120).sum() == (labels == 120).sum()
