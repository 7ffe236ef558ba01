"""The simulated annotator: how interactive refinement quality is measured.

As ``DESIGN.md`` specifies it: start from the prior thresholded at 0.5 (or from
nothing); at each step find the largest connected component of the errors (missed
tumour or false tumour), click a disk of radius 5 px at the point of that component
farthest from its border, labelled tumour (1) for a miss and not tumour (2) for a false
alarm, refine with all clicks so far and record Dice. NoC@90 is the first click count
whose Dice reaches 0.90 (the maximum number of clicks where none does).

Each method is driven by its own errors (the standard protocol of interactive
segmentation benchmarks): two methods see the same rule, not the same click positions.

>>> from napari_histoseg.refinement import refine                    # doctest: +SKIP
>>> dices = simulate_clicks(rgb, truth, refine, prior=prob)      # doctest: +SKIP
>>> noc(dices, 0.9)                                              # doctest: +SKIP
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import ndimage as ndi

from napari_histoseg.core.scores import dice

__all__ = ["next_click", "next_stroke", "simulate_clicks", "simulate_strokes", "noc", "worst_drop", "session_refiner",
           "random_walker_refiner"]

CLICK_RADIUS = 5
STROKE_WIDTH = 5


def largest_error(pred: np.ndarray, truth: np.ndarray, ignore_index: int = 255):
    """``(label, mask)`` of the largest connected error component, or None: label 1
    (tumour) for missed tumour, 2 (not tumour) for false tumour."""
    valid = truth != ignore_index
    best = None
    for label, err in ((1, valid & (truth == 1) & (pred != 1)), (2, valid & (truth != 1) & (pred == 1))):
        if not err.any():
            continue
        comp, n = ndi.label(err)
        sizes = np.bincount(comp.ravel())
        sizes[0] = 0
        k = int(sizes.argmax())
        if best is None or sizes[k] > best[0]:
            best = (int(sizes[k]), label, comp == k)
    return None if best is None else best[1:]


def next_click(pred: np.ndarray, truth: np.ndarray, ignore_index: int = 255):
    """Where the annotator clicks next: ``(y, x, label)`` or None when nothing is wrong.

    ``label`` is 1 (tumour) inside the largest missed-tumour component, 2 (not tumour)
    inside the largest false-tumour component, whichever is larger; the point is the
    one farthest from the component's border (the image edge counts as border).
    """
    err = largest_error(pred, truth, ignore_index)
    if err is None:
        return None
    label, mask = err
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(dist.argmax()), dist.shape)
    return int(y), int(x), label


def next_stroke(pred: np.ndarray, truth: np.ndarray, ignore_index: int = 255, width: int = STROKE_WIDTH):
    """The annotator's next stroke: ``(mask, label)`` or None when nothing is wrong.

    A stroke ``width`` px wide along the medial axis (skeleton) of the largest error
    component, kept inside it: where the component is thinner than the stroke, only
    the skeleton's pixels at least ``width // 2 + 1`` px from its border are painted,
    and where none are, a click-sized disk at the farthest point. Labelled by the truth
    (every stroke pixel is in the component, so of its class).
    """
    from skimage.morphology import disk, skeletonize

    err = largest_error(pred, truth, ignore_index)
    if err is None:
        return None
    label, mask = err
    dist = ndi.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    half = width // 2
    axis = skeletonize(mask) & (dist > half)
    if not axis.any():
        axis = np.zeros_like(mask)
        axis[np.unravel_index(int(dist.argmax()), dist.shape)] = True
    stroke = ndi.binary_dilation(axis, disk(half)) & mask
    return stroke, label


def _paint(seeds: np.ndarray, y: int, x: int, label: int, radius: int = CLICK_RADIUS) -> None:
    h, w = seeds.shape
    y0, y1, x0, x1 = max(0, y - radius), min(h, y + radius + 1), max(0, x - radius), min(w, x + radius + 1)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    disk = (yy - y) ** 2 + (xx - x) ** 2 <= radius * radius
    seeds[y0:y1, x0:x1][disk] = label


def simulate_clicks(image, truth, refine_fn: Callable, prior=None, max_clicks: int = 20,
                    radius: int = CLICK_RADIUS, ignore_index: int = 255,
                    on_click: Callable | None = None) -> list[float]:
    """Run the simulated annotator on one image.

    Parameters
    ----------
    image : (H, W, 3) uint8
    truth : (H, W) uint8
        1 tumour, 0 not tumour, ``ignore_index`` unknown.
    refine_fn : callable
        ``refine_fn(image, seeds, prior) -> labels`` (0/1); :func:`napari_histoseg.refinement.refine`
        fits, as do :func:`session_refiner` and :func:`random_walker_refiner`.
    prior : (H, W) float, optional
        The model's tumour probability; the start is ``prior >= 0.5`` (else nothing).
    max_clicks : int
    on_click : callable, optional
        Called as ``on_click(k, seeds, labels)`` after each refinement.

    Returns
    -------
    dices : list of float
        ``max_clicks + 1`` values: Dice after 0, 1, ..., ``max_clicks`` clicks (once no
        error is left the last value repeats).
    """
    truth = np.asarray(truth)
    pred = np.zeros(truth.shape, np.uint8) if prior is None else (np.asarray(prior) >= 0.5).astype(np.uint8)
    seeds = np.zeros(truth.shape, np.uint8)
    dices = [dice(pred, truth, ignore_index=ignore_index)]
    for k in range(1, max_clicks + 1):
        click = next_click(pred, truth, ignore_index)
        if click is None:
            dices.extend([dices[-1]] * (max_clicks + 1 - len(dices)))
            break
        _paint(seeds, click[0], click[1], click[2], radius)
        pred = np.asarray(refine_fn(image, seeds, prior)).astype(np.uint8)
        dices.append(dice(pred, truth, ignore_index=ignore_index))
        if on_click is not None:
            on_click(k, seeds, pred)
    return dices


def simulate_strokes(image, truth, refine_fn: Callable, prior=None, max_strokes: int = 10,
                     width: int = STROKE_WIDTH, ignore_index: int = 255,
                     on_stroke: Callable | None = None) -> list[float]:
    """The annotator with strokes (:func:`next_stroke`) instead of clicks.

    Same start, same refinement calls and same return value as :func:`simulate_clicks`:
    ``max_strokes + 1`` Dice values, after 0, 1, ..., ``max_strokes`` strokes. A stroke
    overwrites earlier seeds under it (the newest paint wins, as in napari).
    """
    truth = np.asarray(truth)
    pred = np.zeros(truth.shape, np.uint8) if prior is None else (np.asarray(prior) >= 0.5).astype(np.uint8)
    seeds = np.zeros(truth.shape, np.uint8)
    dices = [dice(pred, truth, ignore_index=ignore_index)]
    for k in range(1, max_strokes + 1):
        st = next_stroke(pred, truth, ignore_index, width)
        if st is None:
            dices.extend([dices[-1]] * (max_strokes + 1 - len(dices)))
            break
        seeds[st[0]] = st[1]
        pred = np.asarray(refine_fn(image, seeds, prior)).astype(np.uint8)
        dices.append(dice(pred, truth, ignore_index=ignore_index))
        if on_stroke is not None:
            on_stroke(k, seeds, pred)
    return dices


def worst_drop(dices: Sequence[float]) -> float:
    """The largest fall in Dice caused by one step (0 when none fell).

    >>> round(worst_drop([0.5, 0.7, 0.6, 0.9]), 3)
    0.1
    """
    d = np.diff(np.asarray(dices, float))
    return float(max(0.0, -d.min())) if d.size else 0.0


def noc(dices: Sequence[float], target: float = 0.9) -> int:
    """Number of clicks to reach ``target`` Dice: the first index whose value reaches it,
    ``len(dices) - 1`` (the maximum) where none does.

    >>> noc([0.5, 0.8, 0.92, 0.95]), noc([0.5, 0.6, 0.7])
    (2, 2)
    """
    for k, d in enumerate(dices):
        if d >= target:
            return k
    return len(dices) - 1


def session_refiner(gesture=None, features=None, **params) -> Callable:
    """A ``refine_fn`` that keeps one warm :class:`~napari_histoseg.refinement.RefineSession`
    per image (a new one when the image or prior object changes); ``gesture`` is passed to
    every update (``"stroke"`` for the stroke annotator: each step is drawn with the brush);
    ``features``: the network's features of the image the refiner is made for (see
    :mod:`~napari_histoseg.refinement.features`), for ``affinity="features"`` or ``"mixed"``."""
    from napari_histoseg.refinement import RefineSession

    state = {}

    def fn(image, seeds, prior=None):
        key = (id(image), id(prior))
        if state.get("key") != key:
            state["key"], state["session"] = key, RefineSession(image, prior, features=features, **params)
        return state["session"].update(seeds, gesture=gesture)

    fn.state = state
    return fn


def random_walker_refiner(beta: float = 130.0, mode: str = "cg_mg", **kwargs) -> Callable:
    """A ``refine_fn`` running ``skimage.segmentation.random_walker`` on the seeds alone
    (it has no use for a prior). With one seeded class every pixel gets that class."""
    from skimage.segmentation import random_walker

    def fn(image, seeds, prior=None):
        present = np.unique(seeds[seeds > 0])
        if present.size == 1:
            return np.full(seeds.shape, 1 if present[0] == 1 else 0, np.uint8)
        out = random_walker(np.asarray(image), seeds.astype(np.int32), beta=beta, mode=mode,
                            channel_axis=-1, **kwargs)
        return (out == 1).astype(np.uint8)

    return fn
