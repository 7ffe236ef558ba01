"""Saving layers through napari's writer API (File > Save Selected Layers) with our writers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from skimage import draw

from napari_histoseg.plugin.writers import write_detections_geojson
from napari_histoseg.core.geojson_import import class_name, features_of, geojson_to_mask, measurements_of


def _mask():
    m = np.zeros((120, 160), np.uint8)
    rr, cc = draw.disk((60, 60), 30)
    m[rr, cc] = 1
    m[55:65, 55:65] = 0
    m[10:30, 120:150] = 2
    return m


def test_labels_saved_through_napari_read_back_exactly(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    m = _mask()
    layer = viewer.add_labels(m, name="tumour", scale=(0.5, 0.5), translate=(50.0, 100.0),
                              metadata={"mpp": 0.5, "model": "unet-mobilenet_v2"})
    viewer.layers.selection = {layer}
    path = tmp_path / "tumour.geojson"
    written = viewer.layers.save(str(path), selected=True, plugin="napari-histoseg")
    assert written == [str(path)]
    feats = features_of(path)
    assert {class_name(f) for f in feats} == {"Tumor", "Class 2"}
    assert all(f["properties"]["objectType"] == "annotation" for f in feats)
    assert feats[0]["properties"]["metadata"]["model"] == "unet-mobilenet_v2"
    # translate (50, 100) µm at 0.5 µm/px: the mask's corner is slide pixel (200, 100)
    back = geojson_to_mask(path, m.shape, offset=(200, 100), classes={"Tumor": 1, "Class 2": 2})
    np.testing.assert_array_equal(back, m)
    tumour_area = sum(measurements_of(f)["Area µm^2"] for f in feats if class_name(f) == "Tumor")
    assert tumour_area == pytest.approx((m == 1).sum() * 0.25)


def test_nuclei_labels_are_written_as_detections(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels = np.zeros((100, 100), np.int32)
    for k in range(20):
        labels[5 * (k // 5) * 4 + 2: 5 * (k // 5) * 4 + 6, (k % 5) * 20 + 2:(k % 5) * 20 + 8] = k + 1
    viewer.add_labels(labels, name="nuclei")
    path = tmp_path / "nuclei.geojson"
    viewer.layers.save(str(path), plugin="napari-histoseg")
    feats = features_of(path)
    assert len(feats) == 20 and {f["properties"]["objectType"] for f in feats} == {"detection"}
    assert all(measurements_of(f)["Nucleus: Area px^2"] == 24 for f in feats)   # QuPath's cell-detection names
    assert {class_name(f) for f in feats} == {"Nucleus"}


def _measured_nuclei(centres, radius=9, shape=(96, 96)):
    from scipy import ndimage as ndi

    from napari_histoseg.nuclei.features import nucleus_features
    from napari_histoseg.testing import disks_image

    img, truth = disks_image(shape, centres, radius)
    labels = ndi.label(truth > 0)[0].astype(np.int32)
    table = nucleus_features(labels, img, mpp=0.25)
    table["score"] = 0.9
    return labels, table


def test_a_few_detected_nuclei_go_to_qupath_as_measured_detections(make_napari_viewer, tmp_path):
    # Three nuclei are too few to tell apart from class codes by count: the nucleus table says
    # what they are, and QuPath gets its own detections with its own measurement names.
    viewer = make_napari_viewer()
    labels, table = _measured_nuclei([(20, 20), (30, 70), (70, 45)])
    viewer.add_labels(labels, name="nuclei", scale=(0.25, 0.25), metadata={"mpp": 0.25}, features=table)
    path = tmp_path / "nuclei.geojson"
    viewer.layers.save(str(path), plugin="napari-histoseg")   # the first .geojson writer: annotations
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    feats = features_of(json.loads(text))
    assert len(feats) == 3
    for f in feats:
        assert f["properties"]["objectType"] == "detection" and class_name(f) == "Nucleus"
        assert len(f["properties"]["classification"]["color"]) == 3
        ms = measurements_of(f)
        label = int(f["properties"]["metadata"]["label"])
        row = table[table["label"] == label].iloc[0]
        assert ms["Nucleus: Area µm^2"] == pytest.approx(row["area_um2"], abs=0.01)
        assert ms["Nucleus: Eccentricity"] == pytest.approx(row["eccentricity"], abs=0.01)
        assert ms["Nucleus: Hematoxylin OD mean"] == pytest.approx(row["mean_haematoxylin"], abs=0.01)
        assert ms["Detection probability"] == pytest.approx(0.9)
        assert 0 < ms["Nucleus: Circularity"] <= 1


def test_a_nucleus_painted_after_detection_keeps_its_outline_not_its_old_numbers(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    labels, table = _measured_nuclei([(20, 20), (30, 70), (70, 45)])
    layer = viewer.add_labels(labels, name="nuclei", scale=(0.25, 0.25), metadata={"mpp": 0.25}, features=table)
    grown = layer.data.copy()
    grown[12:30, 8:34][grown[12:30, 8:34] == 0] = 1      # the pathologist widened nucleus 1
    layer.data = grown
    path = tmp_path / "nuclei.geojson"
    data, meta, _ = layer.as_layer_data_tuple()                # what napari hands the detections writer
    write_detections_geojson(str(path), data, meta)
    by_label = {int(f["properties"]["metadata"]["label"]): measurements_of(f) for f in features_of(path)}
    assert set(by_label) == {1, 2, 3}
    assert by_label[1]["Nucleus: Area µm^2"] == pytest.approx((grown == 1).sum() * 0.0625, abs=0.01)
    assert "Nucleus: Eccentricity" not in by_label[1] and "Detection probability" not in by_label[1]
    assert "Nucleus: Eccentricity" in by_label[2] and by_label[3]["Detection probability"] == pytest.approx(0.9)


def test_shapes_saved_as_geojson(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    rect = np.array([[10, 20], [10, 60], [40, 60], [40, 20]], float)
    ell = np.array([[50, 50], [50, 70], [60, 70], [60, 50]], float)
    viewer.add_shapes([rect, ell], shape_type=["rectangle", "ellipse"], name="drawn",
                      features={"class": ["Tumor", "Stroma"]})
    path = tmp_path / "drawn.geojson"
    viewer.layers.save(str(path), plugin="napari-histoseg")
    feats = features_of(path)
    assert [class_name(f) for f in feats] == ["Tumor", "Stroma"]
    assert feats[1]["geometry"].get("isEllipse") is True
    filled = geojson_to_mask(feats[0], (80, 80), classes="any")
    assert filled.sum() == 30 * 40 and filled[10:40, 20:60].all()  # the rectangle's pixels, corner to corner
    json.dumps(feats, allow_nan=False)


def test_labels_saved_as_tiff_with_pixel_size(make_napari_viewer, tmp_path):
    from napari_histoseg.io.metadata import resolution_mpp

    viewer = make_napari_viewer()
    viewer.add_labels(_mask(), name="tumour", scale=(0.25, 0.25), metadata={"mpp": 0.25})
    path = tmp_path / "tumour.tif"
    viewer.layers.save(str(path), plugin="napari-histoseg")
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(tif.asarray(), _mask())
        assert resolution_mpp(tif.pages[0]) == pytest.approx(0.25)


def test_labels_saved_as_omezarr_open_in_napari_ome_zarr(make_napari_viewer, tmp_path):
    pytest.importorskip("napari_ome_zarr")
    viewer = make_napari_viewer()
    viewer.add_labels(_mask(), name="tumour", scale=(0.5, 0.5), metadata={"mpp": 0.5})
    path = tmp_path / "tumour.ome.zarr"
    viewer.layers.save(str(path), plugin="napari-histoseg")
    layers = viewer.open(str(path), plugin="napari-ome-zarr")
    kinds = {type(layer).__name__ for layer in layers}
    assert "Labels" in kinds
    [lab] = [la for la in layers if type(la).__name__ == "Labels"]
    np.testing.assert_array_equal(np.asarray(lab.data[0] if lab.multiscale else lab.data), _mask())
    assert tuple(lab.scale) == pytest.approx((0.5, 0.5))
