"""Explanations: attributions land where the model looks, uncertainty where it is unsure,
tiling keeps shapes and sums, cancellation and clear errors.

Two hand-built networks, wrapped as :class:`Segmenter` (any module is accepted):

* ``LeftHalf``: bias-free convolutions on the input with its right half set to 0, so
  its output depends only on the left half of the image (the right half contributes
  exactly nothing; features there are exactly 0).
* ``Blobs``: a tiny conv net with dropout, trained in the test (a few dozen Adam steps)
  to mark dark purple disks on a pink background.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from napari_histoseg.core.runs import Cancelled
from napari_histoseg.explanations import METHODS, ExplainError, explain, iter_explain
from napari_histoseg.models.checkpoint import ModelMeta
from napari_histoseg.models.segmenter import Segmenter

PINK, PURPLE = (230, 150, 200), (90, 40, 140)


class LeftHalf(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, 1, 1, bias=False), nn.ReLU())
        self.up = nn.Upsample(scale_factor=2)
        self.head = nn.Conv2d(8, 1, 1)

    def forward(self, x):
        keep = torch.ones_like(x)
        keep[..., x.shape[-1] // 2:] = 0
        return self.head(self.up(self.body(x * keep)))


def blobs(n, size=64, seed=0):
    """Pink images with purple disks and their masks (1 = disk)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    imgs, masks = [], []
    for _ in range(n):
        m = np.zeros((size, size), bool)
        for _ in range(4):
            cy, cx, r = rng.integers(8, size - 8, 2).tolist() + [int(rng.integers(4, 10))]
            m |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        img = np.where(m[..., None], PURPLE, PINK) + rng.normal(0, 6, (size, size, 3))
        imgs.append(np.clip(img, 0, 255).astype(np.uint8))
        masks.append(m)
    return np.stack(imgs), np.stack(masks)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The test networks are tiny: one thread avoids waiting on a busy machine's other cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def left_model():
    torch.manual_seed(0)
    net = LeftHalf()
    with torch.no_grad():
        net.head.weight.abs_()  # the target rises with the features: Grad-CAM has something to show
    return Segmenter(net, ModelMeta(arch="left-half"), device="cpu")


@pytest.fixture(scope="module")
def blob_model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.Dropout2d(0.3), nn.Conv2d(8, 1, 1))
    model = Segmenter(net, ModelMeta(arch="blobs"), device="cpu")
    imgs, masks = blobs(8)
    x, y = model.to_tensor(imgs), torch.from_numpy(masks[:, None]).float()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    net.train()
    for _ in range(80):
        opt.zero_grad()
        nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
        opt.step()
    net.eval()
    return model


@pytest.fixture(scope="module")
def noise():
    return np.random.default_rng(1).integers(0, 256, (96, 128, 3), dtype=np.uint8)


