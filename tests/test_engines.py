"""The CPU engines: ONNX Runtime fp32 and int8 give the mask PyTorch gives."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("onnxruntime")

from napari_histoseg.core.tiling import predict  # noqa: E402
from napari_histoseg.models.onnx import OnnxSegmenter, _weights_hash, shipped_ranges  # noqa: E402
from napari_histoseg.models.segmenter import ENGINES, Segmenter, load_segmenter  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    import os

    before = os.environ.get("HISTOSEG_CACHE")
    os.environ["HISTOSEG_CACHE"] = str(tmp_path_factory.mktemp("cache"))   # exports land here
    yield Segmenter.random(seed=3)
    if before is None:
        os.environ.pop("HISTOSEG_CACHE", None)
    else:
        os.environ["HISTOSEG_CACHE"] = before


@pytest.fixture(scope="module")
def image():
    from napari_histoseg.plugin.samples import breast_carcinoma

    return np.asarray(breast_carcinoma()[0][0])[:512, :512]


def test_onnx_fp32_and_int8_masks_agree_with_torch(model, image):
    ref = predict(image, model, tile=256, overlap=32, tissue_gate=False).probability
    fp32 = OnnxSegmenter(model, threads=1)
    p32 = predict(image, fp32, tile=256, overlap=32, tissue_gate=False).probability
    assert np.abs(p32 - ref).max() < 1e-3                     # the same network, to rounding
    tiles = [image[:256, :256], image[256:, 256:]]
    int8 = OnnxSegmenter(model, threads=1, precision="int8", calibration=tiles)
    assert "int8" in int8.description and int8.calibration == "2 given tiles"
    p8 = predict(image, int8, tile=256, overlap=32, tissue_gate=False).probability
    assert np.abs(p8 - ref).mean() < 0.05                     # a random net's map, close on average
    again = OnnxSegmenter(model, threads=1, precision="int8", calibration=tiles)
    assert again.path == int8.path                            # quantised once, then cached


def test_ranges_for_other_weights_are_not_used(model, tmp_path):
    ckpt = tmp_path / "m.safetensors"
    (tmp_path / "m.int8.json").write_text(json.dumps({"weights_hash": "0" * 16, "ranges": {"x": [0, 1]}}))
    assert shipped_ranges(ckpt, _weights_hash(model.module)) is None
    (tmp_path / "m.int8.json").write_text(json.dumps({"weights_hash": _weights_hash(model.module),
                                                      "ranges": {"x": [0, 1]}}))
    assert shipped_ranges(ckpt, _weights_hash(model.module)) == {"x": [0, 1]}
    (tmp_path / "m.int8.json").write_text("not json")
    assert shipped_ranges(ckpt, _weights_hash(model.module)) is None


def test_unknown_engine_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="onnx-int8"):
        load_segmenter(None, engine="tensorrt")
    assert ENGINES == ("auto", "torch", "torch-bf16", "onnx", "onnx-int8")


def test_int8_quantises_only_the_part_the_shipped_file_names(tmp_path, model, image):
    """A NAME.int8.json with ``int8_nodes`` keeps the rest of the network in fp32: fewer
    quantised tensors than the whole network, a map still close to fp32's, and the engine
    says which part is int8."""
    import onnx

    from napari_histoseg import testing
    from napari_histoseg.models.onnx import collect_ranges

    ckpt = testing.save_random_checkpoint(tmp_path / "m.safetensors", model, tile_size=256)
    loaded = Segmenter.from_checkpoint(ckpt, device="cpu")
    fp32 = OnnxSegmenter(loaded, threads=1)
    ranges = collect_ranges(fp32.path, [fp32._normalise(image[None, :256, :256])])
    (tmp_path / "m.int8.json").write_text(json.dumps({
        "weights_hash": _weights_hash(loaded.module), "ranges": ranges,
        "int8_nodes": ["/decoder/"], "int8_part": "the decoder"}))
    part = OnnxSegmenter(loaded, threads=1, precision="int8")
    assert "int8: the decoder, the rest fp32" in part.calibration
    (tmp_path / "m.int8.json").write_text(json.dumps({"weights_hash": _weights_hash(loaded.module),
                                                      "ranges": ranges}))
    whole = OnnxSegmenter(loaded, threads=1, precision="int8")

    def quantised(path):
        return sum(n.op_type == "QuantizeLinear" for n in onnx.load(str(path)).graph.node)

    assert 0 < quantised(part.path) < quantised(whole.path)
    ref = predict(image, loaded, tile=256, overlap=32, tissue_gate=False).probability
    p8 = predict(image, part, tile=256, overlap=32, tissue_gate=False).probability
    assert np.abs(p8 - ref).mean() < 0.05


def _measure_int8(ckpt, image):
    """Write the NAME.int8.json tools/calibrate_int8.py would write beside ``ckpt`` (the decoder int8)."""
    from napari_histoseg.models.onnx import collect_ranges

    loaded = Segmenter.from_checkpoint(ckpt, device="cpu")
    fp32 = OnnxSegmenter(loaded, threads=1)
    ckpt.with_suffix(".int8.json").write_text(json.dumps({
        "weights_hash": _weights_hash(loaded.module), "int8_nodes": ["/decoder/"], "int8_part": "the decoder",
        "ranges": collect_ranges(fp32.path, [fp32._normalise(image[None, :256, :256])])}))


@pytest.mark.parametrize("vnni", ["1", "0"])
def test_auto_runs_int8_only_where_its_part_was_measured_and_the_cpu_has_vnni(tmp_path, model, image,
                                                                             monkeypatch, vnni):
    from napari_histoseg import testing

    monkeypatch.setenv("HISTOSEG_CPU_VNNI", vnni)
    monkeypatch.setenv("HISTOSEG_CPU_BF16", "0")
    ckpt = testing.save_random_checkpoint(tmp_path / "m.safetensors", model, tile_size=256)
    assert load_segmenter(ckpt, device="cpu", engine="auto").engine == "torch"     # nothing measured
    _measure_int8(ckpt, image)
    auto = load_segmenter(ckpt, device="cpu", engine="auto")
    assert auto.engine == ("onnx-int8" if vnni == "1" else "torch")
    assert ("VNNI" in auto.engine_reason) == (vnni == "1")


@pytest.fixture()
def int8_auto(tmp_path, model, image, monkeypatch):
    """A checkpoint whose int8 part was measured, on a CPU with VNNI: ``auto`` runs ONNX int8."""
    from napari_histoseg import testing

    monkeypatch.setenv("HISTOSEG_CPU_VNNI", "1")
    ckpt = testing.save_random_checkpoint(tmp_path / "m.safetensors", model, tile_size=256)
    _measure_int8(ckpt, image)
    return ckpt


def test_auto_int8_hashes_the_weights_and_reads_the_int8_file_once(int8_auto, monkeypatch):
    import napari_histoseg.models.onnx as onnx_mod

    calls = {"hash": 0, "read": 0}
    hash_, read = onnx_mod._weights_hash, onnx_mod.shipped_int8
    monkeypatch.setattr(onnx_mod, "_weights_hash", lambda m: calls.__setitem__("hash", calls["hash"] + 1) or hash_(m))
    monkeypatch.setattr(onnx_mod, "shipped_int8",
                        lambda *a: calls.__setitem__("read", calls["read"] + 1) or read(*a))
    assert load_segmenter(int8_auto, device="cpu", engine="auto").engine == "onnx-int8"
    assert calls == {"hash": 1, "read": 1}


def test_the_int8_engine_holds_no_torch_network_until_an_explanation_asks(int8_auto, image):
    auto = load_segmenter(int8_auto, device="cpu", engine="auto")
    assert auto.engine == "onnx-int8" and auto._torch is None       # segmenting needs the session only
    twin = auto.torch_model                                          # read again from the file, once
    assert twin is auto.torch_model and twin.module is not None
    ref = Segmenter.from_checkpoint(int8_auto, device="cpu")
    x = ref.to_tensor(image[None, :256, :256])
    assert np.array_equal(twin.logits(x).detach().numpy(), ref.logits(x).detach().numpy())


def test_a_checkpoint_overwritten_since_loading_is_refused_for_explanations(int8_auto, model):
    from napari_histoseg import testing
    from napari_histoseg.models.checkpoint import CheckpointError

    auto = load_segmenter(int8_auto, device="cpu", engine="auto")
    testing.save_random_checkpoint(int8_auto, Segmenter.random(seed=4), tile_size=256)
    with pytest.raises(CheckpointError, match="changed on disk"):
        auto.torch_model.module  # noqa: B018 - reading it loads the twin


def test_an_overwritten_checkpoint_is_forgotten_so_segmenting_again_recovers(int8_auto, image):
    """Explain refuses the changed file with a way out, and the way out works: segmenting
    again loads the new weights, and explaining then succeeds."""
    from napari_histoseg import testing
    from napari_histoseg.backends.local import LocalBackend
    from napari_histoseg.core.runs import drive
    from napari_histoseg.models.checkpoint import CheckpointError

    backend = LocalBackend()
    backend.model(str(int8_auto), "cpu", "auto")
    testing.save_random_checkpoint(int8_auto, Segmenter.random(seed=4), tile_size=256)
    with pytest.raises(CheckpointError, match="segmentation again"):
        drive(backend.explain(image[:256, :256], str(int8_auto), "gradcam", device="cpu"))
    assert backend._models == {}, "the stale engine is not kept"
    backend.model(str(int8_auto), "cpu", "auto")
    heat = drive(backend.explain(image[:256, :256], str(int8_auto), "gradcam", device="cpu"))
    assert heat.shape == (256, 256) and np.isfinite(heat).all()


def test_a_model_with_no_file_keeps_its_network(model):
    assert OnnxSegmenter(model, threads=1).torch_model is model


@pytest.mark.parametrize("segment_engine", ["auto", "torch"])
def test_explaining_after_segmenting_loads_no_second_model(int8_auto, image, segment_engine):
    """The Segment widget asks the shared backend for ``auto`` (ONNX int8 here), the Explain
    widget for an explanation of the same model: one model is held, not two."""
    from napari_histoseg.backends.local import LocalBackend
    from napari_histoseg.core.device import resolve_device
    from napari_histoseg.core.runs import drive

    if resolve_device("auto").type != "cpu":
        pytest.skip("segments on device 'auto', which is not the CPU here")
    backend = LocalBackend()
    # device 'auto' for Segment, 'cpu' for Explain: the same device under two names, so a
    # backend that looked models up by their cache key alone would load a second one
    seg = backend.model(str(int8_auto), "auto", segment_engine)
    heat = drive(backend.explain(image[:256, :256], str(int8_auto), "gradcam", device="cpu"))
    assert heat.shape == (256, 256) and np.isfinite(heat).all()
    assert list(backend._models.values()) == [seg]
