"""The Nuclei widget in a real napari viewer (under Xvfb)."""

import numpy as np
import pandas as pd
import pytest
from napari.layers import Labels
from test_nuclei import disks_image

from napari_histoseg.models import ModelMeta, build_model, save_checkpoint
from napari_histoseg.plugin.widgets import nuclei as nuclei_widget
from napari_histoseg.plugin.widgets.nuclei import NucleiWidget

pytestmark = pytest.mark.filterwarnings("ignore")
CENTRES = [(40, 40), (40, 160), (160, 40), (160, 160), (100, 100)]


@pytest.fixture
def widget(make_napari_viewer):
    viewer = make_napari_viewer()
    img, _ = disks_image((200, 200), CENTRES, 14)
    viewer.add_image(img, name="he", rgb=True, scale=(0.5, 0.5), translate=(10.0, 20.0),
                     metadata={"mpp": 0.25})
    w = NucleiWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.method.value = "classical"
    return w


def run_and_wait(w, qtbot, timeout=60_000):
    worker = w.run()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass
    qtbot.waitUntil(lambda: w.worker is None, timeout=5000)


def test_adds_nuclei_labels_with_features_and_tumour_summary(widget, qtbot, tmp_path):
    viewer = widget.viewer
    tumour = np.zeros((200, 200), np.uint8)
    tumour[:100] = 1          # top half: the disks at y=40 (2); y=100 sits on the edge
    viewer.add_labels(tumour, name="tumour", scale=(0.5, 0.5), translate=(10.0, 20.0))
    widget.tumour.value = viewer.layers["tumour"]
    run_and_wait(widget, qtbot)
    layer = viewer.layers["nuclei"]
    assert isinstance(layer, Labels) and layer.data.max() == len(CENTRES)
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    np.testing.assert_allclose(layer.translate, (10.0, 20.0))
    f = layer.features
    for col in ("area_um2", "perimeter_um", "eccentricity", "solidity", "mean_haematoxylin"):
        assert col in f.columns
    assert len(f) == len(CENTRES)
    assert f["area_um2"].mean() == pytest.approx(np.pi * (14 * 0.25) ** 2, rel=0.1)
    assert "tumour" in widget.summary.value and "rest" in widget.summary.value
    assert sorted(f["region"]) == ["rest", "rest", "rest", "tumour", "tumour"]
    path = widget.save_csv(tmp_path / "n.csv")
    assert len(pd.read_csv(path)) == len(CENTRES)


def test_drawn_shape_limits_the_search(widget, qtbot):
    viewer = widget.viewer
    # a rectangle over the left 90 px of the image, drawn in world coordinates
    viewer.add_shapes([np.array([[10, 20], [10, 65], [110, 65], [110, 20]])], shape_type="rectangle",
                      name="region")
    widget.where.value = "drawn shapes"
    widget.shapes.value = viewer.layers["region"]
    run_and_wait(widget, qtbot)
    layer = viewer.layers["nuclei"]
    assert layer.data.max() == 2                     # the two disks at x=40
    assert (layer.features["centroid_x"] < 100).all()  # image pixels, not window pixels


def test_grayscale_image_is_refused_with_a_message(make_napari_viewer, monkeypatch):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((64, 64), np.uint8), name="grey")
    w = NucleiWidget(viewer)
    errors = []
    monkeypatch.setattr(nuclei_widget, "show_error", errors.append)
    assert w.run() is None
    assert errors and "RGB" in errors[0]
    assert "nuclei" not in viewer.layers


