"""GeoJSON export and import in QuPath's conventions, against real QuPath exports."""

from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
from skimage import draw

from napari_histoseg.core.polygons import ring_area
from napari_histoseg.core.geojson import instances_to_geojson, mask_to_geojson
from napari_histoseg.core.geojson_import import (
    class_codes,
    class_name,
    geojson_to_mask,
    geojson_to_mask_report,
    measurements_of,
)


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
    np.testing.assert_array_equal(back, m)  # exact by default: outlines on pixel edges, nothing simplified
    assert back[150, 150 + 30] == 0 and back[150, 150] == 1 and back[150, 150 + 80] == 1
    lossy = geojson_to_mask(mask_to_geojson(m, tolerance=1.0, offset=offset, scale=scale, min_region_px=0), m.shape,
                            offset=offset, scale=scale)
    assert _iou(m, lossy) > 0.98  # simplification only when asked


def test_qupath_structure():
    m = _mask_with_holes()
    fc = mask_to_geojson(m, classification="Tumor", color=(200, 0, 0), min_region_px=0)
    text = json.dumps(fc, allow_nan=False)
    assert set(fc) == {"type", "features"} and fc["type"] == "FeatureCollection"
    assert len(fc["features"]) == 5  # disk with hole, island, ellipse, line, pixel
    for f in fc["features"]:
        assert f["type"] == "Feature" and uuid.UUID(f["id"]).version == 4
        props = f["properties"]
        assert props["objectType"] == "annotation"
        assert props["classification"] == {"name": "Tumor", "color": [200, 0, 0]}
        assert set(props["measurements"]) == {"Area px^2", "Perimeter px"}
        assert props["metadata"]["software"] == "napari-histoseg"
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


def test_polygon_area_is_the_pixel_count_and_vertices_lie_on_pixel_corners():
    """QuPath measures what Measure counted: a 137-px region is 137 px², a 1-px speck 1 px²."""
    m = np.zeros((40, 40), np.uint8)
    rr, cc = draw.disk((15, 15), 6.6)
    m[rr, cc] = 1
    m[30, 30] = 1
    m[14:17, 14:17] = 0
    m[35, 5:9] = 1
    fc = mask_to_geojson(m, min_region_px=0, mpp=0.5, offset=(100, 200), scale=2.0)
    for f in fc["features"]:
        rings = f["geometry"]["coordinates"]
        area = ring_area(rings[0]) + sum(ring_area(h) for h in rings[1:])
        assert abs(area) == f["properties"]["measurements"]["Area px^2"]
        assert all(float(v).is_integer() for ring in rings for pt in ring for v in pt)
    areas = sorted(f["properties"]["measurements"]["Area px^2"] / 4 for f in fc["features"])
    assert areas[0] == 1 and areas[1] == 4 and sum(areas) == m.sum()
    assert sorted(f["properties"]["measurements"]["Area µm^2"] for f in fc["features"])[0] == 0.25
    square = mask_to_geojson(np.pad(np.ones((3, 5), np.uint8), 1), min_region_px=0)["features"][0]
    assert len(square["geometry"]["coordinates"][0]) == 5  # a rectangle is 4 corners, collinear points dropped


def test_an_empty_class_name_is_never_written():
    m = np.zeros((20, 20), np.uint8)
    m[5:15, 5:15] = 1
    for name in ("", "  ", None):
        f = mask_to_geojson(m, classification=name)["features"][0]
        assert "classification" not in f["properties"]
    nuclei = instances_to_geojson(np.where(m == 1, 3, 0), classification="")
    assert "classification" not in nuclei["features"][0]["properties"]


def test_provenance_metadata_is_strings():
    m = np.zeros((20, 20), np.uint8)
    m[5:15, 5:15] = 1
    meta = mask_to_geojson(m, provenance={"model": "unet v2", "annotator": "AB", "epoch": 3, "empty": ""}
                           )["features"][0]["properties"]["metadata"]
    assert meta["model"] == "unet v2" and meta["annotator"] == "AB" and meta["epoch"] == "3"
    assert "empty" not in meta and all(isinstance(v, str) for v in meta.values())


