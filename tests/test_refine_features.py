"""The segmentation network's features in the refinement's affinities (refinement.features)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from napari_histoseg.io.checks import InputError
from napari_histoseg.refinement import RefineSession, refine
from napari_histoseg.refinement.features import model_features, reduce_features, session_features

PINK = np.array((215, 160, 200), np.float32)


def click(shape, y, x, label, r=5):
    s = np.zeros(shape, np.uint8)
    s[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = label
    return s


def one_colour_two_tissues(size=256, seed=0):
    """One pink with the same noise everywhere (colour and local contrast cannot tell the
    halves apart) and features that can: the left half's differ from the right's by 40
    (the network's features enter at the colour's scale, a few tens of Lab units), the way
    a network's description of two tissues differs."""
    rng = np.random.default_rng(seed)
    img = np.clip(PINK + rng.normal(0, 6, (size, size, 3)), 0, 255).astype(np.uint8)
    feats = rng.normal(0, 1, (size, size, 4)).astype(np.float32)
    feats = np.stack([ndimage.gaussian_filter(feats[..., c], 2) for c in range(4)], -1)
    feats[:, : size // 2, 0] += 40.0
    return img, feats


@pytest.fixture(scope="module")
def real():
    """A 384 x 384 crop of the bundled breast carcinoma sample, a smooth prior and smooth
    random features."""
    from napari_histoseg.plugin.samples import breast_carcinoma

    img = np.asarray(breast_carcinoma()[0][0])[300:684, 300:684, :3].copy()
    prior = ndimage.gaussian_filter(255.0 - img.mean(-1), 12)
    prior = ((prior - prior.min()) / (np.ptp(prior) + 1e-6)).astype(np.float32)
    rng = np.random.default_rng(3)
    feats = np.stack([ndimage.gaussian_filter(rng.normal(0, 30, img.shape[:2]), 6) for _ in range(4)], -1)
    return img, prior, feats.astype(np.float32)


@pytest.mark.parametrize("affinity", ["features", "mixed"])
def test_a_click_takes_its_tissue_and_stops_where_the_network_sees_another(affinity):
    img, feats = one_colour_two_tissues()
    seeds = click(img.shape[:2], 128, 64, 1)
    plain = refine(img, seeds)
    assert plain[:, 150:].mean() > 0.5, "colour alone has no edge to stop at: the click takes both halves"
    labels = refine(img, seeds, features=feats, affinity=affinity)
    assert labels[:, 16:112].mean() > 0.95, "the clicked tissue turns tumour"
    assert labels[:, 144:].mean() < 0.01, "the tissue beside it of the same colour does not"


@pytest.mark.parametrize("with_prior", [False, True])
def test_a_stroke_in_one_tissue_does_not_take_the_touching_one_with_the_features(with_prior):
    img, feats = one_colour_two_tissues()
    prior = np.full(img.shape[:2], 0.3, np.float32) if with_prior else None
    seeds = np.zeros(img.shape[:2], np.uint8)
    seeds[40:216, 112:117] = 1  # a 5 px stroke in the left tissue, 11 px from the other
    labels = refine(img, seeds, prior=prior, features=feats, affinity="mixed")
    assert labels[ndimage.distance_transform_edt(seeds == 0) <= 10].mean() > 0.99, "around the stroke: tumour"
    assert labels[:, 131:].max() == 0, "the other tissue stays as it was"


@pytest.mark.parametrize("method", ["confined", "region", "lgc"])
@pytest.mark.parametrize("affinity", ["features", "mixed"])
def test_the_feature_arm_honours_every_seed(real, method, affinity):
    img, prior, feats = real
    rng = np.random.default_rng(1)
    seeds = np.zeros(img.shape[:2], np.uint8)
    ys, xs = rng.integers(0, 384, 40), rng.integers(0, 384, 40)
    seeds[ys[:20], xs[:20]] = 1
    seeds[ys[20:], xs[20:]] = 2
    seeds[50:55, 20:360] = 2  # a long stroke across everything
    seeds[250:255, 20:360] = 1
    seeds[52, 100] = 1  # a one-pixel click of the other class inside it
    for p in (None, prior, 1.0 - prior):
        session = RefineSession(img, p, features=feats, affinity=affinity, method=method)
        for gesture in ("click", "stroke"):
            labels = session.update(seeds, gesture=gesture)
            assert np.all(labels[seeds == 1] == 1) and np.all(labels[seeds == 2] == 0)


def test_the_colour_arm_ignores_features_and_bad_features_are_refused(real):
    img, prior, feats = real
    seeds = click(img.shape[:2], 100, 100, 1)
    assert np.array_equal(refine(img, seeds, prior=prior), refine(img, seeds, prior=prior, features=feats))
    with pytest.raises(InputError, match="needs the network's features"):
        RefineSession(img, prior, affinity="mixed")
    with pytest.raises(InputError, match="affinity must be one of"):
        RefineSession(img, prior, affinity="network")
    with pytest.raises(InputError, match="feature_weight"):
        RefineSession(img, prior, features=feats, affinity="mixed", feature_weight=float("nan"))
    with pytest.raises(InputError, match="features must be"):
        RefineSession(img, prior, features=feats[:100], affinity="mixed")
    bad = feats.copy()
    bad[0, 0, 0] = np.inf
    with pytest.raises(InputError, match="finite"):
        RefineSession(img, prior, features=bad, affinity="features")
    session = RefineSession(img, prior, features=feats, affinity="mixed")
    with pytest.raises(ValueError, match="new RefineSession"):
        session.set_params(affinity="colour")


def test_reduce_features_keeps_the_main_direction_at_the_colour_scale():
    rng = np.random.default_rng(0)
    main = rng.normal(0, 5, (64, 64)).astype(np.float32)
    raw = rng.normal(0, 0.1, (64, 64, 8)).astype(np.float32)
    raw += main[..., None] * np.linspace(1, 2, 8, dtype=np.float32)
    colour = rng.normal(50, 3, (64, 64, 3)).astype(np.float32)
    out = reduce_features(raw, 2, scale_to=colour)
    assert out.shape == (64, 64, 2) and out.dtype == np.float32
    assert abs(np.corrcoef(out[..., 0].ravel(), main.ravel())[0, 1]) > 0.99
    assert out.reshape(-1, 2).var(0).sum() == pytest.approx(colour.reshape(-1, 3).var(0).sum(), rel=0.05)
    assert np.array_equal(out, reduce_features(raw, 2, scale_to=colour)), "the same image, the same projection"
    with pytest.raises(InputError, match="feature channels"):
        reduce_features(raw, 9)


def test_the_model_s_decoder_features_cover_every_pixel_and_refine(random_model):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (200, 150, 3), dtype=np.uint8)  # no multiple of 32; tiled below
    whole = model_features(img, random_model)
    assert whole.shape == (200, 150, 16) and np.isfinite(whole).all()
    tiled = model_features(img, random_model, tile=128, overlap=32)
    assert tiled.shape == whole.shape and np.isfinite(tiled).all()
    # tiles put back where they came from (an 8 px shift drops this to about 0.7)
    assert np.corrcoef(whole.ravel(), tiled.ravel())[0, 1] > 0.95
    feats = session_features(img, random_model, channels=3)
    assert feats.shape == (200, 150, 3)
    rgba = np.concatenate([img, np.full(img.shape[:2] + (1,), 255, np.uint8)], axis=-1)
    assert np.array_equal(session_features(rgba, random_model, channels=3), feats), "RGBA read as its RGB"
    seeds = click(img.shape[:2], 100, 75, 1) + click(img.shape[:2], 20, 20, 2)
    labels = refine(img, seeds, features=feats, affinity="mixed")
    assert labels[100, 75] == 1 and labels[20, 20] == 0
    with pytest.raises(InputError, match="no layer"):
        model_features(img, random_model, layer="net.nothing")

    class Onnx:  # an engine without PyTorch layers
        module = None

    with pytest.raises(InputError, match="PyTorch model"):
        model_features(img, Onnx())


def test_histoseg_refine_with_the_model_s_features(tmp_path, capsys, random_checkpoint):
    from skimage.io import imread, imsave

    from napari_histoseg.cli import main

    img, _ = one_colour_two_tissues(128)
    imsave(tmp_path / "img.png", img, check_contrast=False)
    imsave(tmp_path / "seeds.png", click((128, 128), 64, 32, 1) + click((128, 128), 64, 100, 2), check_contrast=False)
    out = tmp_path / "mask.png"
    args = ["refine", str(tmp_path / "img.png"), "--seeds", str(tmp_path / "seeds.png"), "-o", str(out),
            "--affinity", "mixed", "--model", str(random_checkpoint)]
    assert main(args) == 0
    m = imread(out)
    assert m.shape == (128, 128) and m[64, 32] == 1 and m[64, 100] == 0
    assert "% tumour" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(args + ["--feature-weight", "nan"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "--feature-weight" in err and "finite" in err
