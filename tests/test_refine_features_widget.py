"""The Refine widget with the segmentation model's features in the affinities."""

import numpy as np
import pytest

pytest.importorskip("napari_histoseg.refinement")
from napari_histoseg.plugin.widgets.refine import RefineWidget  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


def start(viewer, qtbot, model_ref):
    rng = np.random.default_rng(0)
    img = np.clip(np.array((215, 160, 200)) + rng.normal(0, 6, (128, 160, 3)), 0, 255).astype(np.uint8)
    viewer.add_image(img, name="slide", rgb=True)
    viewer.add_labels(np.zeros((128, 160), np.uint8), name="tumour")
    viewer.add_image(np.full((128, 160), 0.3, np.float32), name="tumour probability",
                     metadata={"model": model_ref})
    w = RefineWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.affinity.value = "mixed"
    assert w.start() is not None
    # not waitSignal(worker.finished): a worker that fails at once (a missing file) can emit it
    # before the wait connects, and the signal is lost; the widget's own state cannot be missed
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    return w


def test_compare_by_the_model_s_features_builds_the_session_from_the_prior_s_model(
        make_napari_viewer, qtbot, random_checkpoint):
    w = start(make_napari_viewer(), qtbot, str(random_checkpoint))
    assert w.session is not None and w.session.params["affinity"] == "mixed"
    assert w.session.graph.colour.shape[1] > 6, "the graph compares more than colour and contrast"
    w.add_click((64, 80), 1)
    qtbot.waitUntil(lambda: w._worker is None and not w._pending, timeout=30_000)
    mask = w.viewer.layers["tumour"].data
    assert mask[64, 80] == 1, "the click is honoured"


def test_a_model_that_cannot_give_features_is_a_message_not_a_dead_viewer(make_napari_viewer, qtbot, tmp_path):
    w = start(make_napari_viewer(), qtbot, str(tmp_path / "gone.safetensors"))
    assert w.session is None
    assert "features" in w.status.value and "colour" in w.status.value
    w.affinity.value = "colour"  # the way out the message names
    worker = w.start()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: w.session is not None, timeout=10_000)
    assert w.session.params["affinity"] == "colour"


def test_a_second_start_on_the_same_image_reuses_the_model_s_features(
        make_napari_viewer, qtbot, random_checkpoint, monkeypatch):
    from napari_histoseg.refinement import features as feats

    runs = []
    real = feats.session_features
    monkeypatch.setattr(feats, "session_features", lambda *a, **k: runs.append(1) or real(*a, **k))
    w = start(make_napari_viewer(), qtbot, str(random_checkpoint))
    first = w.session.graph.colour.copy()
    assert len(runs) == 1
    w.method.value = "region"  # another method: a new session, the same features
    assert w.start() is not None
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert len(runs) == 1, "the second Start did not run the model again"
    assert w.session.params["method"] == "region"
    assert np.array_equal(w.session.graph.colour, first), "the same features give the same graph"
    layer = w.viewer.layers["slide"]
    layer.data = layer.data[:, ::-1].copy()  # another image in the same layer: its own features
    assert w.start() is not None
    qtbot.waitUntil(lambda: w._worker is None, timeout=120_000)
    assert len(runs) == 2 and w.session is not None
