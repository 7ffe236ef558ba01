"""Label propagation from clicks: reach, honoured seeds, bad input, warm updates, views, parameters."""

from __future__ import annotations

import numpy as np
import pytest
from refine_cases import click, disk_image, real_crop, square_half_wrong

from napari_histoseg.refinement import RefineSession, SeedError, postprocess, refine
from napari_histoseg.refinement.robot import next_click


@pytest.fixture(scope="module")
def real():
    """A 384 x 384 crop of the bundled breast carcinoma sample and a smooth prior."""
    return real_crop()


@pytest.mark.parametrize("with_prior", [False, True])
def test_one_click_flips_a_uniform_region_and_stops_at_its_edge(with_prior):
    img, inside = disk_image()
    prior = np.full(inside.shape, 0.2, np.float32) if with_prior else None  # model: no tumour
    labels = refine(img, click(inside.shape, 256, 256, 1), prior=prior)
    assert labels.dtype == np.uint8 and labels.shape == inside.shape
    assert set(np.unique(labels)) <= {0, 1}
    from scipy import ndimage

    core = ndimage.binary_erosion(inside, iterations=3)
    outside = ~ndimage.binary_dilation(inside, iterations=3)
    assert labels[core].mean() > 0.99, "the whole 300 px disk flips to tumour"
    assert labels[outside].mean() < 0.01, "no tumour across the strong colour edge"


@pytest.mark.parametrize("method", ["confined", "lgc"])
def test_not_tumour_click_removes_a_false_region_and_keeps_the_rest(method):
    img, inside = disk_image()
    prior = np.where(inside, 0.8, 0.2).astype(np.float32)
    prior[:, :60] = 0.8  # a false tumour strip on the pink side, 60 px wide, 512 long
    labels = refine(img, click(inside.shape, 256, 20, 2), prior=prior, method=method)
    # the plain propagation clears the whole strip; the confined one what lies within
    # its reach of one click (the strip's ends, 250 px away, need a second click)
    rows = slice(0, 512) if method == "lgc" else slice(76, 436)
    assert labels[rows, :50].mean() < 0.01
    assert labels[inside].mean() > 0.99


def test_seeds_are_always_honoured(real):
    img, prior = real
    rng = np.random.default_rng(1)
    seeds = np.zeros(img.shape[:2], np.uint8)
    ys, xs = rng.integers(0, 384, 40), rng.integers(0, 384, 40)
    seeds[ys[:20], xs[:20]] = 1
    seeds[ys[20:], xs[20:]] = 2
    seeds[100:104, 100:140] = 2  # a stroke of one class inside the other's area
    seeds[200:203, 50:300] = 1
    for p in (None, prior, 1.0 - prior):
        labels = refine(img, seeds, prior=p)
        assert np.all(labels[seeds == 1] == 1) and np.all(labels[seeds == 2] == 0)


@pytest.mark.parametrize("seeds,match", [
    (np.zeros((10, 10), np.uint8), "shape"),
    (np.full((64, 64), 3, np.uint8), "label value.*3.*only 0"),
    (np.zeros((64, 64), np.uint8), "no seeds"),
    (np.full((64, 64), -1, np.int16), "label value.*-1"),
    (np.full((64, 64), 0.5), "whole numbers"),
])
def test_bad_seeds_raise_seed_error_with_a_clear_message(seeds, match):
    img = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(SeedError, match=match):
        refine(img, seeds)
    session = RefineSession(np.full((64, 64, 3), 200, np.uint8))
    with pytest.raises(SeedError, match=match):
        session.update(seeds)
    assert issubclass(SeedError, ValueError)


def test_warm_updates_agree_with_a_cold_refine(real):
    img, prior = real
    session = RefineSession(img, prior)
    seeds = np.zeros(img.shape[:2], np.uint8)
    truth = prior > 0.35  # a made-up truth for the robot's clicks
    pred = (prior >= 0.5).astype(np.uint8)
    for _ in range(6):
        c = next_click(pred, truth.astype(np.uint8))
        seeds |= click(seeds.shape, c[0], c[1], c[2]) * (seeds == 0)
        pred = session.update(seeds)
    cold = refine(img, seeds, prior=prior)
    assert np.mean(pred != cold) < 0.01  # measured 0.47 % at the defaults
    assert session.timings["total"] < 5


