"""The label-propagation refinement engine (napari_histoseg.refinement), its CLI and the robot."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.io import imread, imsave

from napari_histoseg.refinement import RefineSession, SeedError, postprocess, refine
from napari_histoseg.refinement.robot import next_click, noc, simulate_clicks

PINK, PURPLE = (232, 190, 215), (110, 50, 140)


def disk_image(size=512, radius=150, noise=8.0, seed=0):
    """Pale pink with a purple disk 300 px wide in the middle, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius ** 2
    img = np.where(inside[..., None], PURPLE, PINK).astype(np.float32)
    img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
    return img, inside


def click(shape, y, x, label, r=5):
    s = np.zeros(shape, np.uint8)
    s[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = label
    return s


@pytest.fixture(scope="module")
def real():
    """A 384 x 384 crop of the bundled breast carcinoma sample and a smooth prior."""
    from scipy import ndimage

    from napari_histoseg.plugin.samples import breast_carcinoma

    img = np.asarray(breast_carcinoma()[0][0])[300:684, 300:684, :3].copy()
    dark = 255.0 - img.mean(-1)
    prior = ndimage.gaussian_filter(dark, 12)
    prior = ((prior - prior.min()) / (np.ptp(prior) + 1e-6)).astype(np.float32)
    return img, prior


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


def test_cli_writes_a_01_png(tmp_path, capsys):
    import tifffile

    from napari_histoseg.cli import main

    img, inside = disk_image(256, 80)
    imsave(tmp_path / "img.png", img, check_contrast=False)
    imsave(tmp_path / "seeds.png", click(inside.shape, 128, 128, 1) + click(inside.shape, 10, 10, 2),
           check_contrast=False)
    tifffile.imwrite(tmp_path / "prob.tif", np.full(inside.shape, 0.3, np.float32))
    out = tmp_path / "out" / "mask.png"
    rc = main(["refine", str(tmp_path / "img.png"), "--seeds", str(tmp_path / "seeds.png"),
               "--prior", str(tmp_path / "prob.tif"), "-o", str(out)])
    assert rc == 0
    m = imread(out)
    assert m.dtype == np.uint8 and m.shape == inside.shape and set(np.unique(m)) <= {0, 1}
    assert m[inside].mean() > 0.95 and m[~inside].mean() < 0.05
    assert "% tumour" in capsys.readouterr().out
    imsave(tmp_path / "bad.png", np.full((256, 256), 7, np.uint8), check_contrast=False)
    rc = main(["refine", str(tmp_path / "img.png"), "--seeds", str(tmp_path / "bad.png"), "-o", str(out)])
    assert rc == 2 and "only 0" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, says", [("--alpha", "1.5", "< 1"), ("--prior-weight", "nan", "finite"),
                                                 ("--sigma-color", "0", "> 0")])