def left_fraction(heat):
    mass = np.abs(heat)
    return mass[:, : heat.shape[1] // 2].sum() / mass.sum()


@pytest.mark.parametrize("method,least", [("gradcam", 0.90), ("hirescam", 0.90), ("inputxgrad", 0.95), ("gradcam-ixg", 0.95),
                                          ("shap", 0.99)])
def test_attributions_fall_in_the_half_the_model_sees(left_model, noise, method, least):
    """Grad-CAM, HiResCAM: >= 90 % of their mass in the left half (the stride-2 layer and
    bilinear upsampling spill a few px over the middle); input x gradient: >= 95 % (its
    2-px smoothing spills over the middle; Grad-CAM x input gradient too, as its product); SHAP: >= 99 % (the gradient on the right half
    is exactly 0)."""
    heat = explain(noise, left_model, method, target="all", tile=128, samples=4)
    assert heat.shape == noise.shape[:2] and heat.dtype == np.float32
    assert np.abs(heat).max() == pytest.approx(1.0)
    assert left_fraction(heat) >= least


def test_a_drawn_region_is_explained_by_its_neighbourhood(blob_model):
    img = blobs(1, size=96, seed=3)[0][0]
    drawn = np.zeros(img.shape[:2], bool)
    drawn[20:44, 20:44] = True
    heat = explain(img, blob_model, "shap", target=drawn, tile=128, samples=4)
    near = np.zeros_like(drawn)
    near[20 - 4:44 + 4, 20 - 4:44 + 4] = True  # two 3x3 convolutions reach 2 px
    assert np.abs(heat[~near]).sum() < 1e-6 * np.abs(heat).sum() + 1e-12
    assert np.abs(heat[near]).sum() > 0


def test_shap_is_signed_and_sums_to_the_change_of_the_target(blob_model):
    """Against the blurred baseline, the disks (tumour) push towards tumour and the pink
    background away from it. Unnormalised GradientShap adds up to T(x) - T(baseline)
    (completeness; checked against empty glass, where the change is large)."""
    img, mask = (a[0] for a in blobs(1, size=64, seed=5))
    heat = explain(img, blob_model, "shap", target="all", tile=64, samples=16, normalise=False)
    assert heat[mask].mean() > 0 > heat[~mask].mean()
    heat = explain(img, blob_model, "shap", target="all", tile=64, samples=32, normalise=False, baseline="white")
    with torch.no_grad():
        t = blob_model.logits(blob_model.to_tensor(img[None])).sum().item()
        b = blob_model.logits(blob_model.to_tensor(np.full((1, 64, 64, 3), 240, np.uint8))).sum().item()
    assert heat.sum() == pytest.approx(t - b, rel=0.05)


def test_shap_tiles_add_up_like_the_whole():
    """Tiles share each target pixel by their blend weights and their attributions are
    summed: the tiled map matches the untiled one (up to Monte-Carlo noise and the
    receptive field cut at tile edges). A fixed random conv net, white baseline."""
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 3, padding=1))
    model = Segmenter(net, ModelMeta(arch="conv"), device="cpu")
    img = blobs(1, size=192, seed=7)[0][0]
    kw = dict(target="all", samples=32, normalise=False, baseline="white")
    whole = explain(img, model, "shap", tile=192, **kw)
    tiled = explain(img, model, "shap", tile=64, overlap=32, **kw)
    assert tiled.sum() == pytest.approx(whole.sum(), rel=0.05)
    assert np.corrcoef(whole.ravel(), tiled.ravel())[0, 1] > 0.95


def test_entropy_is_higher_off_the_training_data(blob_model):
    """The blob model learnt two well-separated colours. A training-like tile (same
    generator, unseen seed) is answered with confidence; an image whose colours lie
    halfway between pink and purple, which never occur in training, is not. (This
    checks that the map measures the model's indecision; entropy does not promise to
    flag every kind of unfamiliar image.)"""
    train_like = blobs(1, size=64, seed=11)[0][0]
    mid = ((np.array(PINK) + np.array(PURPLE)) / 2).astype(np.uint8)
    unlike = np.clip(mid + np.random.default_rng(2).normal(0, 6, (64, 64, 3)), 0, 255).astype(np.uint8)
    h_train = explain(train_like, blob_model, "entropy", tile=64)
    h_unlike = explain(unlike, blob_model, "entropy", tile=64)
    assert 0 <= h_train.min() and h_unlike.max() <= 1
    assert h_unlike.mean() > 2 * h_train.mean()


@pytest.mark.parametrize("method", ["entropy", "tta", "tta-entropy", "tta-boundary"])
def test_uncertainty_is_higher_where_the_model_is_wrong(blob_model, method):
    """Disks in a colour halfway between the training disks and the background are tumour in
    the truth; the model misses some of them and some disk edges. Its uncertainty is higher
    on the pixels it gets wrong than on those it gets right (entropy, flip/turn TTA; the
    MC-dropout spread of this model is not, like the bundled model's: see BENCHMARKS.md)."""
    img, truth = (a[0] for a in blobs(1, size=96, seed=7))
    yy, xx = np.mgrid[:96, :96]
    faint = ((yy - 24) ** 2 + (xx - 70) ** 2 <= 100) | ((yy - 72) ** 2 + (xx - 24) ** 2 <= 100)
    mid = (np.array(PINK) + np.array(PURPLE)) / 2
    img = np.where(faint[..., None], np.clip(mid + np.random.default_rng(0).normal(0, 6, img.shape), 0, 255),
                   img).astype(np.uint8)
    truth = truth | faint
    wrong = (blob_model.predict(img[None])[0, 0] >= 0.5) != truth
    assert 0 < wrong.sum() < wrong.size // 2
    heat = explain(img, blob_model, method, tile=96, samples=8)
    assert heat[wrong].mean() > heat[~wrong].mean()


