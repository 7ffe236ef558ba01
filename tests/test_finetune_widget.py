"""The Fine-tune widget: trains on an exported folder, writes a versioned checkpoint,
switches the other widgets to it, and Cancel keeps the best checkpoint."""

from pathlib import Path

import numpy as np
import pytest

from napari_histoseg.models import read_meta
from napari_histoseg.plugin.widgets.finetune import FineTuneWidget
from napari_histoseg.plugin.widgets.segment import SegmentWidget
from napari_histoseg.tumour.export import export_tiles

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def dataset(tmp_path, he_image):
    mask = np.zeros((512, 512), np.uint8)
    mask[100:400, 50:300] = 1
    export_tiles(np.ascontiguousarray(he_image[:512, :512]), mask, tmp_path / "ds", tile=256)
    return tmp_path / "ds"


def test_finetune_writes_a_new_version_and_switches_segment(make_napari_viewer, qtbot, dataset, random_checkpoint):
    viewer = make_napari_viewer()
    segment = SegmentWidget(viewer)
    w = FineTuneWidget(viewer)
    w.dataset.value = dataset
    w.model_choice.use_file(random_checkpoint)
    w.epochs.value = 1
    assert w.run() is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=240_000)
    out = dataset / "models" / "random unet-mobilenet_v2-ft1.safetensors"
    assert out.is_file(), w.status.value
    meta = read_meta(out)
    assert meta.model_version == "0+ft1" and meta.training["settings"]["init_checkpoint"] == str(random_checkpoint)
    assert str(segment.model_choice.ref()) == str(out)  # the Segment widget now uses it
    assert "now use it" in w.status.value


def test_finetune_without_a_dataset_says_so(make_napari_viewer, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_histoseg.plugin.widgets.finetune.show_error", shown.append)
    w = FineTuneWidget(make_napari_viewer())
    assert w.run() is None and "dataset.json" in shown[-1]


def test_the_two_ways_to_learn_have_their_own_headings(make_napari_viewer):
    viewer = make_napari_viewer()
    _, w = viewer.window.add_plugin_dock_widget("napari-histoseg", "Fine-tune the model")
    order = list(w)
    slide, folder = w._headings
    assert "Learn from this slide" in slide.value and "exported folder" in folder.value
    # each heading sits directly above its own settings, and starts at the panel's left edge
    assert order.index(slide) < order.index(w.slide_image) < order.index(w.learn_button) < order.index(folder)
    assert order.index(folder) < order.index(w.dataset) < order.index(w.lr)
    assert not slide._labeled_widget_ref()._label_widget.visible


def _slide(viewer, he_image, edited=True):
    image = viewer.add_image(np.ascontiguousarray(he_image[:256, :384]), name="slide", rgb=True)
    mask = np.zeros((256, 384), np.uint8)
    mask[40:200, 30:150] = 1
    edits = np.zeros_like(mask, bool)
    if edited:
        edits[40:60, 30:150] = True  # the person's correction, inside the first 256 px field
    tumour = viewer.add_labels(mask, name="tumour", metadata={"histoseg_edits": edits})
    return image, tumour


def test_learn_from_my_corrections_end_to_end_in_a_real_viewer(make_napari_viewer, qtbot, he_image,
                                                               random_checkpoint, tmp_path):
    from napari_histoseg.plugin.widgets._model_choice import ModelChoice

    viewer = make_napari_viewer()
    image, tumour = _slide(viewer, he_image)
    accepted = tumour.data.copy()
    segment = SegmentWidget(viewer)
    _, w = viewer.window.add_plugin_dock_widget("napari-histoseg", "Fine-tune the model")
    w.model_choice.use_file(random_checkpoint)
    w.dataset.value = tmp_path  # the adapted model goes to its models/ folder
    w.seconds.value = 10
    assert w.slide_image.value is image and w.slide_mask.value is tumour
    seen = []
    assert w.learn() is not None
    qtbot.waitUntil(lambda: seen.append(w.status.value) or w.worker is None, timeout=240_000)
    assert any("learning" in s and "loss" in s for s in seen), seen   # progress shown while it ran
    new = viewer.layers["tumour (adapted)"]
    assert "New model" in w.status.value, w.status.value
    out = Path(new.metadata["model"])
    meta = read_meta(out)
    assert meta.model_version == "0+adapt1"
    assert [c["id"] for c in meta.training["adaptation"]["corrections"]] == ["slide-y0-x0"]
    assert meta.training["adaptation"]["corrections"][0]["edited_pixels"] == 20 * 120
    np.testing.assert_array_equal(new.data[:256, :256], accepted[:256, :256])  # the corrected field stays
    assert np.array_equal(tumour.data, accepted)                                # the person's layer too
    assert str(segment.model_choice.ref()) == str(out)                         # every chooser offers it
    offered = dict((v, k) for k, v in ModelChoice._choices())
    assert "adapted" in offered[str(out)] and str(random_checkpoint) in offered  # the original is offered too
    w.model_choice.model.value = "bundled"                                      # the original, one click away
    assert w.model_choice.ref() == "bundled"


def test_learn_without_corrections_says_what_to_do(make_napari_viewer, he_image, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_histoseg.plugin.widgets.finetune.show_warning", shown.append)
    viewer = make_napari_viewer()
    _slide(viewer, he_image, edited=False)
    w = FineTuneWidget(viewer)
    assert w.learn() is None and "Accept" in shown[-1]


def test_cancel_while_learning_keeps_the_model_in_use(make_napari_viewer, qtbot, he_image, random_checkpoint,
                                                     tmp_path):
    viewer = make_napari_viewer()
    _slide(viewer, he_image)
    w = FineTuneWidget(viewer)
    w.model_choice.use_file(random_checkpoint)
    w.dataset.value = tmp_path
    w.seconds.value = 120
    assert w.learn() is not None
    w.cancel()
    qtbot.waitUntil(lambda: w.worker is None, timeout=240_000)
    assert "nothing was written" in w.status.value, w.status.value
    assert "tumour (adapted)" not in viewer.layers
    assert w.model_choice.ref() == str(random_checkpoint)
    assert not (tmp_path / "models").exists() or not list((tmp_path / "models").glob("*.safetensors"))
