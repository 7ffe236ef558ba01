"""The Classify widget in a real viewer: drawn regions each get a label and a probability."""

import numpy as np
import pytest

from napari_histoseg.models import ModelMeta, build_model, save_checkpoint
from napari_histoseg.plugin.widgets.classify import ClassifyWidget

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def one_thread():
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)  # two spinning threads crawl on the shared 2-core machine
    yield
    torch.set_num_threads(n)


@pytest.fixture
def classifying(make_napari_viewer, he_image, tmp_path, one_thread):
    import torch

    torch.manual_seed(0)
    path = tmp_path / "tiny.safetensors"
    save_checkpoint(build_model("classifier-mobilenet_v2", classes=2), path, ModelMeta(
        arch="classifier-mobilenet_v2", task="classification", arch_kwargs={"classes": 2},
        classes={"0": "benign", "1": "malignant"}, tile_size=64, mpp=0.5, name="tiny"))
    viewer = make_napari_viewer()
    viewer.add_image(np.ascontiguousarray(he_image[:256, :320]), name="slide", rgb=True,
                     scale=(0.5, 0.5), translate=(10.0, 20.0), metadata={"mpp": 0.5})
    w = ClassifyWidget(viewer)
    w.model.value = str(path)
    return w


def run_and_wait(w, qtbot):
    worker = w.run()
    assert worker is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)


def test_two_drawn_regions_each_get_a_label_and_a_probability(classifying, qtbot):
    w = classifying
    v = w.viewer
    # two rectangles in world units (the image is at 0.5 µm/px, translated by (10, 20))
    shapes = v.add_shapes([np.array([[12, 22], [12, 70], [60, 70], [60, 22]]),
                           np.array([[70, 90], [70, 170], [130, 170], [130, 90]])],
                          shape_type="rectangle", name="regions")
    w.reset_choices()
    w.what.value = "shapes"
    w.shapes.value = shapes
    run_and_wait(w, qtbot)
    pts = v.layers["classification"]
    assert len(pts.data) == 2
    texts = list(pts.features["text"])
    for name, text in zip(("shape 1", "shape 2"), texts):
        assert text.startswith(name) and ("benign" in text or "malignant" in text)
        p = float(text.split()[3])
        assert 0.5 <= p <= 1.0  # the probability of the label shown
    # each point lies inside its rectangle, in world coordinates
    world = pts.data * np.asarray(pts.scale) + np.asarray(pts.translate)
    assert 12 <= world[0][0] <= 60 and 22 <= world[0][1] <= 70
    assert 70 <= world[1][0] <= 130 and 90 <= world[1][1] <= 170
    cam = v.layers["classifier Grad-CAM"]
    np.testing.assert_allclose(cam.scale, (0.5, 0.5))
    assert cam.data.max() > 0 and "2 region(s) classified" in w.status.value


def test_tumour_regions_and_a_too_small_one(classifying, qtbot):
    w = classifying
    mask = np.zeros((256, 320), np.uint8)
    mask[10:140, 10:150] = 1      # big enough
    mask[200:210, 250:258] = 1    # far too small: refused with a message, the other still classified
    w.viewer.add_labels(mask, name="tumour", scale=(0.5, 0.5), translate=(10.0, 20.0))
    w.reset_choices()
    w.what.value = "tumour"
    run_and_wait(w, qtbot)
    assert len(w.viewer.layers["classification"].data) == 1
    assert "1 refused" in w.status.value


def test_many_too_small_regions_give_one_notification(classifying, qtbot, monkeypatch):
    told = []
    monkeypatch.setattr("napari_histoseg.plugin.widgets.classify.show_warning", told.append)
    w = classifying
    mask = np.zeros((256, 320), np.uint8)
    mask[10:140, 10:150] = 1
    for x in range(170, 310, 20):
        mask[200:206, x:x + 6] = 1    # seven specks, each too small
    w.viewer.add_labels(mask, name="tumour", scale=(0.5, 0.5), translate=(10.0, 20.0))
    w.reset_choices()
    w.what.value = "tumour"
    w.gradcam.value = False
    run_and_wait(w, qtbot)
    refused = [m for m in told if "not classified" in m]
    assert len(refused) == 1 and refused[0].startswith("7 of 8"), told
    assert "classification labels" in w.viewer.layers  # the label text, on its dark box


