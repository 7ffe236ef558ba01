"""Quantification figures against hand-computed values."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from napari_histoseg.quantify import quantify, rows, to_csv


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
    r = quantify(m, mpp=0.25, tissue=tissue)
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
    assert quantify(m, image=image, mpp=0.25) == quantify(m, mpp=0.25, tissue=tissue)


def test_without_mpp_areas_are_pixels_with_a_warning():
    m, tissue = _known()
    r = quantify(m, tissue=tissue)
    assert r["unit"] == "px" and r["tumour_area_um2"] is None and r["tumour_px"] == 700
    assert any("mpp" in w for w in r["warnings"])
    assert ("tumour area", 700, "px") in rows(r)
    with pytest.raises(ValueError, match="mpp"):
        quantify(m, mpp=0)


def test_without_tissue_and_regions_connectivity():
    m = np.zeros((10, 10), np.uint8)
    m[2, 2] = m[3, 3] = 1  # diagonal neighbours
    r = quantify(m, mpp=1.0)
    assert r["tumour_fraction"] is None and r["n_regions"] == 1 and r["warnings"]
    assert quantify(m, mpp=1.0, connectivity=1)["n_regions"] == 2


def test_csv(tmp_path):
    m, tissue = _known()
    path = to_csv(quantify(m, mpp=0.25, tissue=tissue), tmp_path / "out" / "report.csv")
    with open(path, encoding="utf-8") as f:
        table = list(csv.reader(f))
    assert table[0] == ["measure", "value", "unit"]
    d = {(name, unit): value for name, value, unit in table[1:]}
    assert float(d[("tumour area", "µm²")]) == 43.75
    assert float(d[("tumour fraction of tissue", "")]) == pytest.approx(700 / 4600)
    assert float(d[("region 2 area", "µm²")]) == 6.25
    assert d[("tumour regions", "")] == "2"
