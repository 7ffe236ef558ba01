"""Registry and checkpoints: what loads, what is refused, and why."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from napari_histoseg.models import (
    CheckpointError,
    ModelMeta,
    build_model,
    list_architectures,
    load_checkpoint,
    save_checkpoint,
)


def test_registry_builds_both_seed_unets():
    assert {"unet-mobilenet_v2", "unet-resnet50"} <= set(list_architectures())
    net = build_model("unet-mobilenet_v2", classes=1)
    assert isinstance(net.dropout, torch.nn.Dropout2d) and net.dropout.p == pytest.approx(0.3)
    with pytest.raises(KeyError, match="unknown architecture 'vgg'.*unet-mobilenet_v2"):
        build_model("vgg")


def test_checkpoint_round_trips_exactly(tmp_path):
    torch.manual_seed(1)
    net = build_model("unet-mobilenet_v2").eval()
    meta = ModelMeta(arch="unet-mobilenet_v2", name="t", tile_size=384, mpp=0.5)
    path = save_checkpoint(net, tmp_path / "m.safetensors", meta, sidecar=True)
    loaded, meta2 = load_checkpoint(path)
    assert meta2 == meta
    for (k, a), (k2, b) in zip(net.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(net(x), loaded(x))
    assert json.loads((tmp_path / "m.json").read_text())["arch"] == "unet-mobilenet_v2"


def test_checkpoint_of_another_architecture_is_refused_with_names(tmp_path):
    net = build_model("unet-resnet50")
    path = save_checkpoint(net, tmp_path / "r.safetensors", ModelMeta(arch="unet-resnet50"))
    # the same weights claiming to be the MobileNetV2 model
    liar = tmp_path / "liar.safetensors"
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    save_file(tensors, str(liar), metadata={"histoseg": json.dumps(ModelMeta(arch="unet-mobilenet_v2").to_json())})
    with pytest.raises(CheckpointError, match="do not match the architecture.*missing.*unexpected"):
        load_checkpoint(liar)
    load_checkpoint(path)  # the honest one loads


def test_unknown_architecture_and_wrong_class_count_are_refused(tmp_path):
    net = build_model("unet-mobilenet_v2")
    meta = ModelMeta(arch="transunet-9000")
    p = save_checkpoint(net, tmp_path / "u.safetensors", meta)
    with pytest.raises(CheckpointError, match="'transunet-9000' is unknown"):
        load_checkpoint(p)
    meta = ModelMeta(arch="unet-mobilenet_v2", arch_kwargs={"classes": 3})
    p = save_checkpoint(net, tmp_path / "c.safetensors", meta)
    with pytest.raises(CheckpointError, match="wrong shape.*segmentation_head"):
        load_checkpoint(p)


def test_pickles_and_foreign_files_are_never_loaded(tmp_path):
    pt = tmp_path / "model.pth"
    torch.save({"a": torch.zeros(1)}, pt)
    with pytest.raises(CheckpointError, match="pickled.*can run code"):
        load_checkpoint(pt)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="not a safetensors checkpoint"):
        load_checkpoint(junk)
    bare = tmp_path / "bare.safetensors"
    save_file({"w": torch.zeros(2)}, str(bare))
    with pytest.raises(CheckpointError, match="no histoseg metadata"):
        load_checkpoint(bare)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_segmenter_predicts_probabilities(random_model):
    out = random_model.predict(np.zeros((2, 64, 96, 3), np.uint8))
    assert out.shape == (2, 1, 64, 96) and out.dtype == np.float32
    assert 0 <= out.min() and out.max() <= 1