def test_grayscale_view_gives_a_notification_not_a_crash(make_napari_viewer, qtbot, one_thread, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.stack([np.full((128, 128), 120, np.uint8)] * 3, -1), rgb=True, name="gray")
    w = ClassifyWidget(viewer)
    save_checkpoint(build_model("classifier-mobilenet_v2", classes=2), tmp_path / "t.safetensors",
                    ModelMeta(arch="classifier-mobilenet_v2", task="classification", arch_kwargs={"classes": 2},
                              classes={"0": "benign", "1": "malignant"}, tile_size=64, mpp=0.5))
    w.model.value = str(tmp_path / "t.safetensors")
    w.gradcam.value = False
    run_and_wait(w, qtbot)
    assert "classification" not in viewer.layers
    assert "0 region(s) classified" in w.status.value and "1 refused" in w.status.value


def test_cancel_adds_nothing(classifying, qtbot):
    w = classifying
    mask = np.zeros((256, 320), np.uint8)
    for i in range(4):
        for j in range(5):
            mask[i * 64 + 2:i * 64 + 62, j * 64 + 2:j * 64 + 62] = 1   # 20 separate regions
    w.viewer.add_labels(mask, name="tumour", scale=(0.5, 0.5), translate=(10.0, 20.0))
    w.reset_choices()
    w.what.value = "tumour"
    assert w.run() is not None
    w.cancel()
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)
    assert "Cancelled" in w.status.value and "classification" not in w.viewer.layers


@pytest.fixture
def two_scale_path(tmp_path, one_thread):
    import torch

    torch.manual_seed(0)
    path = tmp_path / "two.safetensors"
    save_checkpoint(build_model("classifier-mobilenet_v2", classes=2), path, ModelMeta(
        arch="classifier-mobilenet_v2", task="classification", arch_kwargs={"classes": 2},
        classes={"0": "benign", "1": "malignant"}, tile_size=192, mpp=0.394, preprocessing={"fine_mpp": 0.197},
        name="two-scale"))
    return path


def test_the_magnification_field_classifies_a_400x_field_and_warns_when_nuclei_disagree(
        make_napari_viewer, qtbot, two_scale_path, monkeypatch):
    from test_classifier import nuclei_field

    told = []
    monkeypatch.setattr("napari_histoseg.plugin.widgets.classify.show_warning", told.append)
    viewer = make_napari_viewer()
    viewer.add_image(nuclei_field(18.0, n=40), name="field", rgb=True)   # a 700 x 460 high-power field
    _, w = viewer.window.add_plugin_dock_widget("napari-histoseg", "Classify benign or malignant")
    assert isinstance(w, ClassifyWidget) and w.magnification.value is None
    w.model.value = str(two_scale_path)
    w.gradcam.value = False
    w.magnification.value = 400.0
    run_and_wait(w, qtbot)
    text = list(viewer.layers["classification"].features["text"])
    assert len(text) == 1 and "400x stated" in text[0], text
    assert not any("disagree" in m for m in told), told
    # the same viewer, now a 100X field stated as 400X: classified, and the nuclei contradict it
    viewer.layers["field"].data = nuclei_field(4.5)
    told.clear()
    run_and_wait(w, qtbot)
    assert any("disagree" in m and "400x" in m for m in told), told
    # left to the estimate, it says so on the label
    w.magnification.value = None
    run_and_wait(w, qtbot)
    assert "estimated" in list(viewer.layers["classification"].features["text"])[0]
