"""The Segment widget in a real napari viewer (under Xvfb)."""

import numpy as np
import pytest

from napari_histoseg.models import ModelMeta, build_model
from napari_histoseg.plugin.widgets.segment import MODEL_FILE, SegmentWidget

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def widget(make_napari_viewer, he_image, random_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(he_image, name="slide", rgb=True, scale=(0.5, 0.5), translate=(100.0, 40.0))
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model.value = MODEL_FILE
    w.model_file.value = random_checkpoint
    w.tile.value, w.overlap.value = 256, 32
    return w


def run_and_wait(w, qtbot, timeout=60_000):
    worker = w.run()
    assert worker is not None
    with qtbot.waitSignal(worker.finished, timeout=timeout):
        pass
    qtbot.waitUntil(lambda: w.worker is None, timeout=5000)
    return worker


def test_run_adds_layers_placed_on_the_image(widget, qtbot, he_image):
    viewer = widget.viewer
    run_and_wait(widget, qtbot)
    prob, mask = viewer.layers["tumour probability"], viewer.layers["tumour"]
    assert prob.data.shape == mask.data.shape == he_image.shape[:2]
    assert prob.data.dtype == np.float32 and 0 <= prob.data.min() <= prob.data.max() <= 1
    assert set(np.unique(mask.data)) <= {0, 1}
    for layer in (prob, mask):
        np.testing.assert_allclose(layer.scale, (0.5, 0.5))
        np.testing.assert_allclose(layer.translate, (100.0, 40.0))
    assert widget.status.value.startswith("Done")
    assert widget.run_button.enabled and not widget.cancel_button.enabled


def test_cancel_stops_the_run_and_leaves_layers_alone(widget, qtbot):
    viewer = widget.viewer
    widget.tile.value, widget.overlap.value = 64, 0  # many small tiles: a long run
    worker = widget.run()
    with qtbot.waitSignal(worker.yielded, timeout=30_000):
        pass
    with qtbot.waitSignal(widget.runner.ended, timeout=30_000) as ended:
        widget.cancel_button.clicked.emit()
    assert ended.args == ["cancelled"] and widget.worker is None
    assert "tumour" not in viewer.layers and "tumour probability" not in viewer.layers
    assert widget.status.value.startswith("Cancelled") and widget.run_button.enabled


def test_rerun_never_overwrites_hand_edits(widget, qtbot):
    viewer = widget.viewer
    run_and_wait(widget, qtbot)
    mask = viewer.layers["tumour"]
    mask.data[:10, :10] = 1 - mask.data[:10, :10]  # a person's brush stroke
    mask.refresh()
    edited = mask.data.copy()
    run_and_wait(widget, qtbot)
    assert np.array_equal(viewer.layers["tumour"].data, edited)
    assert len([ly for ly in viewer.layers if ly.name.startswith("tumour [")]) == 1


def test_checkpoint_of_another_architecture_becomes_a_notification(widget, qtbot, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_histoseg.plugin.widgets._runner.show_error", shown.append)
    bad = tmp_path / "resnet_claiming_mobilenet.safetensors"
    net = build_model("unet-resnet50")
    import json

    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(bad),
              metadata={"histoseg": json.dumps(ModelMeta(arch="unet-mobilenet_v2").to_json())})
    widget.model_file.value = bad
    widget.run()
    qtbot.waitUntil(lambda: widget.worker is None, timeout=30_000)
    assert "do not match the architecture" in widget.status.value
    assert shown and "Segmentation failed" in shown[-1] and "unet-mobilenet_v2" in shown[-1]
    assert "tumour" not in widget.viewer.layers


def test_grayscale_layer_and_missing_checkpoint_give_messages(widget, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_histoseg.plugin.widgets.segment.show_error", shown.append)
    viewer = widget.viewer
    viewer.add_image(np.zeros((64, 64), np.uint8), name="gray")
    widget.image.value = viewer.layers["gray"]
    assert widget.run() is None and "not an RGB image" in shown[-1]
    widget.image.value = viewer.layers["slide"]
    widget.model_file.value = ""
    assert widget.run() is None and ".safetensors" in shown[-1]


def test_multiscale_level_choice_places_coarse_result(make_napari_viewer, he_image, random_checkpoint, qtbot):
    viewer = make_napari_viewer()
    pyramid = [he_image, np.ascontiguousarray(he_image[::2, ::2])]
    viewer.add_image(pyramid, name="slide", rgb=True, multiscale=True)
    w = SegmentWidget(viewer)
    w.model.value, w.model_file.value = MODEL_FILE, random_checkpoint
    assert w.level.native.isVisibleTo(w.native) and w.level.max == 1
    w.level.value, w.tile.value = 1, 256
    run_and_wait(w, qtbot)
    mask = viewer.layers["tumour"]
    assert mask.data.shape == (500, 500)
    np.testing.assert_allclose(mask.scale, (2.0, 2.0))
    # the coarse result covers the same extent as the full-resolution image
    np.testing.assert_allclose(np.array(mask.extent.world)[1], np.array(viewer.layers["slide"].extent.world)[1], atol=1.5)


@pytest.mark.parametrize("widget_first", [False, True])
def test_plugin_loaded_after_the_viewer_does_not_crash_it(tmp_path, random_checkpoint, widget_first):
    """napari imports the widget (and so torch) after its OpenGL canvas exists, and the
    model is loaded later still, in a worker; with Mesa's software renderer that once
    killed the process (triton's LLVM against Mesa's)."""
    import subprocess
    import sys
    import textwrap

    from napari_histoseg.plugin.samples import sample_path

    early = "from napari_histoseg.plugin.widgets.segment import SegmentWidget" if widget_first else ""
    script = textwrap.dedent(f"""
        import napari, numpy as np
        {early}
        viewer = napari.Viewer(show=False)
        viewer.open({str(sample_path('skin_slide'))!r}, plugin="napari-histoseg")
        from napari_histoseg.plugin.widgets.segment import SegmentWidget
        from napari_histoseg.models.segmenter import Segmenter
        m = Segmenter.from_checkpoint({str(random_checkpoint)!r})
        print("alive", viewer.layers[0].multiscale, m.predict(np.zeros((1, 64, 64, 3), np.uint8)).shape)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "alive True (1, 1, 64, 64)" in out.stdout


def test_a_run_that_ends_while_its_progress_bar_is_made_leaves_no_bar(monkeypatch, qtbot):
    """napari's first progress bar processes Qt events, so a fast failure can finish the
    run inside the first progress update: its message must stand and no bar may stay."""
    from magicgui.widgets import Label

    from napari_histoseg.plugin.widgets import _runner

    bars, status = [], Label(value="")
    runner = _runner.Runner(status)
    monkeypatch.setattr(_runner, "show_error", lambda m: None)

    class Bar:
        def __init__(self, **kwargs):
            bars.append(self)
            self.closed, self.n, self.total = False, 0, kwargs.get("total")
            runner._finish(run, ("failed", ValueError("no such model")))  # the result arrives meanwhile

        def refresh(self):
            pass

        def close(self):
            self.closed = True

    monkeypatch.setattr(_runner, "progress", Bar)

    def work():
        yield 0, 4

    runner.start(work(), lambda out: None, what="Segmentation")
    run = runner._run
    runner._on_report(run, (0, 4))
    assert bars and bars[0].closed and status.value == "Failed: no such model"
    runner._on_report(run, (1, 4))                 # a report still queued from the ended run
    assert status.value == "Failed: no such model" and len(bars) == 1
    # the worker's own result is ignored: wait for its thread (its finished signal may come
    # before a connect made here, as it does under PySide6), then let its signals arrive
    from qtpy.QtCore import QThreadPool

    assert QThreadPool.globalInstance().waitForDone(10_000)
    qtbot.wait(100)
    assert status.value == "Failed: no such model"


@pytest.fixture
def scaled_checkpoint(tmp_path, random_model):
    """The random model, declared to work at 0.5 µm/px."""
    import copy

    from napari_histoseg.models import save_checkpoint

    meta = copy.deepcopy(random_model.meta)
    meta.tile_size, meta.mpp = 256, 0.5
    return save_checkpoint(random_model.module, tmp_path / "scaled.safetensors", meta)


def test_the_pixel_size_comes_from_the_image_and_an_unknown_one_is_said_once(
        make_napari_viewer, he_image, scaled_checkpoint, qtbot, monkeypatch):
    import napari_histoseg.plugin.widgets.segment as seg

    said = []
    monkeypatch.setattr(seg, "show_warning", said.append)
    viewer = make_napari_viewer()
    viewer.add_image(he_image[:300, :400], name="known", rgb=True, metadata={"mpp": 0.25})
    viewer.add_image(he_image[:300, :400], name="unknown", rgb=True)
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model.value = MODEL_FILE
    w.model_file.value = scaled_checkpoint
    w.image.value = viewer.layers["known"]
    assert w.mpp.value == pytest.approx(0.25) and "0.5 µm/px" in w.status.value
    run_and_wait(w, qtbot)
    assert viewer.layers["tumour"].data.shape == (300, 400) and not said   # resampled and back
    w.image.value = viewer.layers["unknown"]
    assert w.mpp.value == 0
    run_and_wait(w, qtbot)
    run_and_wait(w, qtbot)
    assert len(said) == 1 and "Pixel size" in said[0] and "0.5 µm/px" in said[0]
