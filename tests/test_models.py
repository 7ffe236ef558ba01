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


# -- one base for a loaded model ----------------------------------------------------------
def _tiny(tmp_path, task):
    """A small checkpoint of ``task`` (random weights)."""
    if task == "segmentation":
        arch, kw, meta = "unet-mobilenet_v2", {"classes": 1}, {}
    elif task == "classification":
        arch, kw, meta = "classifier-mobilenet_v2", {"classes": 2}, {"classes": {"0": "benign", "1": "malignant"}}
    else:
        arch, kw, meta = "maskrcnn-mobilenet_v2", {"channels": 32, "representation": 64}, {"classes": {"1": "nucleus"}}
    m = ModelMeta(arch=arch, task=task, arch_kwargs=kw, name=f"tiny {task}", **meta)
    return save_checkpoint(build_model(arch, **kw), tmp_path / f"{task}.safetensors", m)


def test_every_task_loads_its_own_checkpoints_and_refuses_the_others_naming_both(tmp_path):
    from napari_histoseg.models.detector import NucleusDetector
    from napari_histoseg.models.segmenter import Segmenter
    from napari_histoseg.models.tile_classifier import Classifier

    classes = {"segmentation": Segmenter, "instances": NucleusDetector, "classification": Classifier}
    paths = {task: _tiny(tmp_path, task) for task in classes}
    for task, cls in classes.items():
        model = cls.from_checkpoint(paths[task], device="cpu")
        assert model.meta.task == task and model.source == str(paths[task])
        assert model.device.type == "cpu" and model.half is False and not model.module.training
        for other, path in paths.items():
            if other != task:
                with pytest.raises(CheckpointError, match=f"task '{other}'.*not a .*task '{task}'"):
                    cls.from_checkpoint(path, device="cpu")


def test_what_each_model_says_about_itself(tmp_path):
    from napari_histoseg.models.detector import NucleusDetector
    from napari_histoseg.models.segmenter import Segmenter
    from napari_histoseg.models.tile_classifier import Classifier

    seg = Segmenter.random(device="cpu")
    assert seg.gradcam_layer() == "net.decoder.blocks.1" and seg.explainable
    logits = torch.tensor([[[[1.0, -1.0]]]])  # one pixel predicted tumour, one not
    weights = torch.ones(1, 2)
    assert seg.explain_target(logits, 0, weights, use_prediction=True).item() == pytest.approx(1.0)
    assert seg.explain_target(logits, 0, weights, use_prediction=False).item() == pytest.approx(0.0)

    clf = Classifier.from_checkpoint(_tiny(tmp_path, "classification"), device="cpu")
    assert clf.gradcam_layer() == "features.18" and clf.class_names == ["benign", "malignant"]
    assert clf.explain_target(torch.tensor([[0.2, 0.7]]), 1, None, False).tolist() == [pytest.approx(0.7)]
    with pytest.raises(ValueError, match="float32 only"):
        Classifier.from_checkpoint(_tiny(tmp_path, "classification"), device="cpu", half=True)

    det = NucleusDetector.from_checkpoint(_tiny(tmp_path, "instances"), device="cpu")
    assert not det.explainable
    x = det.to_tensor(np.full((1, 64, 64, 3), 255, np.uint8))
    assert x.shape == (1, 3, 64, 64) and x.max().item() == pytest.approx(1.0)
    (dets,) = det.detect_batch(x)
    assert set(dets) == {"boxes", "scores", "masks"} and dets["masks"].shape[1:] == (28, 28)
    assert NucleusDetector.from_checkpoint(_tiny(tmp_path, "instances"), device="cpu",
                                           precision="fp32").precision == "fp32"
    with pytest.raises(ValueError, match="nucleus detection model has not been checked in bfloat16"):
        NucleusDetector.from_checkpoint(_tiny(tmp_path, "instances"), device="cpu", precision="bf16")


def test_one_table_of_bundled_checkpoints():
    from napari_histoseg.models.bundled import BUNDLED_CHECKPOINTS, bundled_path

    assert set(BUNDLED_CHECKPOINTS) == {"segmentation", "instances", "classification"}
    with pytest.raises(CheckpointError, match="no bundled model for task 'tracking'.*segmentation"):
        bundled_path("tracking")
    for task, path in BUNDLED_CHECKPOINTS.items():
        if path.is_file():
            assert bundled_path(task) == path
            from napari_histoseg.models.checkpoint import read_meta

            assert read_meta(path).task == task