def test_view_limits_the_redraw_and_a_later_full_update_catches_up():
    from scipy import ndimage

    img, inside = disk_image()
    core = ndimage.binary_erosion(inside, iterations=3)
    session = RefineSession(img, np.full(inside.shape, 0.2, np.float32))
    before = session.labels
    seeds = click(inside.shape, 256, 256, 1)
    labels = session.update(seeds, view=(0, 0, 256, 512))  # the top half is on screen
    assert np.array_equal(labels[300:], before[300:])
    assert labels[120:240][core[120:240]].mean() > 0.99
    full = session.update(seeds)
    assert full[core & (np.arange(512)[:, None] > 300)].mean() > 0.99


def test_more_than_65536_superpixels_redraw_exactly_their_own_pixels():
    """The superpixel index sorts labels by 16-bit digits: past 65,536 superpixels (a
    large image or small superpixels) each must still get its own pixels and box, else a
    click redraws the wrong part of the image."""
    from napari_histoseg.refinement.index import SuperpixelIndex

    rng = np.random.default_rng(0)
    n = 70_000
    labels = np.concatenate([np.arange(n), rng.integers(0, n, 300 * 300 - n)])
    labels = rng.permutation(labels).reshape(300, 300).astype(np.int32)
    idx = SuperpixelIndex(labels)
    flat = labels.ravel()
    for node in (0, 1, 65_535, 65_536, 65_537, n - 1):
        assert np.array_equal(idx.pixels(np.array([node])), np.flatnonzero(flat == node))
        ys, xs = np.nonzero(labels == node)
        assert idx.box[node].tolist() == [ys.min(), ys.max(), xs.min(), xs.max()]
    assert np.array_equal(np.sort(idx.pixels(np.arange(n))), np.arange(flat.size))
    img, inside = disk_image(size=600, radius=180)
    session = RefineSession(img, superpixel_size=2)
    assert session.graph.n > 65_536
    seeds = click(inside.shape, 300, 300, 1, r=8)
    labels = session.update(seeds)  # a click's reach is counted in superpixels: 2 px ones reach little
    assert labels[seeds == 1].all() and labels[~inside].sum() == 0 and labels[inside].sum() > (seeds == 1).sum()


def test_set_params_recomputes_like_a_new_session(real):
    img, prior = real
    seeds = click(prior.shape, 200, 200, 1) + click(prior.shape, 40, 40, 2)
    session = RefineSession(img, prior)
    session.update(seeds)
    session.set_params(prior_weight=0.2, colour_sensitivity=2.0)
    warm = session.update(seeds)
    cold = refine(img, seeds, prior=prior, prior_weight=0.2, colour_sensitivity=2.0)
    assert np.mean(warm != cold) < 0.01
    with pytest.raises(ValueError, match="new RefineSession"):
        session.set_params(superpixel_size=8)
    with pytest.raises(TypeError, match="unknown"):
        RefineSession(img, prior, colour_sensitivty=2)


def test_postprocess_returns_labels_of_the_image_shape(real):
    img, prior = real
    for labels in (RefineSession(img, prior).postprocess(), postprocess(img, prior)):
        assert labels.shape == prior.shape and labels.dtype == np.uint8
        assert set(np.unique(labels)) <= {0, 1}
        assert np.mean(labels == (prior >= 0.5)) > 0.9  # a smoothing, not a new answer
    with pytest.raises(ValueError, match="prior"):
        RefineSession(img).postprocess()


@pytest.mark.parametrize("params, says", [({"alpha": 1.0}, "alpha"), ({"reach": -1}, "reach"),
                                          ({"method": "flood"}, "method"), ({"superpixel_size": 2.5}, "superpixel_size")])
def test_a_bad_parameter_is_refused_with_its_name(params, says):
    img, _ = disk_image(64, 20)
    with pytest.raises(ValueError, match=says):
        RefineSession(img, **params)


def test_region_one_click_clears_the_wrong_half_of_a_confident_region():
    img, prior = square_half_wrong()
    labels = refine(img, click((512, 512), 250, 175, 2), prior=prior, method="region")
    assert labels[110:390, 110:240].mean() < 0.05, "the pink half the model got wrong is cleared"
    assert labels[110:390, 260:390].mean() > 0.99, "the purple half stays tumour"
    assert labels[:, :90].max() == 0 and labels[:90].max() == 0


def test_the_old_american_parameter_names_still_work_with_a_warning():
    img, inside = disk_image(128, 40)
    seeds = click(inside.shape, 64, 64, 1)
    new = refine(img, seeds, colour_sensitivity=2.0, colour_space="lab")
    with pytest.warns(DeprecationWarning, match="colour_sensitivity"):
        old = refine(img, seeds, color_sensitivity=2.0, color_space="lab")
    assert np.array_equal(new, old)
    from napari_histoseg.refinement import graph

    with pytest.warns(DeprecationWarning):
        assert graph.COLOR_SPACES == graph.COLOUR_SPACES

