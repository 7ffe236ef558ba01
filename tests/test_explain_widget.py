"""The Explain widget in a real viewer: heat maps placed on the image, cached, clear errors."""

import numpy as np
import pytest

from napari_histoseg.models import ModelMeta, build_model, save_checkpoint
from napari_histoseg.plugin.widgets.explain import ExplainWidget

pytestmark = pytest.mark.filterwarnings("ignore")


@pytest.fixture
def explaining(make_napari_viewer, he_image, random_checkpoint):
    viewer = make_napari_viewer()
    viewer.add_image(np.ascontiguousarray(he_image[:192, :256]), name="slide", rgb=True,
                     scale=(0.5, 0.5), translate=(10.0, 20.0))
    w = ExplainWidget(viewer)
    w.model_choice.use_file(random_checkpoint)
    w.region.value = "whole image"
    return w


def run_and_wait(w, qtbot):
    worker = w.run()
    assert worker is not None
    qtbot.waitUntil(lambda: w.worker is None, timeout=120_000)


def test_gradcam_layer_lands_on_the_image_and_is_cached(explaining, qtbot):
    w = explaining
    w.method.value = "gradcam"
    run_and_wait(w, qtbot)
    layer = w.viewer.layers["explain: Grad-CAM"]
    assert layer.data.shape == (192, 256) and np.isfinite(layer.data).all()
    np.testing.assert_allclose(layer.scale, (0.5, 0.5))
    np.testing.assert_allclose(layer.translate, (10.0, 20.0))
    assert layer.colormap.name == "histoseg heat" and tuple(layer.contrast_limits) == (0.0, 1.0)  # clear to red
    assert w.run() is None and "cache" in w.status.value  # the second time costs nothing
    assert "drove the tumour call" in w.legend.value


def test_entropy_is_a_probability_of_doubt(explaining, qtbot):
    w = explaining
    w.method.value = "entropy"
    run_and_wait(w, qtbot)
    data = w.viewer.layers["explain: Uncertainty: entropy"].data
    assert 0.0 <= data.min() and data.max() <= 1.0 + 1e-6


def test_mc_dropout_of_a_model_without_dropout_says_so(explaining, qtbot, tmp_path, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_histoseg.plugin.widgets._runner.show_error", shown.append)
    w = explaining
    path = save_checkpoint(build_model("unet-resnet50", dropout=0.0), tmp_path / "r50.safetensors",
                           ModelMeta(arch="unet-resnet50", arch_kwargs={"classes": 1, "dropout": 0.0}, tile_size=256))
    w.model_choice.use_file(path)
    w.method.value = "mc-dropout"
    run_and_wait(w, qtbot)
    assert shown and "dropout" in shown[-1].lower()
    assert "explain: Uncertainty: MC dropout" not in w.viewer.layers


def test_shape_target_without_a_shape_is_explained(explaining, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_histoseg.plugin.widgets.explain.show_error", shown.append)
    w = explaining
    w.viewer.add_shapes(name="roi")
    w.target.value = "shape"
    w.shapes.value = w.viewer.layers["roi"]
    assert w.run() is None and "draw a shape" in shown[-1]


def test_the_cost_is_shown_before_and_the_status_says_what_is_shown(explaining, qtbot):
    w = explaining
    w.method.value = "gradcam"
    assert "Estimated" in w.cost.value and "256 x 192 px" in w.cost.value
    cheap = w.cost.value
    w.method.value = "superpixel-shap"
    assert w.cost.value != cheap and "the whole view at once" in w.cost.value
    w.method.value = "tta-boundary"
    run_and_wait(w, qtbot)
    assert "Choose a method" not in w.status.value
    assert "Showing" in w.status.value and "flips/turns + outline" in w.status.value
    layer = w.viewer.layers["explain: Uncertainty: flips/turns + outline"]
    assert 0.0 <= layer.data.min() and layer.data.max() <= 1.0 + 1e-6
    assert "likely errors" in w.legend.value


def test_the_method_list_starts_with_the_defaults():
    from napari_histoseg.explanations.methods import DEFAULT_SALIENCY, DEFAULT_UNCERTAINTY
    from napari_histoseg.explanations.methods import METHODS as ALL
    from napari_histoseg.plugin.widgets.explain import LEGEND, METHODS

    assert [v for _, v in METHODS[:2]] == [DEFAULT_SALIENCY, DEFAULT_UNCERTAINTY]
    assert sorted(v for _, v in METHODS) == sorted(ALL) == sorted(LEGEND)
