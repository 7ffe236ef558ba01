"""Undo, redo and erasing in a warm session: exactly the labels of before, and what a fresh session gives."""

from __future__ import annotations

import numpy as np
import pytest
from refine_cases import click, disk_image, real_crop, square_half_wrong

from napari_histoseg.refinement import RefineSession, refine


@pytest.fixture(scope="module")
def real():
    """A 384 x 384 crop of the bundled breast carcinoma sample and a smooth prior."""
    return real_crop()


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



def test_erasing_the_last_stroke_by_hand_gives_exactly_the_labels_before_it(real):
    """Painting a stroke out again with the eraser leaves the seed layer as it was, so the
    session answers with the very labels it had (whatever path the layer took)."""
    img, prior = real
    session = RefineSession(img, prior)
    seeds = click(img.shape[:2], 100, 100, 1)
    before = session.update(seeds)
    seeds[200:205, 40:300] = 2
    assert not np.array_equal(session.update(seeds, gesture="stroke"), before)
    seeds[200:203, 40:300] = 0   # erased in two passes
    session.update(seeds)
    seeds[203:205, 40:300] = 0
    assert np.array_equal(session.update(seeds), before)


def test_an_erased_stroke_far_from_the_others_leaves_what_a_fresh_session_gives():
    """Two strokes far apart and one between them erased (a seed layer never seen before):
    its band and its correction go, the others stay as a session that never saw it has them."""
    from scipy import ndimage

    img, inside = disk_image(noise=6.0)
    prior = np.full(inside.shape, 0.1, np.float32)   # a confident "not tumour" model
    a, b, c = (np.zeros(inside.shape, np.uint8) for _ in range(3))
    a[20:25, 20:200] = 1
    b[250:255, 150:350] = 1
    c[480:485, 300:490] = 1
    session = RefineSession(img, prior)
    session.update(a, gesture="stroke")
    session.update(a + b, gesture="stroke")
    session.update(a + b + c, gesture="stroke")
    erased = session.update(a + c)
    fresh = RefineSession(img, prior)
    fresh.update(a, gesture="stroke")
    want = fresh.update(a + c, gesture="stroke")
    around_b = ndimage.distance_transform_edt(b == 0) < 40
    assert erased[around_b].sum() == want[around_b].sum() == 0, "nothing of the erased stroke is left"
    assert np.mean(erased != want) < 0.002
    for k in (1, 2):
        assert np.array_equal(session._tally.near[k], fresh._tally.near[k])


def test_undo_after_updates_in_a_view_is_exact(real):
    img, prior = real
    session = RefineSession(img, prior)
    start = session.labels
    view = (0, 0, 192, 384)   # the top half on screen
    s1 = click(img.shape[:2], 60, 60, 1)
    l1 = session.update(s1, view=view)
    s2 = s1 + click(img.shape[:2], 150, 300, 2)
    l2 = session.update(s2, view=view)
    s3 = s2.copy()
    s3[100:105, 30:350] = 1
    l3 = session.update(s3, view=view, gesture="stroke")
    assert np.array_equal(session.update(s1, view=view), l1)
    assert np.array_equal(session.update(s3, view=view), l3)
    assert np.array_equal(session.update(s2, view=view), l2)
    assert np.array_equal(session.labels[250:], start[250:]), "off screen nothing was redrawn"


def test_a_warm_session_refuses_a_bad_value_or_no_seeds_and_goes_on(real):
    from napari_histoseg.refinement import SeedError

    img, prior = real
    session = RefineSession(img, prior)
    seeds = click(img.shape[:2], 100, 100, 1)
    first = session.update(seeds)
    bad = seeds.copy()
    bad[300, 300] = 7
    with pytest.raises(SeedError, match="label value.*7"):
        session.update(bad)
    with pytest.raises(SeedError, match="no seeds"):
        session.update(np.zeros_like(seeds))
    assert np.array_equal(session.update(seeds), first)
    more = seeds + click(img.shape[:2], 300, 300, 2)
    assert np.array_equal(session.update(more), refine(img, more, prior=prior)) or \
        np.mean(session.update(more) != refine(img, more, prior=prior)) < 0.01


def test_the_undo_budget_counts_a_shared_base_once_and_drops_the_oldest():
    from napari_histoseg.refinement.history import History, PixelDeltas

    image = np.zeros(10_000, np.float32)
    deltas = PixelDeltas((image,))
    history = History(60_000)   # the base (40 kB) and a few small states
    for k in range(6):
        image[k * 100:(k + 1) * 100] = k + 1
        deltas.mark(np.arange(k * 100, (k + 1) * 100))
        history.put(k, (deltas.snapshot((image,)),))
        assert history.nbytes <= history.max_bytes
    assert 0 not in history and 5 in history
    kept = [k for k in range(6) if k in history]
    own = sum(history.get(k)[0].own_bytes for k in kept)
    assert history.nbytes == own + image.nbytes, "the shared base is counted once"
    deltas.restore(history.get(kept[0])[0], (image,))
    assert image[kept[0] * 100] == kept[0] + 1 and image[(kept[0] + 1) * 100] == 0
