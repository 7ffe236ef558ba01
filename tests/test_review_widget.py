"""The Review widget in a real viewer: the queue, the canvas, keys, resume, corrections kept."""

import numpy as np
import pytest
from qtpy.QtCore import Qt

from napari_histoseg.plugin.widgets.review import FIELD_LAYER, STATUS_LAYER

pytestmark = pytest.mark.filterwarnings("ignore")
NAME = "Review slide (field by field)"


def probability(h=1000, w=1000):
    """Sure tumour on the left, ever less sure to the right (so the order is known)."""
    p = np.zeros((h, w), np.float32)
    p[:, :250] = 0.99
    p[:, 500:] = np.linspace(0.05, 0.5, w - 500)[None, :]
    return p


def open_review(viewer, he_image, folder, reviewer="A. Path"):
    viewer.add_image(he_image, name="slide", rgb=True)
    p = probability()
    viewer.add_image(p, name="tumour probability")
    viewer.add_labels((p >= 0.5).astype(np.uint8), name="tumour")
    _, w = viewer.window.add_plugin_dock_widget("napari-histoseg", NAME)
    w.folder.value = str(folder)
    w.size.value = 256
    w.reviewer.value = reviewer
    w.start()
    assert w.state is not None, "the review did not start"
    return w


def in_view(viewer, f, src):
    """Whether the canvas is centred on field ``f`` and shows all of it."""
    cy, cx = viewer.camera.center[-2:]
    y0, x0 = src.translate[0] + f.y * src.scale[0], src.translate[1] + f.x * src.scale[1]
    h, w = f.h * src.scale[0], f.w * src.scale[1]
    return y0 <= cy <= y0 + h and x0 <= cx <= x0 + w and viewer.camera.zoom * max(h, w) <= min(viewer.canvas.size)


def press(viewer, qtbot, key):
    canvas = viewer.window._qt_viewer.canvas._scene_canvas.native
    canvas.setFocus()
    qtbot.keyClick(canvas, key)


def test_the_queue_steps_in_ranked_order_and_the_canvas_follows(make_napari_viewer, he_image, tmp_path):
    viewer = make_napari_viewer()
    w = open_review(viewer, he_image, tmp_path)
    st = w.state
    scores = [f.score for f in st.fields]
    assert scores == sorted(scores, reverse=True) and len(st.fields) == 16
    assert st.fields[0].x >= 750 > st.fields[-1].x   # least sure (p near 0.5) first, sure tumour last
    seen = []
    for k in range(3):
        f = st.fields[k]
        assert in_view(viewer, f, w.source)
        layer = viewer.layers[FIELD_LAYER]
        assert layer.data.shape == (f.h, f.w) and tuple(layer.translate[-2:]) == (f.y, f.x)
        assert f"Field {k + 1} of 16" in w.where.value
        seen.append(f.index)
        w.next_button.clicked.emit()
    assert seen == [f.index for f in st.fields[:3]]
    w.prev_button.clicked.emit()
    assert st.position == 2 and in_view(viewer, st.fields[2], w.source)


def test_accept_and_flag_keys_and_status_colours(make_napari_viewer, he_image, tmp_path, qtbot):
    viewer = make_napari_viewer()
    w = open_review(viewer, he_image, tmp_path)
    st = w.state
    assert "n next" in w.keys.value and "a accept" in w.keys.value
    first, second = st.fields[0], st.fields[1]
    press(viewer, qtbot, Qt.Key.Key_A)
    assert st.status(first) == "accepted" and st.position == 1
    press(viewer, qtbot, Qt.Key.Key_F)
    assert st.status(second) == "flagged" and st.position == 2
    press(viewer, qtbot, Qt.Key.Key_S)
    press(viewer, qtbot, Qt.Key.Key_P)
    assert st.status(st.fields[2]) == "skipped" and st.position == 2
    assert w.progress.value.startswith("2 of 16 fields reviewed") and "1 flagged" in w.progress.value
    colours = viewer.layers[STATUS_LAYER].edge_color
    distinct = {tuple(np.round(colours[k], 2)) for k in (0, 1, 2, 3)}   # accepted, flagged, current, unreviewed
    assert len(distinct) == 4