def test_cli_refuses_a_bad_number_naming_the_option(tmp_path, capsys, option, value, says):
    from napari_histoseg.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["refine", str(tmp_path / "img.png"), "--seeds", str(tmp_path / "s.png"), "-o",
              str(tmp_path / "o.png"), option, value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and option in err and says in err


@pytest.mark.parametrize("params, says", [({"alpha": 1.0}, "alpha"), ({"reach": -1}, "reach"),
                                          ({"method": "flood"}, "method"), ({"superpixel_size": 2.5}, "superpixel_size")])
def test_a_bad_parameter_is_refused_with_its_name(params, says):
    img, _ = disk_image(64, 20)
    with pytest.raises(ValueError, match=says):
        RefineSession(img, **params)


def test_robot_clicks_into_the_largest_error_and_counts_clicks():
    truth = np.zeros((100, 100), np.uint8)
    truth[10:60, 10:60] = 1  # 50 x 50 missed
    pred = np.zeros_like(truth)
    pred[80:90, 80:90] = 1  # 10 x 10 false
    assert next_click(pred, truth) == (34, 34, 1) or next_click(pred, truth)[2] == 1
    assert next_click(truth, truth) is None
    img, inside = disk_image(256, 80)
    dices = simulate_clicks(img, inside.astype(np.uint8), refine, max_clicks=3)
    assert len(dices) == 4 and dices[0] == 0.0 and dices[1] > 0.9
    assert noc(dices) == 1 and noc([0.1, 0.2]) == 1


def texture_pair(size=256, seed=0):
    """Two touching halves of one mean colour: left dense dark dots on pale pink (like
    lymphocytes), right smooth pink-purple of the same mean colour."""
    rng = np.random.default_rng(seed)
    dots = rng.random((size, size)) < 0.25
    from scipy import ndimage

    dots = ndimage.binary_dilation(dots & (rng.random((size, size)) < 0.3), iterations=1)
    left = np.where(dots[..., None], PURPLE, PINK).astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:, : size // 2] = left[:, : size // 2]
    img[:, size // 2:] = left[:, : size // 2].reshape(-1, 3).mean(0)
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return img


@pytest.mark.parametrize("with_prior", [False, True])
def test_a_stroke_in_one_texture_does_not_take_the_touching_one_of_the_same_colour(with_prior):
    img = texture_pair()
    means = img[:, :128].reshape(-1, 3).mean(0), img[:, 128:].reshape(-1, 3).mean(0)
    assert np.abs(means[0] - means[1]).max() < 3  # the same colour on average
    prior = np.full(img.shape[:2], 0.3, np.float32) if with_prior else None
    from scipy import ndimage

    seeds = np.zeros(img.shape[:2], np.uint8)
    seeds[40:216, 112:117] = 1  # a 5 px stroke in the dotted half, 11 px from the other
    labels = refine(img, seeds, prior=prior)
    assert labels[ndimage.distance_transform_edt(seeds == 0) <= 10].mean() > 0.99, "around the stroke: tumour"
    assert labels[:, 128:].mean() < 0.01, "the other texture stays as it was"
    assert labels[:, 131:].max() == 0
    labels = refine(img, click(img.shape[:2], 128, 64, 1), prior=prior)
    assert labels[:, 20:108].mean() > 0.99, "a click takes the clicked texture"
    assert labels[:, 148:].mean() < 0.01, "and not the other"


@pytest.mark.parametrize("method", ["confined", "region", "lgc"])
def test_a_stroke_and_clicks_are_always_honoured(real, method):
    img, prior = real
    seeds = np.zeros(img.shape[:2], np.uint8)
    seeds[50:55, 20:360] = 2  # a long stroke across everything
    seeds[250:255, 20:360] = 1
    seeds[52, 100] = 1  # a one-pixel click of the other class inside it
    for p in (None, prior, 1.0 - prior):
        labels = refine(img, seeds, prior=p, method=method)
        assert np.all(labels[seeds == 1] == 1) and np.all(labels[seeds == 2] == 0)


@pytest.mark.parametrize("method", ["confined", "region"])
def test_undo_and_redo_give_exactly_the_labels_of_before(real, method):
    img, prior = real
    session = RefineSession(img, prior, method=method)
    s1 = click(img.shape[:2], 100, 100, 1)
    s2 = s1.copy()
    s2[200:205, 40:300] = 2
    l1 = session.update(s1)
    l2 = session.update(s2)
    assert not np.array_equal(l1, l2)
    assert np.array_equal(session.update(s1), l1)  # undo
    assert np.array_equal(session.update(s2), l2)  # redo
    s3 = s2.copy()
    s3[300:305, 40:300] = 1  # and work goes on warm from the restored state
    l3 = session.update(s3)
    assert np.all(l3[s3 == 1] == 1) and np.all(l3[s3 == 2] == 0)


def test_a_stroke_does_not_flood_a_confident_model_far_away():
    """A not-tumour stroke in a pale lumen inside a confident tumour nest clears the
    lumen and leaves the nest; the plain propagation (method lgc) may take more."""
    img, inside = disk_image(noise=4.0)
    yy, xx = np.mgrid[:512, :512]
    lumen = (yy - 256) ** 2 + (xx - 256) ** 2 <= 30 ** 2
    img[lumen] = (240, 235, 240)
    prior = np.where(inside, 0.95, 0.05).astype(np.float32)
    seeds = np.zeros(inside.shape, np.uint8)
    seeds[254:259, 236:277] = 2
    labels = refine(img, seeds, prior=prior)
    nest = inside & ~ndimage_dilate(lumen, 4)
    assert labels[lumen & ~ndimage_dilate(~lumen, 3)].mean() < 0.05
    assert labels[nest].mean() > 0.98


def ndimage_dilate(mask, n):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=n)


def test_robot_strokes_along_the_largest_error_inside_it():
    from napari_histoseg.refinement.robot import next_stroke, simulate_strokes, worst_drop

    truth = np.zeros((100, 100), np.uint8)
    truth[10:60, 10:90] = 1
    stroke, label = next_stroke(np.zeros_like(truth), truth)
    assert label == 1 and stroke.any() and np.all(truth[stroke] == 1)
    assert stroke[35].sum() >= 30  # along the long axis of the 50 x 80 block
    img, inside = disk_image(256, 80)
    dices = simulate_strokes(img, inside.astype(np.uint8), refine, max_strokes=3)
    assert len(dices) == 4 and dices[1] > 0.9 and worst_drop(dices) < 0.02


def square_half_wrong(seed=0):
    """Pink tissue with a purple block (x 250..400); the model's confident tumour square
    (x 100..400) covers the block and, wrongly, as much pink beside it."""
    rng = np.random.default_rng(seed)
    img = np.full((512, 512, 3), PINK, np.float32)
    img[100:400, 250:400] = PURPLE
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    prior = np.full((512, 512), 0.05, np.float32)
    prior[100:400, 100:400] = 0.95
    return img, prior


def test_region_one_click_clears_the_wrong_half_of_a_confident_region():
    img, prior = square_half_wrong()
    labels = refine(img, click((512, 512), 250, 175, 2), prior=prior, method="region")
    assert labels[110:390, 110:240].mean() < 0.05, "the pink half the model got wrong is cleared"
    assert labels[110:390, 260:390].mean() > 0.99, "the purple half stays tumour"
    assert labels[:, :90].max() == 0 and labels[:90].max() == 0


def test_hold_keeps_a_stroke_from_taking_confident_uniform_ground_far_away():
    rng = np.random.default_rng(0)
    img = np.clip(np.full((512, 512, 3), PINK, np.float32) + rng.normal(0, 6, (512, 512, 3)), 0, 255)
    prior = np.full((512, 512), 0.02, np.float32)  # the model: confidently no tumour
    seeds = np.zeros((512, 512), np.uint8)
    seeds[254:259, 200:312] = 1
    from scipy import ndimage

    far = ndimage.distance_transform_edt(seeds == 0) > 60
    labels = refine(img.astype(np.uint8), seeds, prior=prior, hold=1.0)
    assert np.all(labels[seeds == 1] == 1)
    assert labels[far].max() == 0, "nothing beyond 60 px of the stroke changes"


@pytest.mark.parametrize("method, near_share", [("confined", 0.35), ("region", 0.35), ("lgc", 0.9)])
def test_a_stroke_near_a_wrong_boundary_moves_it_and_erases_nothing(method, near_share):
    from scipy import ndimage

    img, inside = disk_image(noise=6.0)
    yy, xx = np.mgrid[:512, :512]
    model = (yy - 256) ** 2 + (xx - 226) ** 2 <= 150 ** 2  # the model's disk, 30 px too far left
    prior = np.where(model, 0.9, 0.1).astype(np.float32)
    seeds = np.zeros((512, 512), np.uint8)
    seeds[226:286, 394:399] = 1  # a stroke in the missed crescent
    labels = refine(img, seeds, prior=prior, method=method)
    near = ndimage.distance_transform_edt(seeds == 0) < 50
    assert labels[inside & ~model & near].mean() > near_share, "the boundary moves out to the colour edge"
    assert labels[inside & model].mean() > 0.99, "the rest of the disk stays"
    assert labels[~inside & ~model].mean() < 0.01, "no tumour across the edge"


def test_region_zones_undo_and_redo_exactly():
    img, prior = square_half_wrong()
    session = RefineSession(img, prior, method="region")
    s1 = click((512, 512), 250, 175, 2)  # a zone: the model's square, pink half
    s2 = s1 + click((512, 512), 30, 30, 1)  # and a tumour click far away
    l1 = session.update(s1)
    l2 = session.update(s2)
    assert np.array_equal(session.update(s1), l1)
    assert np.array_equal(session.update(s2), l2)
    assert np.array_equal(session.update(np.zeros_like(s1) + click((512, 512), 450, 450, 2)),
                          refine(img, click((512, 512), 450, 450, 2), prior=prior, method="region"))


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


def test_a_stroke_reaches_a_few_pixels_against_a_confident_model_and_a_click_its_region():
    """Uniform pink tissue, a model confidently saying no tumour: a 5 x 112 px tumour
    stroke turns what lies around it (3,825 px, none beyond 17 px; 184,542 px before
    strokes were told from clicks) and nothing farther, however alike the colour; one
    click in a purple disk still fills it."""
    from scipy import ndimage

    rng = np.random.default_rng(0)
    img = np.clip(np.full((512, 512, 3), PINK, np.float32) + rng.normal(0, 6, (512, 512, 3)), 0, 255)
    prior = np.full((512, 512), 0.02, np.float32)
    seeds = np.zeros((512, 512), np.uint8)
    seeds[254:259, 200:312] = 1
    labels = refine(img.astype(np.uint8), seeds, prior=prior)
    dist = ndimage.distance_transform_edt(seeds == 0)
    assert np.all(labels[seeds == 1] == 1)
    assert labels[dist > 40].max() == 0, "nothing beyond 40 px of the stroke turns to tumour"
    assert labels.sum() < 10_000
    disk, inside = disk_image()
    clicked = refine(disk, click(inside.shape, 256, 256, 1), prior=np.full(inside.shape, 0.2, np.float32))
    assert clicked[ndimage.binary_erosion(inside, iterations=3)].mean() > 0.99


def test_new_seeds_are_a_stroke_when_any_piece_is_wider_than_a_click():
    from napari_histoseg.refinement.reach import stroke_flags

    s = np.zeros((64, 64), np.uint8)
    s[10, 5:50] = 1         # a stroke ...
    s[14:16, 20:22] = 1     # ... and a piece of it that fell apart
    s[40:51, 40:51] = 2     # a click of the other class
    ch = np.flatnonzero(s)
    flags = stroke_flags(ch, s.ravel()[ch], s.shape, 16)
    kind = np.zeros(s.size, bool)
    kind[ch] = flags
    kind = kind.reshape(s.shape)
    assert kind[10, 5:50].all() and kind[14:16, 20:22].all()
    assert not kind[40:51, 40:51].any()
    clicks = np.zeros_like(s)
    clicks[5:10, 5:10] = clicks[50:55, 50:55] = 1  # two clicks at once stay clicks
    ch = np.flatnonzero(clicks)
    assert not stroke_flags(ch, clicks.ravel()[ch], s.shape, 16).any()


def test_undo_of_a_stroke_gives_back_its_reach_exactly(real):
    img, prior = real
    session = RefineSession(img, prior)
    base = click(img.shape[:2], 100, 100, 1)
    with_stroke = base.copy()
    with_stroke[200:205, 40:300] = 2
    l0 = session.update(base)
    session.update(with_stroke)
    assert np.array_equal(session.update(base), l0)
    other = base.copy()
    other[300:305, 40:300] = 2  # a new stroke elsewhere: the undone one leaves no trace
    fresh = RefineSession(img, prior)
    fresh.update(base)
    assert np.array_equal(session.update(other), fresh.update(other))


def test_the_same_dab_is_local_as_a_stroke_and_fills_its_region_as_a_click():
    from scipy import ndimage

    img, inside = disk_image()
    dab = click(inside.shape, 256, 256, 1)
    core = ndimage.binary_erosion(inside, iterations=3)
    as_click = RefineSession(img).update(dab, gesture="click")
    as_stroke = RefineSession(img).update(dab, gesture="stroke")
    assert as_click[core].mean() > 0.99
    assert np.all(as_stroke[dab == 1] == 1)
    assert as_stroke[ndimage.distance_transform_edt(dab == 0) > 40].max() == 0
    with pytest.raises(ValueError, match="gesture"):
        RefineSession(img).update(dab, gesture="brush")


def test_a_new_stroke_reach_applies_to_the_strokes_already_drawn(real):
    """Changing the stroke reach in the widget redraws the same strokes with it at once, as
    a fresh session with that reach would."""
    img, _ = real
    prior = np.full(img.shape[:2], 0.1, np.float32)   # a confident "not tumour" model
    seeds = np.zeros(img.shape[:2], np.uint8)
    seeds[150:155, 60:320] = 1
    session = RefineSession(img, prior, stroke_px=12)
    near = session.update(seeds, gesture="stroke").sum()
    session.set_params(stroke_px=40)
    wider = session.update(seeds, gesture="stroke")
    assert wider.sum() > near
    assert np.array_equal(wider, RefineSession(img, prior, stroke_px=40).update(seeds, gesture="stroke"))
