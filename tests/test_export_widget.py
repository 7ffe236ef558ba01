"""The Export & measure widget in a real viewer."""

import json

import numpy as np
import pytest

from napari_histoseg.io.dataset import load_dataset
from napari_histoseg.plugin.widgets.export import ExportWidget

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def exporting(make_napari_viewer, he_image):
    viewer = make_napari_viewer()
    viewer.add_image(np.ascontiguousarray(he_image[:300, :400]), name="slide", rgb=True,
                     scale=(0.25, 0.25), metadata={"mpp": 0.25, "path": None})
    mask = np.zeros((300, 400), np.uint8)
    mask[50:150, 60:260] = 1
    mask[80:120, 100:140] = 0  # a hole (100 µm²: big enough to count as one)
    viewer.add_labels(mask, name="tumour", scale=(0.25, 0.25))
    w = ExportWidget(viewer)
    w.mask.value = viewer.layers["tumour"]
    return w


def test_export_writes_a_dataset_that_reads_back(exporting, tmp_path, qtbot):
    w = exporting
    w.dataset.value = tmp_path / "ds"
    w.tile.value = 256
    worker = w.export()
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    ds = load_dataset(tmp_path / "ds")
    assert len(ds.tiles) == 4  # 300 x 400 in 256 px tiles
    assert "4 tile(s) written" in w.status.value and worker is not None


def test_geojson_round_trip_through_the_widget(exporting, tmp_path):
    w = exporting
    path = w.write_geojson(str(tmp_path / "t.geojson"))
    fc = json.loads(open(path).read())
    assert fc["type"] == "FeatureCollection" and fc["features"][0]["properties"]["classification"]["name"]
    layer = w.read_geojson(path)
    truth = w.viewer.layers["tumour"].data == 1
    got = layer.data == 1
    assert (got & truth).sum() / (got | truth).sum() > 0.99
    np.testing.assert_allclose(layer.scale, (0.25, 0.25))


def test_measure_fills_the_table_in_square_microns(exporting):
    w = exporting
    result = w.measure()
    px = int((w.viewer.layers["tumour"].data == 1).sum())
    assert result["tumour_px"] == px and result["tumour_area_um2"] == pytest.approx(px * 0.0625)
    assert w.table.rowCount() > 3 and w.table.item(0, 2).text() == "µm²"


def test_export_without_a_folder_says_so(exporting, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_histoseg.plugin.widgets.export.show_error", shown.append)
    assert exporting.export() is None and "dataset folder" in shown[-1]
