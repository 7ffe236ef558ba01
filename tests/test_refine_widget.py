"""The Refine widget in a real viewer: strokes refine, undo/redo, hand edits kept."""

import numpy as np
import pytest

pytest.importorskip("napari_histoseg.refinement")
from napari_histoseg.plugin.widgets.refine import RefineWidget  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore")


def two_tissues(h=160, w=200):
    """Left: pale pink stroma-like; right: dark purple nuclei-like; a sharp edge at x=100."""
    rng = np.random.default_rng(0)
    img = np.empty((h, w, 3), np.float32)
    img[:, :100] = (235, 170, 200)
    img[:, 100:] = (90, 50, 140)
    img += rng.normal(0, 4, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture
def refining(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(two_tissues(), name="slide", rgb=True, scale=(0.5, 0.5), translate=(3.0, 4.0))
    viewer.add_labels(np.zeros((160, 200), np.uint8), name="tumour", scale=(0.5, 0.5), translate=(3.0, 4.0))
    w = RefineWidget(viewer)
    viewer.window.add_dock_widget(w)
    w.prior.value = None
    worker = w.start()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: w.session is not None, timeout=5000)
    return w


def wait_idle(w, qtbot):
    qtbot.waitUntil(lambda: w._worker is None and not w._pending, timeout=30_000)


def test_a_stroke_refines_the_mask_without_crossing_the_edge(refining, qtbot):
    w = refining
    assert w.seeds.name == "seeds" and w.seeds.mode == "paint" and w.seeds.selected_label == 1
    np.testing.assert_allclose(w.seeds.scale, (0.5, 0.5))
    w.add_click((80, 150), 1)  # one click on the purple side
    wait_idle(w, qtbot)
    mask = w.viewer.layers["tumour"].data
    assert mask[:, 110:].mean() > 0.95 and mask[:, :90].mean() < 0.05


def test_undo_and_redo_restore_exactly(refining, qtbot):
    w = refining
    w.add_click((80, 150), 1)
    wait_idle(w, qtbot)
    first = w.viewer.layers["tumour"].data.copy()
    w.add_click((80, 40), 1)
    wait_idle(w, qtbot)
    second = w.viewer.layers["tumour"].data.copy()
    assert not np.array_equal(first, second)
    w.undo()
    assert np.array_equal(w.viewer.layers["tumour"].data, first)
    w.undo()
    assert not w.viewer.layers["tumour"].data.any() and not w.seeds.data.any()
    w.redo()
    w.redo()
    assert np.array_equal(w.viewer.layers["tumour"].data, second)


def test_hand_edits_on_the_mask_are_never_overwritten(refining, qtbot):
    w = refining
    mask = w.viewer.layers["tumour"]
    hand = (np.arange(100, 110), np.arange(20, 30))
    mask.data_setitem(hand, 1)  # a person brushes tumour onto the pink side by hand
    w.add_click((80, 150), 1)
    wait_idle(w, qtbot)
    assert (mask.data[hand] == 1).all()  # kept, although the colour says otherwise
    assert mask.data[:, 110:].mean() > 0.9 and mask.data[:, :90].mean() < 0.05


def test_not_tumour_click_and_accept_records_edits(refining, qtbot):
    w = refining
    w.add_click((80, 150), 1)
    wait_idle(w, qtbot)
    w.add_click((20, 190), 2)
    wait_idle(w, qtbot)
    mask = w.viewer.layers["tumour"]
    assert mask.data[20, 190] == 0  # a not-tumour seed is always honoured
    w.accept()
    edits = mask.metadata["histoseg_edits"]
    assert edits.shape == mask.data.shape and edits.sum() == (mask.data != 0).sum()
    assert not w.seeds.data.any()


def test_start_without_a_mask_says_why(make_napari_viewer, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_histoseg.plugin.widgets.refine.show_error", shown.append)
    viewer = make_napari_viewer()
    viewer.add_image(two_tissues(), name="slide", rgb=True)
    w = RefineWidget(viewer)
    assert w.start() is None and "run Segment first" in shown[-1]


def test_erasing_every_seed_returns_to_the_starting_mask(refining, qtbot):
    w = refining
    w.add_click((80, 150), 1)
    wait_idle(w, qtbot)
    assert w.viewer.layers["tumour"].data.any()
    rr, cc = np.nonzero(w.seeds.data)
    w.seeds.data_setitem((rr, cc), 0)  # the eraser
    wait_idle(w, qtbot)
    assert not w.viewer.layers["tumour"].data.any()


def test_the_status_names_the_mask_when_one_exists(make_napari_viewer):
    viewer = make_napari_viewer()
    viewer.add_image(two_tissues(), name="slide", rgb=True)
    w = RefineWidget(viewer)
    assert "Segment an image first" in w.status.value
    viewer.add_labels(np.zeros((160, 200), np.uint8), name="tumour")
    assert "Segment an image first" not in w.status.value and "'tumour'" in w.status.value


def test_seed_colours_differ_from_the_mask_colour(refining):
    w = refining
    mask = w.viewer.layers["tumour"]
    from napari_histoseg.plugin.widgets._layers import tumour_colormap

    mask.colormap = tumour_colormap()
    colours = [tuple(np.round(w.seeds.colormap.map(v), 2)) for v in (1, 2)]
    assert tuple(np.round(mask.colormap.map(1), 2)) not in colours and colours[0] != colours[1]


def test_every_refinement_method_can_be_chosen_and_applies_at_start(make_napari_viewer, qtbot):
    from napari_histoseg.refinement.params import METHODS

    viewer = make_napari_viewer()
    viewer.add_image(two_tissues(), name="slide", rgb=True)
    viewer.add_labels(np.zeros((160, 200), np.uint8), name="tumour")
    w = RefineWidget(viewer)
    assert set(w.method.choices) == set(METHODS)
    w.prior.value = None
    w.method.value = "lgc"
    worker = w.start()
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        pass
    qtbot.waitUntil(lambda: w.session is not None, timeout=5000)
    assert w.session.params["method"] == "lgc"
    w.method.value = "region"  # the running session keeps its method
    assert w.session.params["method"] == "lgc"


def test_a_brush_stroke_stays_near_where_it_was_painted_and_a_click_takes_its_region(refining, qtbot):
    from scipy import ndimage

    w = refining
    line = np.zeros((160, 200), bool)
    line[78:83, 148:153] = True   # a 5 px dab: by its shape a click, but painted with the brush
    w.seeds.data_setitem(np.nonzero(line), 1)  # what the brush does
    wait_idle(w, qtbot)
    mask = w.viewer.layers["tumour"].data
    assert mask[line].all()
    assert mask[ndimage.distance_transform_edt(~line) > 40].max() == 0, "a stroke does not flood its colour"
    w.add_click((20, 170), 1)
    wait_idle(w, qtbot)
    assert w.viewer.layers["tumour"].data[:, 110:].mean() > 0.95
