"""Quantification figures against hand-computed values."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_histoseg.tumour.quantify import quantify, rows, to_csv


def _known():
    m = np.zeros((100, 100), np.uint8)
    m[90:100, :] = 255  # 1000 unknown pixels count for nothing
    m[10:30, 5:35] = 1  # 20 x 30 = 600 px, in the tissue
    m[50:60, 70:80] = 1  # 10 x 10 = 100 px, outside the detected tissue
    tissue = np.zeros((100, 100), bool)
    tissue[:, :50] = True  # 5000 px, 4500 of them not ignored
    return m, tissue


def test_figures_equal_hand_computed_values():
    m, tissue = _known()
    r = quantify(m, mpp=0.25, tissue=tissue, min_region_px=0)
    px = 0.25 ** 2  # µm² per pixel
    assert r["unit"] == "µm²" and r["warnings"] == []
    assert r["tumour_px"] == 700
    assert r["tumour_area_um2"] == pytest.approx(700 * px) == 43.75
    assert r["tumour_area_mm2"] == pytest.approx(43.75e-6)
    # tissue: 90 valid rows x 50 columns, plus the 100 tumour pixels outside it
    assert r["tissue_px"] == 4600 and r["tissue_area_um2"] == pytest.approx(4600 * px)
    assert r["tumour_fraction"] == pytest.approx(700 / 4600)
    assert r["stroma_px"] == 3900 and r["tumour_stroma_ratio"] == pytest.approx(700 / 3900)
    assert r["n_regions"] == 2
    big, small = r["regions"]
    assert (big["id"], big["area_px"], big["area_um2"]) == (1, 600, pytest.approx(37.5))
    assert (small["area_px"], small["area_um2"]) == (100, pytest.approx(6.25))
    assert (big["centroid_x"], big["centroid_y"]) == (pytest.approx(19.5), pytest.approx(19.5))
    assert big["bbox"] == [5, 10, 35, 30]


def test_tissue_from_the_image():
    m, tissue = _known()
    image = np.full((100, 100, 3), 245, np.uint8)  # glass
    image[:, :50] = (150, 60, 140)  # stained
    assert quantify(m, image=image, mpp=0.25, min_region_px=0) == quantify(m, mpp=0.25, tissue=tissue,
                                                                            min_region_px=0)


def test_without_mpp_areas_are_pixels_with_a_warning():
    m, tissue = _known()
    r = quantify(m, tissue=tissue)
    assert r["unit"] == "px" and r["tumour_area_um2"] is None and r["tumour_px"] == 700
    assert any("mpp" in w for w in r["warnings"])
    assert ("tumour area", 700, "px") in rows(r)
    with pytest.raises(ValueError, match="mpp"):
        quantify(m, mpp=0)


def test_without_tissue_and_regions_are_four_connected():
    m = np.zeros((10, 10), np.uint8)
    m[2, 2] = m[3, 3] = 1  # diagonal neighbours: two regions, as two GeoJSON polygons
    r = quantify(m, mpp=1.0, min_region_px=0)
    assert r["tumour_fraction"] is None and r["n_regions"] == 2 and r["warnings"]


def test_csv(tmp_path):
    m, tissue = _known()
    path = to_csv(quantify(m, mpp=0.25, tissue=tissue, min_region_px=0), tmp_path / "out" / "report.csv")
    with open(path, encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == ["measure", "value", "unit"]
    d = {(name, unit): value for name, value, unit in table[1:]}
    assert float(d[("tumour area", "µm²")]) == 43.75
    assert float(d[("tumour fraction of tissue", "")]) == pytest.approx(700 / 4600)
    assert float(d[("region 2 area", "µm²")]) == 6.25
    assert d[("tumour regions", "")] == "2"


def _specks_and_diagonals():
    """A refined-looking mask: two blocks, a pair of blocks that meet only at a corner,
    a diagonal staircase of single pixels, 1-px specks and a 1-px hole."""
    m = np.zeros((200, 200), np.uint8)
    m[10:60, 10:60] = 1
    m[30, 30] = 0                       # a 1-px hole inside
    m[100:140, 100:140] = 1
    m[140:180, 140:180] = 1             # touches the block above only at a corner
    for i in range(20):
        m[5 + i, 150 + i] = 1           # a diagonal staircase of single pixels
    m[190, ::7] = 1                     # a row of 1-px specks
    return m


def test_quantify_and_geojson_count_the_same_regions():
    from napari_histoseg.core.geojson import mask_to_geojson_report
    from napari_histoseg.core.geojson_import import geojson_to_mask

    m = _specks_and_diagonals()
    before = m.copy()
    for kw in ({}, {"mpp": 0.5}, {"min_region_px": 0}, {"min_region_um2": 0, "mpp": 0.5}):
        q = quantify(m, **kw)
        fc, report = mask_to_geojson_report(m, **kw)
        assert q["n_regions"] == len(fc["features"]) == report["regions"], kw
        assert q["dropped_regions"] == report["dropped_regions"], kw
    q = quantify(m, mpp=0.5)   # 50 µm² = 200 px at 0.5 µm/px
    assert q["n_regions"] == 3 and q["dropped_regions"] == 20 + 29 and q["dropped_px"] == 49
    assert q["filled_holes"] == 1 and q["tumour_px"] == 3 * 1600 + 900
    assert ("specks left out", 49, "under 200 px") in rows(q)
    assert quantify(m, min_region_px=0)["n_regions"] == 3 + 20 + 29
    fc, _ = mask_to_geojson_report(m, mpp=0.5)
    assert geojson_to_mask(fc, m.shape).sum() == q["tumour_px"]   # QuPath sees what Measure measured
    np.testing.assert_array_equal(m, before)                       # the person's mask is untouched


def test_minimum_region_size_in_um2_or_px():
    from napari_histoseg.core.regions import min_region_px

    assert min_region_px(mpp=0.5) == 200 and min_region_px(mpp=0.25) == 800
    assert min_region_px() == 16 and min_region_px(min_region_px=0) == 0
    assert min_region_px(mpp=1.0, min_region_um2=10) == 10
    with pytest.raises(ValueError, match="mpp"):
        min_region_px(min_region_um2=10)
