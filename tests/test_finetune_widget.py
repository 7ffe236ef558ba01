"""The Fine-tune widget: trains on an exported folder, writes a versioned checkpoint,
switches the other widgets to it, and Cancel keeps the best checkpoint."""

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