def test_statuses_persist_across_closing_and_reopening(make_napari_viewer, he_image, tmp_path):
    viewer = make_napari_viewer()
    w = open_review(viewer, he_image, tmp_path)
    done = [f.index for f in w.state.fields[:2]]
    w.accept_button.clicked.emit()
    w.flag_button.clicked.emit()
    viewer.close()

    again = make_napari_viewer()
    w2 = open_review(again, he_image, tmp_path)
    st = w2.state
    assert st.resumed and [st.status(i) for i in done] == ["accepted", "flagged"]
    assert st.position == 2 and in_view(again, st.fields[2], w2.source)    # on where the review stopped
    assert w2.progress.value.startswith("2 of 16 fields reviewed")
    other = open_review(make_napari_viewer(), he_image, tmp_path, reviewer="B. Second")
    assert other.state.status(done[0]) == "unreviewed" and not other.state.resumed
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["A._Path.json", "B._Second.json"]


def test_a_correction_survives_moving_on_and_back(make_napari_viewer, he_image, tmp_path):
    viewer = make_napari_viewer()
    w = open_review(viewer, he_image, tmp_path)
    f = w.field
    layer = viewer.layers[FIELD_LAYER]
    painted = layer.data.copy()
    painted[10:60, 10:60] = 1
    layer.data = painted                       # as a brush (or the Refine dock) leaves it
    assert w.state.status(f) == "corrected" and (tmp_path / "A._Path-edits").is_dir()   # kept at once
    w.next_button.clicked.emit()
    assert w.state.status(f) == "corrected"
    w.prev_button.clicked.emit()
    assert w.field is f and np.array_equal(viewer.layers[FIELD_LAYER].data, painted)
    w.accept_button.clicked.emit()                 # accepting a corrected field keeps the correction
    assert w.state.status(f) == "corrected"
    recs = w.export(tmp_path / "dataset")
    assert [r["review_status"] for r in recs] == ["corrected"] and "edits" in recs[0]


def test_refine_opens_on_the_field_crop(make_napari_viewer, he_image, tmp_path, qtbot):
    viewer = make_napari_viewer()
    w = open_review(viewer, he_image, tmp_path)
    w.refine_button.clicked.emit()
    r = w._refine
    assert r is not None and r.mask.value is viewer.layers[FIELD_LAYER]
    qtbot.waitUntil(lambda: r.session is not None, timeout=60_000)
    assert viewer.layers["seeds"].data.shape == viewer.layers[FIELD_LAYER].data.shape


def test_a_segment_slides_result_is_reviewed_in_its_store(make_napari_viewer, tmp_path):
    pytest.importorskip("zarr")
    from napari_histoseg.wsi import omezarr

    p = probability(512, 512)
    root, _ = omezarr.create_store(tmp_path / "s.ome.zarr", shape=p.shape, chunk=256, mpp=0.5,
                                   settings={"x": 1})
    omezarr.write_block(root, 0, 0, np.rint(p * 255).astype(np.uint8), (p >= 0.5).astype(np.uint8))
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "s.ome.zarr"), plugin="napari-histoseg")
    _, w = viewer.window.add_plugin_dock_widget("napari-histoseg", NAME)
    w.size.value = 128
    w.reviewer.value = "A"
    w.start()
    assert w.state is not None and len(w.state.fields) == 16
    assert (tmp_path / "s.ome.zarr" / "histoseg-review" / "A.json").is_file()
    f = w.field
    layer = viewer.layers[FIELD_LAYER]
    assert not layer.multiscale and layer.data.shape == (128, 128)
    assert tuple(layer.translate[-2:]) == pytest.approx(tuple(np.add(w.source.translate, np.multiply((f.y, f.x), 0.5))))
    assert in_view(viewer, f, w.source)
