"""Tiled inference: equal to untiled inference, seamless, any size, cancellable."""

import copy

import numpy as np
import pytest
import torch

from napari_histoseg.core.runs import Cancelled
from napari_histoseg.core.tiling import iter_predict, predict
from napari_histoseg.core.windows import blend_window, tile_starts
from napari_histoseg.io.validate import ImageFormatError
from napari_histoseg.models.segmenter import Segmenter

# the tiling engine itself, compared with the model's own output: no tissue gate
ENGINE = {"tissue_gate": False}


@pytest.fixture(scope="module")
def sharp_model():
    """A random model whose head is scaled so its probabilities span 0..1 (a random
    head alone stays near 0.5, which would make any comparison meaningless)."""
    m = Segmenter.random(seed=0)
    with torch.no_grad():
        m.module.net.segmentation_head[0].weight.mul_(200)
    return m


@pytest.fixture(scope="module")
def crop(he_image):
    return np.ascontiguousarray(he_image[:512, :768])


def seam_ratio(prob, starts):
    """Mean horizontal gradient on the columns where tiles start, over the mean gradient."""
    g = np.abs(np.diff(prob, axis=1))
    return g[:, [s - 1 for s in starts[1:]]].mean() / g.mean()


def test_tiled_equals_untiled_away_from_borders(sharp_model, crop):
    full = sharp_model.predict(crop[None])[0, 0]
    assert full.std() > 0.2  # the reference really varies
    tiled = predict(crop, sharp_model, tile=256, overlap=64, **ENGINE).probability
    diff = np.abs(tiled - full)[32:-32, 32:-32]
    assert diff.max() < 0.05 and diff.mean() < 1e-3


def test_blending_leaves_no_seams_where_hard_tiling_does(sharp_model, crop):
    blended = predict(crop, sharp_model, tile=256, overlap=64, **ENGINE).probability
    hard = predict(crop, sharp_model, tile=256, overlap=0, **ENGINE).probability
    assert seam_ratio(blended, tile_starts(768, 256, 192)) < 1.2
    assert seam_ratio(hard, tile_starts(768, 256, 256)) > 2.0  # the test can see seams


def test_any_size_including_smaller_than_a_tile(random_model):
    for shape in [(300, 700), (37, 53), (1, 1), (512, 64)]:
        img = np.random.default_rng(0).integers(0, 255, shape + (3,), dtype=np.uint8)
        pred = predict(img, random_model, tile=256, overlap=32)
        assert pred.probability.shape == shape and pred.probability.dtype == np.float32
        assert pred.mask.shape == shape and set(np.unique(pred.mask)) <= {0, 1}
        assert np.isfinite(pred.probability).all()


def test_region_matches_the_same_window_of_the_whole(sharp_model, crop):
    whole = predict(crop, sharp_model, tile=256, overlap=64, **ENGINE).probability
    part = predict(crop, sharp_model, tile=256, overlap=64, region=(100, 200, 200, 300), **ENGINE)
    assert part.probability.shape == (200, 300) and part.region == (100, 200, 200, 300)
    assert np.abs(part.probability - whole[100:300, 200:500]).max() < 0.05
    with pytest.raises(ValueError, match="not inside the image"):
        predict(crop, sharp_model, region=(400, 0, 200, 10))


class CountingArray:
    """A lazy array that records which windows were read."""

    def __init__(self, data):
        self.data, self.reads = data, []
        self.shape, self.dtype = data.shape, data.dtype

    def __getitem__(self, key):
        self.reads.append(key)
        return self.data[key]


def test_lazy_input_is_read_tile_by_tile_and_only_near_the_region(random_model, crop):
    lazy = CountingArray(crop)
    predict(lazy, random_model, tile=128, overlap=32, region=(0, 0, 100, 100), **ENGINE)
    read = sum((k[0].stop - k[0].start) * (k[1].stop - k[1].start) for k in lazy.reads)
    assert read < 0.25 * crop.shape[0] * crop.shape[1]
    assert all((k[0].stop - k[0].start) <= 128 for k in lazy.reads)
    # the tissue gate looks at the same neighbourhood, never at the whole lazy level
    gated = CountingArray(crop)
    predict(gated, random_model, tile=128, overlap=32, region=(0, 0, 100, 100))
    read = sum((k[0].stop - k[0].start) * (k[1].stop - k[1].start) for k in gated.reads)
    assert read < 0.25 * crop.shape[0] * crop.shape[1]