def test_mc_dropout_needs_dropout_and_leaves_the_model_alone(left_model, blob_model, noise):
    with pytest.raises(ExplainError, match="no(ne)? .*dropout|has none"):
        explain(noise, left_model, "mc-dropout")
    a = explain(noise, blob_model, "mc-dropout", tile=64, samples=8, seed=3)
    b = explain(noise, blob_model, "mc-dropout", tile=64, samples=8, seed=3)
    np.testing.assert_array_equal(a, b)
    assert a.max() > 0 and (a >= 0).all() and a.max() <= 0.5
    assert not any(m.training for m in blob_model.module.modules())


def test_mc_dropout_fast_path_matches_full_passes(blob_model, noise):
    """One pass to the dropout and N after it gives the same statistics as N full passes."""
    from napari_histoseg.explanations.uncertainty import McDropout

    engine = McDropout(blob_model, samples=64, seed=0)
    tile = noise[:64, :64]
    fast = engine(tile)
    engine._fast = False
    slow = engine(tile)
    assert np.abs(fast[0] - slow[0]).mean() < 0.02


def test_unet_default_layer_and_a_named_one(random_model):
    from napari_histoseg.explanations.gradcam import candidate_layers, default_layer

    assert default_layer(random_model.module) == "net.decoder.blocks.1"
    names = [n for n, _, _ in candidate_layers(random_model)]
    assert names[0] == "net.decoder.blocks.1" and "net.encoder.features.18" in names
    img = np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)
    heat = explain(img, random_model, "gradcam", layer="net.encoder.features.13", target="all", tile=64)
    assert heat.shape == (64, 96) and 0 <= heat.min() and heat.max() <= 1
    with pytest.raises(ExplainError, match="no layer 'net.nope'.*net.encoder"):
        explain(img, random_model, "gradcam", layer="net.nope")


def test_tiled_larger_than_a_tile_keeps_shape_and_is_finite(left_model, blob_model):
    img = np.random.default_rng(4).integers(0, 256, (150, 230, 3), dtype=np.uint8)
    for method in METHODS:
        model = blob_model if method == "mc-dropout" else left_model
        heat = explain(img, model, method, tile=64, overlap=16, samples=2)
        assert heat.shape == (150, 230) and heat.dtype == np.float32, method
        assert np.isfinite(heat).all(), method
    part = explain(img, blob_model, "gradcam", region=(10, 20, 70, 100), tile=64, overlap=16)
    assert part.shape == (70, 100) and np.isfinite(part).all()


def test_progress_and_cancellation(blob_model, noise):
    seen = []
    explain(noise, blob_model, "gradcam", tile=64, overlap=16, progress=lambda d, t: seen.append((d, t)))
    assert seen[0][0] == 0 and seen[-1][0] == seen[-1][1] > 1
    with pytest.raises(Cancelled):
        explain(noise, blob_model, "shap", tile=64, should_stop=lambda: True)
    gen = iter_explain(noise, blob_model, "gradcam", tile=64)
    assert next(gen)[0] == 0
    gen.close()  # a worker's quit(): no error, nothing left running


def test_bad_requests_say_what_to_do(blob_model, noise):
    with pytest.raises(ExplainError, match="unknown method"):
        explain(noise, blob_model, "lime")
    with pytest.raises(ExplainError, match="unknown target"):
        explain(noise, blob_model, "gradcam", target="everything")
    with pytest.raises(ExplainError, match="shape"):
        explain(noise, blob_model, "gradcam", target=np.ones((5, 5), bool))


def test_public_name_and_no_torch_on_import():
    import napari_histoseg
    from napari_histoseg import explain as public

    assert callable(public) and callable(napari_histoseg.explain)
    code = "import napari_histoseg, napari_histoseg.explanations, sys; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_cli_writes_a_float32_tiff(tmp_path, random_checkpoint):
    import tifffile
    from skimage.io import imsave

    from napari_histoseg.cli import main

    img = np.random.default_rng(0).integers(0, 256, (80, 100, 3), dtype=np.uint8)
    imsave(tmp_path / "in.png", img, check_contrast=False)
    out = tmp_path / "heat.tif"
    assert main(["explain", str(tmp_path / "in.png"), "--method", "entropy", "-o", str(out),
                 "--model", str(random_checkpoint), "--device", "cpu", "--region", "10,20,40,60"]) == 0
    heat = tifffile.imread(out)
    assert heat.dtype == np.float32 and heat.shape == (40, 60) and np.isfinite(heat).all()


