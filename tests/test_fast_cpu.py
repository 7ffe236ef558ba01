"""The fast CPU path: ``engine="auto"`` picks PyTorch bf16 only on a CPU with bfloat16
instructions, gives the fp32 map, keeps fp32 selectable, and a widget opens without torch."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from napari_histoseg import testing
from napari_histoseg.core.tiling import predict
from napari_histoseg.models.segmenter import ENGINES, Segmenter, choose_engine, load_segmenter


@pytest.fixture
def checkpoint(tmp_path):
    return testing.save_random_checkpoint(tmp_path / "m.safetensors",
                                          testing.random_segmenter("unet-mobilenet_v2", seed=1, device="cpu"),
                                          tile_size=256)


@pytest.mark.parametrize("flag,engine", [("1", "torch-bf16"), ("0", "torch")])
def test_auto_runs_bf16_only_on_a_cpu_that_has_it(monkeypatch, checkpoint, flag, engine):
    monkeypatch.setenv("HISTOSEG_CPU_BF16", flag)
    chosen, why = choose_engine("cpu")
    assert chosen == engine and "bfloat16" in why
    model = load_segmenter(checkpoint, device="cpu", engine="auto")
    assert model.engine == engine and model.engine_reason == why
    assert model.precision == ("bf16" if flag == "1" else "fp32")
    assert ("bf16" in model.description) == (flag == "1")      # what the widget's message names


def test_torch_stays_fp32_on_a_bf16_cpu(monkeypatch, checkpoint):
    monkeypatch.setenv("HISTOSEG_CPU_BF16", "1")
    model = load_segmenter(checkpoint, device="cpu", engine="torch")
    assert model.precision == "fp32" and not model.half and model.engine == "torch"
    assert {"auto", "torch", "torch-bf16"} <= set(ENGINES)


def test_the_classifier_follows_the_same_rule(monkeypatch, tmp_path):
    from napari_histoseg.classifier.infer import load_classifier
    from napari_histoseg.classifier.task import load_model
    from napari_histoseg.models import ModelMeta, build_model, save_checkpoint

    ckpt = save_checkpoint(build_model("classifier-mobilenet_v2", classes=2), tmp_path / "c.safetensors", ModelMeta(
        arch="classifier-mobilenet_v2", task="classification", arch_kwargs={"classes": 2},
        classes={"0": "benign", "1": "malignant"}, tile_size=64, mpp=0.5, name="tiny"))
    monkeypatch.setenv("HISTOSEG_CPU_BF16", "1")
    assert load_classifier(ckpt, device="cpu").precision == "fp32"             # the reference
    assert load_model(ckpt, device="cpu", engine="auto").precision == "bf16"   # what the widget asks
    monkeypatch.setenv("HISTOSEG_CPU_BF16", "0")
    assert load_model(ckpt, device="cpu", engine="auto").precision == "fp32"
    with pytest.raises(ValueError, match="torch-bf16"):
        load_model(ckpt, device="cpu", engine="onnx-int8")


def test_bf16_gives_the_fp32_map(he_image):
    fp32 = testing.random_segmenter("unet-mobilenet_v2", seed=2, device="cpu")
    bf16 = Segmenter(fp32.module, fp32.meta, device="cpu", precision="bf16")
    image = he_image[:256, :256]
    a = predict(image, fp32, tile=256, overlap=0, tissue_gate=False).probability
    b = predict(image, bf16, tile=256, overlap=0, tissue_gate=False).probability
    assert b.dtype == np.float32 and b.shape == a.shape
    assert np.abs(a - b).mean() < 0.02


def test_precisions_a_model_was_not_checked_in_are_refused():
    from napari_histoseg.models.loaded import LoadedModel

    class Unchecked(LoadedModel):   # a model nobody measured in bfloat16
        task = "segmentation"

    m = Segmenter.random()
    with pytest.raises(ValueError, match="precision must be one of"):
        Segmenter(m.module, m.meta, device="cpu", precision="int4")
    with pytest.raises(ValueError, match="bfloat16"):
        Unchecked(m.module, m.meta, device="cpu", precision="bf16")


def test_every_widget_opens_from_the_plugins_menu_without_torch():
    """Opening the plugin's widgets (as the Plugins menu does) and reading the bundled model's
    metadata must not import torch: a laptop pays its few hundred MB only when a model runs."""
    code = (
        "import sys\n"
        "import napari\n"
        "from npe2 import PluginManager\n"
        "from napari_histoseg.models.bundled import bundled_path\n"
        "from napari_histoseg.models.checkpoint import read_meta\n"
        "viewer = napari.Viewer(show=False)\n"
        "names = [w.display_name for w in PluginManager.instance().get_manifest('napari-histoseg')"
        ".contributions.widgets]\n"
        "for name in names:\n"
        "    viewer.window.add_plugin_dock_widget('napari-histoseg', name)\n"
        "meta = read_meta(bundled_path('segmentation'))\n"
        "print(len(names), meta.tile_size, 'torch' in sys.modules)\n"
        # Quit as napari does when its window closes. Left to the interpreter's own teardown,
        # Qt destroys the never-shown whole-slide options' FileEdit after the QApplication and
        # the process dies with SIGSEGV after the work is done (3 of 4 runs here, one CI run).
        "viewer.close()\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    opened, tile, torch_loaded = out.stdout.strip().splitlines()[-1].split()
    assert int(opened) >= 8 and int(tile) > 0
    assert torch_loaded == "False"