def test_mask_rcnn_checkpoint_runs_and_cancels(make_napari_viewer, qtbot, tmp_path):
    kw = {"channels": 32, "representation": 64, "detections": 50}
    path = save_checkpoint(build_model("maskrcnn-mobilenet_v2", **kw), tmp_path / "n.safetensors",
                           ModelMeta(arch="maskrcnn-mobilenet_v2", task="instances", arch_kwargs=kw, mpp=0.25))
    viewer = make_napari_viewer()
    img, _ = disks_image((1400, 1400), CENTRES, 14)
    viewer.add_image(img, name="he", rgb=True)
    w = NucleiWidget(viewer)
    w.method.value, w.model_file.value = "file", path
    with qtbot.waitSignal(w.runner.progressed, timeout=60_000):
        assert w.run() is not None
    with qtbot.waitSignal(w.runner.ended, timeout=60_000) as ended:
        w.cancel_button.clicked.emit()
    assert ended.args == ["cancelled"] and w.worker is None
    assert "nuclei" not in viewer.layers and w.status.value.startswith("Cancelled")
    viewer.layers["he"].data = img[:300, :300]
    run_and_wait(w, qtbot)
    assert "nuclei" in viewer.layers and w.status.value.startswith("Done")


def test_a_tumour_layer_that_appears_later_is_chosen_and_the_csv_path_is_absolute(widget):
    from pathlib import Path

    assert widget.tumour.value is None
    tumour = widget.viewer.add_labels(np.ones((200, 200), np.uint8), name="tumour", scale=(0.5, 0.5),
                                      translate=(10.0, 20.0))
    assert widget.tumour.value is tumour
    assert Path(str(widget.csv.value)).is_absolute()


def test_a_rerun_keeps_nuclei_a_person_edited(widget, qtbot):
    run_and_wait(widget, qtbot)
    layer = widget.viewer.layers["nuclei"]
    layer.data_setitem((np.array([0]), np.array([0])), 99)  # a hand edit
    run_and_wait(widget, qtbot)
    assert widget.viewer.layers["nuclei"] is layer and layer.data[0, 0] == 99
    assert "nuclei [2]" in widget.viewer.layers and "nuclei [2]" in widget.status.value


def test_the_widget_finds_the_nuclei_histoseg_nuclei_finds_at_another_mpp(make_napari_viewer, qtbot, he_image):
    """The image at 0.5 µm/px, the bundled model at 0.25: both resample the same way."""
    from napari_histoseg.nuclei.infer import detect_nuclei

    rgb = np.ascontiguousarray(he_image[:256, 384:640])
    viewer = make_napari_viewer()
    viewer.add_image(rgb, name="he", rgb=True, metadata={"mpp": 0.5})
    w = NucleiWidget(viewer)
    w.method.value = "model"
    run_and_wait(w, qtbot, timeout=120_000)
    assert w.status.value.startswith("Done"), w.status.value
    cli_labels, cli_table = detect_nuclei(rgb, None, mpp=0.5, score_threshold=w.score.value)
    assert cli_labels.max() > 0
    np.testing.assert_array_equal(viewer.layers["nuclei"].data, cli_labels)
    np.testing.assert_allclose(viewer.layers["nuclei"].features["area_um2"], cli_table["area_um2"])


def test_nuclei_saved_for_qupath_lie_where_they_are_on_the_image(widget, qtbot, tmp_path):
    import json

    viewer = widget.viewer
    viewer.add_shapes([np.array([[10, 20], [10, 65], [110, 65], [110, 20]])], shape_type="rectangle",
                      name="region")
    widget.where.value = "drawn shapes"      # the search runs on a window, not the whole image
    widget.shapes.value = viewer.layers["region"]
    run_and_wait(widget, qtbot)
    assert widget.qupath_button.enabled
    path = widget.save_qupath(tmp_path / "n.geojson", kind="cells")
    feats = json.loads(open(path).read())["features"]
    assert len(feats) == 2 and all(f["properties"]["objectType"] == "cell" for f in feats)
    centres = sorted(tuple(np.mean(f["nucleusGeometry"]["coordinates"][0][:-1], axis=0).round())
                     for f in feats)
    assert centres == [(40, 40), (40, 160)]    # (x, y) image pixels of the two disks at x=40
    assert "Nucleus: Area µm^2" in feats[0]["properties"]["measurements"]
