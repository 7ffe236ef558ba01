"""Tests of napari_histoseg.colour.preprocess: config round trip, identity, tiling, standardisation."""

import json
from pathlib import Path

import numpy as np
import pytest
from skimage import io

from napari_histoseg.colour.normalise import MacenkoNormaliser
from napari_histoseg.colour.preprocess import STANDARD_MEAN, STANDARD_STD, PreprocessConfig, Preprocessor
from napari_histoseg.colour.stain import tissue_mask

_ROOT = Path(__file__).resolve().parents[1]
_TARGET_PATHS = [_ROOT / "napari_histoseg" / "sample_data" / "tiatoolbox_target_image.png",
                 _ROOT.parent / "shared" / "samples" / "tiatoolbox_target_image.png"]


@pytest.fixture(scope="module")
def image():
    for p in _TARGET_PATHS:
        if p.exists():
            return np.ascontiguousarray(io.imread(p)[::2, ::2, :3])  # 500 x 500
    pytest.skip("tiatoolbox_target_image.png is not available")


def tiled(fn, img, th=128, tw=160):
    out = np.zeros_like(img)
    for y in range(0, img.shape[0], th):
        for x in range(0, img.shape[1], tw):
            out[y:y + th, x:x + tw] = fn(img[y:y + th, x:x + tw])
    return out


def test_config_json_round_trip(image):
    target = MacenkoNormaliser().fit_target(image[::2, ::2]).to_dict()
    cfg = PreprocessConfig(stain_norm="macenko", target=target, clahe=True, clahe_clip=0.02,
                           clahe_kernel=32, colour="hed", standardise=True)
    again = PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert PreprocessConfig.from_dict({}) == PreprocessConfig()
    assert PreprocessConfig.from_dict(None).is_identity


@pytest.mark.parametrize("bad, match", [
    ({"stain_norm": "macenko", "gamma": 2}, "unknown preprocessing keys.*gamma"),
    ({"stain_norm": "vahadane"}, "stain_norm"),
    ({"colour": "lab"}, "colour"),
    ({"clahe_clip": 0.0}, "clahe_clip"),
    ({"target": {"method": "reinhard", "mean": [0] * 3, "std": [1] * 3}}, "stain_norm is None"),
    ({"stain_norm": "macenko",
      "target": {"method": "reinhard", "mean": [0] * 3, "std": [1] * 3}}, "macenko"),
])
def test_config_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        PreprocessConfig.from_dict(bad)


def test_identity_returns_input_unchanged(image):
    pre = Preprocessor()
    assert pre.is_identity and not pre.needs_fit
    tile = image[:64, :64]
    assert pre(tile) is tile  # no copy, no work
    assert Preprocessor({"clahe": False}).is_identity
    assert pre.describe() == "no preprocessing (raw RGB)"


@pytest.mark.parametrize("cfg", [
    PreprocessConfig(stain_norm="macenko", colour="hed", standardise=True),
    PreprocessConfig(stain_norm="reinhard", standardise=True),
    PreprocessConfig(colour="hed"),
])
def test_pointwise_pipeline_tilewise_equals_whole(cfg, image):
    pre = Preprocessor(cfg).fit(image[::4, ::4])  # fitted once, on a thumbnail
    whole = pre(image)
    assert whole.shape == image.shape and whole.dtype == np.uint8
    np.testing.assert_array_equal(tiled(pre, image), whole)


def test_clahe_per_tile_differs_only_a_little(image):
    pre = Preprocessor(PreprocessConfig(clahe=True))  # 64 px context
    diff = np.abs(tiled(pre, image, 250, 250).astype(int) - pre(image))
    # local, so not exact: measured mean 2.1, 99th percentile 14 (of 255) on 250 px tiles
    assert 0 < diff.mean() < 4 and np.percentile(diff, 99) < 25


def test_standardise_maps_tissue_to_fixed_mean_and_std(image):
    pre = Preprocessor(PreprocessConfig(standardise=True)).fit(image)
    out = pre(image)[tissue_mask(image)].astype(float)
    np.testing.assert_allclose(out.mean(0), STANDARD_MEAN, atol=2.0)  # measured within 0.3
    np.testing.assert_allclose(out.std(0), STANDARD_STD, atol=3.0)  # clipping trims tails


def test_needs_fit_before_call(image):
    pre = Preprocessor(PreprocessConfig(stain_norm="reinhard"))
    assert pre.needs_fit and not pre.is_fitted
    with pytest.raises(RuntimeError, match="fit"):
        pre(image[:32, :32])
    with pytest.raises(ValueError, match="uint8"):
        pre.fit(image.astype(np.float32))


def test_white_tile_through_the_pipeline(image):
    white = np.full((64, 64, 3), 250, np.uint8)
    white[::3] = 245
    cfg = PreprocessConfig(stain_norm="macenko", clahe=True, standardise=True)
    out = Preprocessor(cfg).fit(image)(white)
    assert out.dtype == np.uint8 and out.shape == white.shape
    assert out.min() >= 200  # background stays bright after all three steps (measured 227)
    with pytest.raises(ValueError, match="tissue pixels"):
        Preprocessor(cfg).fit(white)
    # standardisation alone on a blank image: std floored, no NaN, no blow-up
    blank = Preprocessor(PreprocessConfig(standardise=True)).fit(white)(white)
    assert np.ptp(blank) <= 60  # a 5-level ripple at most 10x (measured 50)


def test_describe_lists_the_steps_in_order():
    text = PreprocessConfig(stain_norm="reinhard", clahe=True, colour="hed",
                            standardise=True).describe()
    parts = text.split(" -> ")
    assert len(parts) == 4 and parts[0].startswith("Reinhard") and "CLAHE" in parts[1]
    assert "HED" in parts[2] and "127.5" in parts[3]
    assert "\n" not in text