def test_a_nucleus_detector_is_not_explained_but_told_why(tmp_path):
    from napari_histoseg.models import build_model, save_checkpoint
    from napari_histoseg.models.detector import NucleusDetector

    kw = {"channels": 32, "representation": 64}
    path = save_checkpoint(build_model("maskrcnn-mobilenet_v2", **kw), tmp_path / "n.safetensors",
                           ModelMeta(arch="maskrcnn-mobilenet_v2", task="instances", arch_kwargs=kw))
    img = np.full((64, 64, 3), 200, np.uint8)
    with pytest.raises(ExplainError, match="instances model.*segmentation and classification"):
        explain(img, NucleusDetector.from_checkpoint(path, device="cpu"), "gradcam", tile=64)


def test_superpixel_shap_finds_the_half_that_matters(left_model, noise):
    """Kernel SHAP over SLIC regions of the left-half model: the regions of the right half
    change nothing, so (up to the regression's sampling noise) they get nothing."""
    heat = explain(noise, left_model, "superpixel-shap", target="all", tile=128, samples=48, regions=16)
    assert heat.shape == noise.shape[:2] and np.isfinite(heat).all()
    assert left_fraction(heat) >= 0.75  # regions across the middle carry some of it over
    assert np.abs(heat[:, 100:]).max() < 0.1 * np.abs(heat).max()


def test_superpixel_shap_credits_the_disk_and_adds_up(blob_model):
    """One region the blob model marks (a disk) among background: the regions holding the disk
    raise the target, and the unnormalised values add up to T(image) - T(blurred image)."""
    from napari_histoseg.explanations.shap import stain_baseline

    img, mask = (a[0] for a in blobs(1, size=96, seed=5))
    heat = explain(img, blob_model, "superpixel-shap", target="all", tile=96, samples=64, regions=24,
                   normalise=False)
    assert heat[mask].mean() > 0 and heat[mask].mean() > 3 * abs(heat[~mask].mean())
    with torch.no_grad():
        t = blob_model.logits(blob_model.to_tensor(img[None])).sum().item()
        b = blob_model.logits(blob_model.to_tensor(stain_baseline(img))).sum().item()
    assert heat.sum() == pytest.approx(t - b, rel=1e-3, abs=1e-3)


def test_the_cost_of_a_method_is_known_before_it_runs():
    """The estimate the widget shows: more coalitions cost more, a larger view costs more,
    and superpixel SHAP is far dearer than Grad-CAM."""
    from napari_histoseg.explanations.cost import estimate

    small, big = estimate("gradcam", (1024, 1024)), estimate("gradcam", (4096, 4096))
    assert 0 < small["seconds"] < big["seconds"] and small["tiles"] == 9
    assert estimate("superpixel-shap", (1024, 1024), samples=32)["seconds"] < estimate(
        "superpixel-shap", (1024, 1024), samples=64)["seconds"]
    assert estimate("superpixel-shap", (1024, 1024))["seconds"] > 5 * small["seconds"]
    for method in METHODS:
        assert estimate(method, (512, 512))["seconds"] > 0


def test_boundary_proximity_and_either():
    from napari_histoseg.explanations.uncertainty import boundary_proximity, either

    mask = np.zeros((64, 64), bool)
    mask[16:48, 16:48] = True
    near = boundary_proximity(mask, reach=8)
    assert near[16, 30] > 0.9 and near[32, 32] < 0.2 and near[2, 2] < near[12, 30]
    assert not boundary_proximity(np.ones((8, 8), bool)).any()
    both = either(np.full((4,), 0.5), np.full((4,), 0.5))
    np.testing.assert_allclose(both, 0.75)


def test_the_review_queue_starts_where_errors_are_likely():
    """The default order (entropy, the probability's best predictor of errors) puts the field the
    model is unsure of first; the 'uncertainty' order also counts the nearness of the outline,
    which entropy alone cannot see where both sides are answered with confidence."""
    from napari_histoseg.review import ReviewSource, make_fields, rank_fields
    from napari_histoseg.review.ranking import DEFAULT_RANKING

    assert DEFAULT_RANKING == "entropy"
    prob = np.full((128, 384), 0.97, np.float32)
    prob[:, :64] = 0.03        # field 0: an outline at x = 64, both sides confident
    prob[:, 256:] = 0.55       # field 2: the model is unsure
    fields = make_fields(ReviewSource.from_arrays(prob, review_dir="unused"), 128)
    assert [f.index for f in rank_fields(fields)][0] == 2
    assert fields[0].entropy == pytest.approx(fields[1].entropy, abs=1e-6)
    ranked = [f.index for f in rank_fields(fields, "uncertainty")]
    assert ranked.index(0) < ranked.index(1)
