"""LightMuSeg: module shapes, the three variants, registry and checkpoint round trip."""

from __future__ import annotations

import pytest
import torch

from napari_histoseg.models import build_model, list_architectures, load_checkpoint, save_checkpoint
from napari_histoseg.models.checkpoint import ModelMeta
from napari_histoseg.models.lightmuseg import FRFM, MSFFM, LightMuSeg, SpatialAttention, SqueezeExcitation


def test_modules_keep_the_papers_shapes():
    x = torch.randn(2, 24, 16, 16)
    assert MSFFM(24)(x).shape == x.shape
    assert SqueezeExcitation(24, 4)(x).shape == x.shape
    assert SpatialAttention(7)(x).shape == x.shape
    m = MSFFM(24)
    assert [b[0].kernel_size for b in m.branches] == [(1, 1), (3, 3), (5, 5)]
    assert m.sa.conv.kernel_size == (7, 7) and m.sa.conv.in_channels == 2
    f = FRFM(skip_channels=24, deep_channels=64, out_channels=32)
    assert f(x, torch.randn(2, 64, 8, 8)).shape == (2, 32, 16, 16)
    mlp = f.mlp
    assert mlp[0].in_features == 88 and mlp[0].out_features == 22  # reduction 4


def test_registry_names():
    names = list_architectures()
    for n in ("lightmuseg", "lightmuseg-v1", "lightmuseg-v2", "lightmuseg-v3", "unet-mobilenet_v2", "unet-resnet50"):
        assert n in names
    assert build_model("lightmuseg", variant="v3").variant == "v3"
    with pytest.raises(ValueError, match="variant"):
        LightMuSeg(variant="v9")


def _grads(model):
    model.train()
    out = model(torch.randn(2, 3, 64, 64))
    main = out[0] if isinstance(out, list) else out
    (main.mean() + sum(o.mean() for o in out[1:]) if isinstance(out, list) else main.mean()).backward()
    enc = [p.grad for p in model.encoder.parameters()]
    dec = [p.grad for n, p in model.named_parameters() if not n.startswith("encoder.")]
    return out, enc, dec


def test_v1_freezes_the_encoder():
    torch.manual_seed(0)
    m = build_model("lightmuseg-v1")
    before = {k: v.clone() for k, v in m.encoder.state_dict().items()}
    out, enc, dec = _grads(m)
    assert out.shape == (2, 1, 64, 64)
    assert all(g is None for g in enc)
    assert all(g is not None for g in dec)
    assert not m.encoder.training  # frozen batch-norm statistics
    after = m.encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_v2_trains_the_encoder_and_v3_returns_side_outputs():
    torch.manual_seed(0)
    out, enc, _ = _grads(build_model("lightmuseg-v2"))
    assert torch.is_tensor(out) and out.shape == (2, 1, 64, 64)
    assert any(g is not None and g.abs().sum() > 0 for g in enc)
    m3 = build_model("lightmuseg-v3")
    out, enc, _ = _grads(m3)
    assert isinstance(out, list) and len(out) == 5
    assert [tuple(o.shape[-2:]) for o in out] == [(64, 64), (4, 4), (8, 8), (16, 16), (32, 32)]
    m3.eval()
    with torch.no_grad():
        assert m3(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)


def test_checkpoint_round_trips_exactly(tmp_path):
    torch.manual_seed(0)
    m = build_model("lightmuseg-v3").eval()
    path = save_checkpoint(m, tmp_path / "l.safetensors", ModelMeta(arch="lightmuseg-v3"))
    m2, meta = load_checkpoint(path)
    assert meta.arch == "lightmuseg-v3"
    s1, s2 = m.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