def test_nuclei_as_detections_one_per_instance():
    labels = np.zeros((60, 60), np.int32)
    for k, (r, c) in enumerate([(10, 10), (10, 40), (40, 25)], start=1):
        rr, cc = draw.disk((r, c), 6)
        labels[rr, cc] = k
    labels[55, 55] = labels[57, 57] = 7  # one instance in two pieces
    fc = instances_to_geojson(labels, classification="Tumor", classes={2: "Immune cells"},
                              measurements={1: {"Circularity": 0.9, "bad": float("nan")}}, mpp=0.25)
    feats = fc["features"]
    assert [f["properties"]["objectType"] for f in feats] == ["detection"] * 4
    assert [f["properties"]["metadata"]["label"] for f in feats] == ["1", "2", "3", "7"]
    assert [class_name(f) for f in feats] == ["Tumor", "Immune cells", "Tumor", "Tumor"]
    assert feats[3]["geometry"]["type"] == "MultiPolygon"
    assert measurements_of(feats[0])["Circularity"] == 0.9 and "bad" not in measurements_of(feats[0])
    for k, f in zip([1, 2, 3, 7], feats):
        assert measurements_of(f)["Area px^2"] == (labels == k).sum()
        back = geojson_to_mask(f, labels.shape, classes="any")
        np.testing.assert_array_equal(back == 1, labels == k)
    json.dumps(fc, allow_nan=False)


def test_measurements_map_and_old_list_form():
    new = {"properties": {"measurements": {"Area µm^2": 12.5, "Mean": "NaN", "n": 3}}}
    old = {"properties": {"measurements": [{"name": "Area µm^2", "value": 12.5}, {"name": "n", "value": 3}]}}
    assert measurements_of(old) == {"Area µm^2": 12.5, "n": 3.0}
    got = measurements_of(new)
    assert got["Area µm^2"] == 12.5 and np.isnan(got["Mean"])
    assert measurements_of({"properties": {}}) == {}


def test_class_mapping_rules():
    sq = [[[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]]]

    def feat(name, dx):
        ring = [[[x + dx, y] for x, y in sq[0]]]
        props = {} if name is None else {"classification": {"name": name, "color": [1, 2, 3]}}
        return {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": ring}, "properties": props}

    fc = [feat("Tumor", 0), feat("Stroma", 5), feat("Immune cells", 10), feat(None, 15), feat("Tumour: Positive", 20)]
    m, skipped = geojson_to_mask_report(fc, (4, 25))
    assert [int(m[1, x]) for x in (1, 6, 11, 16, 21)] == [1, 0, 0, 1, 1]  # default: tumour and unclassified
    assert skipped == {"class 'Stroma'": 1, "class 'Immune cells'": 1}
    assert class_codes(fc, "all") == {"Tumor": 1, "Tumour: Positive": 1, None: 1, "Immune cells": 2, "Stroma": 3}
    m = geojson_to_mask(fc, (4, 25), classes="all")
    assert [int(m[1, x]) for x in (1, 6, 11, 16, 21)] == [1, 3, 2, 1, 1]
    assert set(np.unique(geojson_to_mask(fc, (4, 25), classes="any"))) == {0, 1}
    m = geojson_to_mask(fc, (4, 25), classes={"Stroma": 2}, warn=False)
    assert [int(m[1, x]) for x in (1, 6)] == [0, 2]
    with pytest.raises(ValueError, match="classes must be"):
        geojson_to_mask(fc, (4, 25), classes="tumor-ish")


def test_cli_unclassified_and_class_choice(tmp_path, capsys):
    from napari_histoseg.cli import main
    from napari_histoseg.io.masks import read_mask, write_mask

    m = np.zeros((30, 30), np.uint8)
    m[2:12, 2:12] = 1
    write_mask(tmp_path / "m.png", m)
    assert main(["geojson", str(tmp_path / "m.png"), "-o", str(tmp_path / "u.geojson"), "--classification", ""]) == 0
    text = (tmp_path / "u.geojson").read_text()
    assert '"name": ""' not in text and "classification" not in text
    assert "unclassified" in capsys.readouterr().out
    fc = [{"type": "Feature", "properties": {"classification": {"name": n, "color": [0, 0, 0]}},
           "geometry": {"type": "Polygon", "coordinates": [[[x, 0], [x + 5, 0], [x + 5, 5], [x, 5], [x, 0]]]}}
          for n, x in (("Tumor", 0), ("Stroma", 10))]
    (tmp_path / "in.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": fc}))
    for classes, want in (("tumour", [1, 0]), ("all", [1, 2]), ("Stroma=4", [0, 4])):
        out = tmp_path / f"{classes}.png"
        assert main(["geojson", str(tmp_path / "in.geojson"), "-o", str(out), "--shape", "10,20",
                     "--classes", classes]) == 0
        back = read_mask(out)
        assert [int(back[2, 2]), int(back[2, 12])] == want, classes
    assert main(["geojson", str(tmp_path / "in.geojson"), "-o", str(tmp_path / "x.png"), "--shape", "10,20",
                 "--classes", "Stroma=300"]) == 2
    assert "codes 1-254" in capsys.readouterr().err


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
