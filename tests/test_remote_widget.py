"""The widgets with the Backend setting on a server: same layers as locally, a server
lost in mid-run gives a notification and leaves the layers alone, and a retry works."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from napari_histoseg.plugin.widgets import segment as segment_module
from napari_histoseg.plugin.widgets._model_choice import SERVER, THIS_COMPUTER, ModelChoice
from napari_histoseg.plugin.widgets.explain import ExplainWidget
from napari_histoseg.plugin.widgets.segment import SegmentWidget
from napari_histoseg.server.app import ServerConfig, create_app
from napari_histoseg.server.thread import ServerThread

pytestmark = pytest.mark.filterwarnings("ignore")
TOKEN = "widget-token-0123456789abcdef"


def _app(ckpt):
    return create_app(ServerConfig(device="cpu", token=TOKEN, models=[ckpt], bundled=False))


@pytest.fixture
def setup(make_napari_viewer, he_image, random_checkpoint, monkeypatch):
    errors = []
    monkeypatch.setattr(segment_module, "show_error", errors.append)   # refused before running
    monkeypatch.setattr("napari_histoseg.plugin.widgets._runner.show_error", errors.append)   # a run failed
    viewer = make_napari_viewer()
    viewer.add_image(np.ascontiguousarray(he_image[:512, :512]), name="slide", rgb=True)
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.model_choice.use_file(random_checkpoint)
    w.tile.value, w.overlap.value = 128, 32  # 25 tiles: several requests
    srv = ServerThread(_app(random_checkpoint))
    url = srv.start()
    w.model_choice.runs_on.value = SERVER
    w.model_choice.server_url.value, w.model_choice.server_token.value = url, TOKEN
    yield w, srv, errors
    srv.stop()


def _run(w, qtbot):
    worker = w.run()
    assert worker is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=60_000)
    return worker


def test_segment_on_a_server_gives_the_local_layers(setup, qtbot):
    w, srv, errors = setup
    _run(w, qtbot)
    assert not errors and w.status.value.startswith("Done") and srv.url in w.status.value
    remote = w.viewer.layers["tumour probability"].data.copy()
    w.model_choice.runs_on.value = THIS_COMPUTER
    _run(w, qtbot)
    np.testing.assert_allclose(w.viewer.layers["tumour probability"].data, remote, atol=1e-3)
    assert "at http" not in w.status.value  # this run was local


def test_setting_is_shared_by_the_widgets(setup):
    w, srv, _ = setup
    explain = ExplainWidget(w.viewer)
    assert explain.model_choice.runs_on.value == SERVER and explain.model_choice.server_url.value == srv.url
    w.model_choice.server_url.value = "http://127.0.0.1:1"
    assert explain.model_choice.server_url.value == "http://127.0.0.1:1"
    assert explain.model_choice.backend() is w.model_choice.backend()
    assert explain.model_choice.server_token.native.echoMode() != 0  # the token is not shown


def test_server_lost_mid_run_notifies_keeps_layers_and_retry_works(setup, qtbot):
    w, srv, errors = setup
    _run(w, qtbot)
    before = w.viewer.layers["tumour"].data.copy()
    w.viewer.layers["tumour"].data[:10, :10] = 1  # a hand edit the failed run must not touch
    edited = w.viewer.layers["tumour"].data.copy()
    n_layers = len(w.viewer.layers)

    entry = srv.app.state.store.get("random")
    fast, calls = entry.batcher.fn, []

    def slow(batch):
        calls.append(1)
        time.sleep(0.3)
        return fast(batch)

    entry.batcher.fn = slow
    worker = w.run()
    qtbot.waitUntil(lambda: len(calls) >= 2, timeout=30_000)  # in mid-run
    threading.Thread(target=srv.kill).start()
    qtbot.waitUntil(lambda: w.worker is None, timeout=30_000)
    assert errors and "lost the connection" in errors[0] and srv.url in errors[0], errors
    assert w.status.value.startswith("Failed") and w.run_button.enabled
    assert len(w.viewer.layers) == n_layers
    np.testing.assert_array_equal(w.viewer.layers["tumour"].data, edited)

    again = ServerThread(_app(w.model_choice.ref()), port=srv.port)  # the server is back
    again.start()
    try:
        _run(w, qtbot)
        assert w.status.value.startswith("Done"), w.status.value
        assert len(errors) == 1 and before.shape == w.viewer.layers["tumour"].data.shape
    finally:
        again.stop()
    del worker


def test_a_bad_server_url_is_refused_before_running(setup):
    w, _, errors = setup
    w.model_choice.server_url.value = "gpu-box:8765"
    assert w.run() is None and errors and "http://" in errors[0]
    assert ModelChoice  # the setting lives in the shared chooser


def test_finetune_on_a_server_writes_the_checkpoint_here(setup, qtbot, tmp_path, random_checkpoint, he_image):
    from napari_histoseg.models import read_meta
    from napari_histoseg.plugin.widgets.finetune import FineTuneWidget
    from napari_histoseg.tumour.export import export_tiles

    w, srv, _ = setup
    mask = np.zeros((512, 512), np.uint8)
    mask[100:400, 50:300] = 1
    export_tiles(np.ascontiguousarray(he_image[:512, :512]), mask, tmp_path / "ds", tile=256)
    ft = FineTuneWidget(w.viewer)
    assert ft.model_choice.runs_on.value == SERVER  # the shared setting
    ft.dataset.value = tmp_path / "ds"
    ft.model_choice.use_file(random_checkpoint)
    ft.epochs.value = 1
    assert ft.run() is not None
    assert srv.url in ft.status.value
    qtbot.waitUntil(lambda: ft.worker is None, timeout=120_000)
    out = tmp_path / "ds" / "models" / "random unet-mobilenet_v2-ft1.safetensors"
    assert out.is_file(), ft.status.value
    assert read_meta(out).model_version == "0+ft1"
    assert w.model_choice.ref() == str(out) and "now use it" in ft.status.value
    assert len(srv.app.state.jobs.jobs) == 1  # it trained on the server


def test_nuclei_and_classify_run_on_a_server_as_here(make_napari_viewer, he_image, qtbot):
    """'Runs on' a server: the same nuclei as histoseg nuclei's function here, and a label
    for the view from the server's bundled classifier."""
    from napari_histoseg.nuclei.infer import detect_nuclei
    from napari_histoseg.plugin.widgets.classify import ClassifyWidget
    from napari_histoseg.plugin.widgets.nuclei import NucleiWidget

    srv = ServerThread(create_app(ServerConfig(device="cpu", token=TOKEN)))
    url = srv.start()
    try:
        rgb = np.ascontiguousarray(he_image[:256, 384:640])
        viewer = make_napari_viewer()
        viewer.add_image(rgb, name="he", rgb=True, metadata={"mpp": 0.5})
        nuclei, classify = NucleiWidget(viewer), ClassifyWidget(viewer)
        nuclei.model_choice.runs_on.value = SERVER
        nuclei.model_choice.server_url.value, nuclei.model_choice.server_token.value = url, TOKEN
        assert classify.model_choice.runs_on.value == SERVER   # one setting for every widget
        assert nuclei.run() is not None
        qtbot.waitUntil(lambda: nuclei.worker is None, timeout=120_000)
        assert nuclei.status.value.startswith("Done"), nuclei.status.value
        here, _ = detect_nuclei(rgb, None, mpp=0.5, score_threshold=nuclei.score.value, features=False)
        np.testing.assert_array_equal(viewer.layers["nuclei"].data, here)
        classify.mpp.value = 0.5
        assert classify.run() is not None
        qtbot.waitUntil(lambda: classify.worker is None, timeout=120_000)
        assert "1 region(s) classified" in classify.status.value and url in classify.status.value, \
            classify.status.value
        assert len(viewer.layers["classification"].data) == 1
    finally:
        srv.stop()
