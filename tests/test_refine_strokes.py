"""Strokes stay local: told from clicks, honoured, kept from flooding a confident model or the touching texture."""

from __future__ import annotations

import numpy as np
import pytest
from refine_cases import PINK, click, disk_image, ndimage_dilate, real_crop, texture_pair

from napari_histoseg.refinement import RefineSession, refine


@pytest.fixture(scope="module")
def real():
    """A 384 x 384 crop of the bundled breast carcinoma sample and a smooth prior."""
    return real_crop()


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