def test_progress_and_cancel(random_model, crop):
    seen = []
    predict(crop, random_model, tile=128, overlap=32, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    total = seen[-1][1]
    assert seen[0] == (0, total) and seen[-1] == (total, total) and total > 4
    done = []
    with pytest.raises(Cancelled, match="cancelled after 4 of"):
        predict(crop, random_model, tile=128, overlap=32, batch_size=2,
                progress=lambda d, t: done.append(d), should_stop=lambda: done[-1] >= 4)
    assert done[-1] == 4  # no batch ran after the stop


def test_generator_closes_cleanly_between_batches(random_model, crop):
    gen = iter_predict(crop, random_model, tile=128, overlap=32)
    assert next(gen)[0] == 0
    next(gen)
    gen.close()  # what napari's worker.quit() does


def test_bad_images_are_refused_or_converted(random_model):
    with pytest.raises(ImageFormatError, match="grayscale"):
        predict(np.zeros((64, 64), np.uint8), random_model)
    rgba = np.full((64, 64, 4), 128, np.uint8)
    with pytest.warns(UserWarning, match="alpha"):
        assert predict(rgba, random_model).probability.shape == (64, 64)
    deep = np.full((64, 64, 3), 30000, np.uint16)
    with pytest.warns(UserWarning, match="16-bit|uint16"):
        assert predict(deep, random_model).probability.shape == (64, 64)


def test_blend_window_is_positive_and_flat_inside():
    w = blend_window(256, 256, 64)
    assert w.min() > 0 and w[64:192, 64:192].min() == 1.0 and w.max() == 1.0


# -- the tissue gate, with the bundled model on the bundled samples -------------------------

@pytest.fixture(scope="module")
def bundled():
    from napari_histoseg.api import load_model

    return load_model(device="cpu", engine="torch")   # float32 on every CPU: the gate is tested, not the engine


def test_the_tissue_gate_keeps_the_tumour_of_an_image_that_is_all_tissue(bundled, he_image):
    """The 1000 x 1000 carcinoma sample is tissue from edge to edge: the gate must take
    (almost) no tumour away. At the sample's scale, 0.25 µm/px (estimated from its nuclei),
    the bundled 0.2.0 model: 921,237 px without the gate, 914,389 with it."""
    gated = predict(he_image, bundled, mpp=0.25)
    plain = predict(he_image, bundled, mpp=0.25, tissue_gate=False)
    assert plain.tissue is None and gated.tissue.mean() > 0.95
    tumour, tumour_plain = int((gated.mask == 1).sum()), int((plain.mask == 1).sum())
    assert tumour_plain > 10_000                       # the sample really has tumour
    assert tumour >= 0.99 * tumour_plain               # the gate costs at most 1 % of it
    # the share of the tissue called tumour is the share of the image, give or take a point
    # (the gate takes off the white lumina inside the carcinoma, which the model calls tumour)
    assert gated.tumour_fraction_of_tissue >= plain.tumour_fraction_of_tissue - 0.01


def test_the_gate_in_the_api_and_an_explicit_tissue_mask(random_model):
    from napari_histoseg.api import segment

    glass = np.full((200, 300, 3), 240, np.uint8)
    glass[50:150, 100:200] = (170, 80, 150)            # one stained island on glass
    prob = segment(glass, random_model, tile=128)
    assert prob[:40].max() == 0 and prob[100, 150] > 0  # glass is 0, tissue is the model's
    assert segment(glass, random_model, tile=128, tissue_gate=False)[:40].min() > 0
    mine = np.zeros((200, 300), bool)
    mine[:, :150] = True
    pred = predict(glass, random_model, tile=128, tissue=mine)
    assert pred.probability[:, 150:].max() == 0 and pred.tissue_px == 200 * 150
    with pytest.raises(ValueError, match="tissue mask"):
        predict(glass, random_model, tile=128, tissue=mine[:100])
    blank = predict(np.full((128, 128, 3), 245, np.uint8), random_model, tile=128)
    assert not blank.mask.any() and blank.tumour_fraction_of_tissue is None


# -- the model's scale and flip TTA ---------------------------------------------------------

class _Recorder:
    """A stand-in model at 0.5 µm/px whose tumour probability is the red channel / 255, and
    which records the tile sizes it was given."""

    out_channels = 1

    def __init__(self, mpp=0.5):
        from napari_histoseg.models.checkpoint import ModelMeta

        self.meta = ModelMeta(arch="fake", mpp=mpp)
        self.shapes = []

    def predict(self, batch):
        self.shapes.append(batch.shape[1:3])
        return (batch[..., 0].astype(np.float32) / 255.0)[:, None]


def test_an_image_at_another_scale_is_resampled_to_the_models_and_back():
    """A 0.25 µm/px image goes through a 0.5 µm/px model at half size; the map comes back on
    the image's own pixels and still follows the image (a left-right ramp)."""
    ramp = np.zeros((300, 700, 3), np.uint8)
    ramp[..., 0] = np.linspace(0, 255, 700)[None]
    model = _Recorder()
    pred = predict(ramp, model, tile=256, overlap=32, mpp=0.25, **ENGINE)
    assert pred.probability.shape == (300, 700) and pred.scale == 2.0
    assert pred.image_mpp == 0.25 and pred.model_mpp == 0.5
    assert all(max(s) <= 256 for s in model.shapes)          # model-side tiles, not image-side
    assert np.abs(pred.probability - ramp[..., 0] / 255.0)[:, 8:-8].max() < 0.03
    same = _Recorder()
    assert predict(ramp, same, tile=256, overlap=32, mpp=0.5, **ENGINE).scale == 1.0
    unknown = predict(ramp, _Recorder(), tile=256, overlap=32, **ENGINE)
    assert unknown.scale == 1.0 and unknown.image_mpp is None          # unknown: used as it is


def test_flip_tta_averages_the_four_flips(random_model, crop):
    from napari_histoseg.core.tiling import FlipAveraged

    x = crop[None, :128, :128]
    tta = FlipAveraged(random_model).predict(x)
    flips = [random_model.predict(np.ascontiguousarray(np.flip(x, a)))
             for a in ((1,), (2,), (1, 2))]
    back = [np.flip(p, (a[0] + 1,) if len(a) == 1 else (2, 3)) for p, a in zip(flips, ((1,), (2,), (1, 2)))]
    expected = (random_model.predict(x) + sum(back)) / 4
    assert tta.shape == (1, 1, 128, 128) and np.allclose(tta, expected, atol=1e-5)
    assert predict(crop, random_model, tile=256, tta=True, **ENGINE).probability.shape == crop.shape[:2]


def test_the_api_takes_a_magnification_and_warns_once_when_the_scale_is_unknown(random_model):
    from napari_histoseg.api import segment
    from napari_histoseg.io.checks import InputError

    model = Segmenter(random_model.module, copy.deepcopy(random_model.meta), device="cpu")
    model.meta.mpp = 0.5
    img = np.full((96, 96, 3), (180, 90, 160), np.uint8)
    assert segment(img, model, tile=64, magnification="40x").shape == (96, 96)
    with pytest.warns(UserWarning, match="pixel size is unknown"):
        segment(img, model, tile=64)
    with pytest.raises(InputError, match="not both"):
        segment(img, model, tile=64, mpp=0.25, magnification=40)
    with pytest.raises(InputError):
        segment(img, model, tile=64, mpp=float("nan"))


def test_the_calibration_temperature_of_the_checkpoint_is_applied(random_model):
    model = Segmenter(random_model.module, copy.deepcopy(random_model.meta), device="cpu")
    z = torch.tensor([[[[2.0]]]])
    assert float(model.activate(z)) == pytest.approx(torch.sigmoid(z).item())
    model.meta.preprocessing = {"temperature": 2.0}
    assert float(model.activate(z)) == pytest.approx(torch.sigmoid(z / 2).item())


def test_histoseg_segment_resamples_by_magnification_and_says_when_the_scale_is_unknown(
        tmp_path, random_model, capsys):
    from skimage.io import imsave

    from napari_histoseg.cli import main
    from napari_histoseg.models import save_checkpoint

    meta = copy.deepcopy(random_model.meta)
    meta.tile_size, meta.mpp = 128, 0.5
    ckpt = save_checkpoint(random_model.module, tmp_path / "m.safetensors", meta)
    img = np.full((200, 260, 3), (170, 90, 160), np.uint8)
    imsave(tmp_path / "x.png", img, check_contrast=False)
    base = ["segment", str(tmp_path / "x.png"), "--model", str(ckpt), "--device", "cpu"]
    assert main(base + ["-o", str(tmp_path / "a.png"), "--magnification", "40x"]) == 0
    out = capsys.readouterr()
    assert "resampled 0.25 -> 0.5 µm/px" in out.out and "pixel size" not in out.err
    assert main(base + ["-o", str(tmp_path / "b.png")]) == 0
    err = capsys.readouterr().err
    assert "does not record its pixel size" in err and "--magnification" in err
    assert main(base + ["-o", str(tmp_path / "c.png"), "--mpp", "0.25", "--magnification", "20x"]) == 2
    assert "not both" in capsys.readouterr().err
