"""How far a seed reaches: clicks and strokes, each class on its own.

A click says "the model is wrong here": it reaches ``reach`` along the colour (geodesic
distance on the superpixel graph). A stroke says "these pixels and what is clearly like
them": it reaches only ``stroke_reach``, so a long stroke drawn through a region cannot
carry its class across a weak colour edge into the region beside it. What is a stroke and
what is a click is decided per gesture, from the seed pixels of one class that one update
adds: they are a stroke when a connected piece of them is wider than ``click_extent``
pixels (:func:`stroke_flags`).

Each class reaches on its own (:func:`reachable`): a pixel can be given the class the
model did not give it only within reach of a seed of that class; the propagation itself
runs as before (so the boundary still follows colour), but a label it carries further is
not taken.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from napari_histoseg.refinement.seeds import NOT_TUMOUR, TUMOUR

__all__ = ["seed_distance", "stroke_flags", "ReachSearch", "reachable", "held"]


def seed_distance(seeded: np.ndarray, cost, limit: float) -> np.ndarray:
    """Geodesic distance of every superpixel from the nearest ``seeded`` one along the
    edge costs ``cost`` (symmetric CSR), ``inf`` beyond ``limit`` (and everywhere without
    seeds)."""
    from scipy.sparse.csgraph import dijkstra

    src = np.flatnonzero(seeded)
    if src.size == 0 or limit <= 0:
        out = np.full(seeded.size, np.inf)
        out[src] = 0.0
        return out
    # the cost matrices are symmetric: as a directed graph scipy need not transpose them
    return dijkstra(cost, directed=True, indices=src, min_only=True, limit=limit)


def stroke_flags(changed: np.ndarray, values: np.ndarray, shape, click_extent: int) -> np.ndarray:
    """Which of the newly seeded pixels belong to a stroke.

    The new seed pixels of one class (one gesture, as the widget sends them) are a
    stroke when any connected piece of them (8-connected) has a bounding box more than
    ``click_extent`` pixels high or wide; a stroke along a thin, branching region can fall
    apart into pieces, and the small ones are still part of the stroke. Otherwise they
    are clicks (one or several).

    Parameters
    ----------
    changed : (m,) int
        Flat (row-major) indices of the pixels whose seed this update changed.
    values : (m,) uint8
        Their new seed values (0 = seed removed).
    shape : (H, W)
    click_extent : int

    Returns
    -------
    (m,) bool

    >>> s = np.zeros((40, 40), np.uint8); s[5, 2:30] = 1; s[9, 2] = 1; s[20:25, 20:25] = 2
    >>> ch = np.flatnonzero(s); int(stroke_flags(ch, s.ravel()[ch], s.shape, 16).sum())
    29
    """
    out = np.zeros(changed.size, bool)
    w = shape[1]
    for c in np.unique(values[values > 0]):
        mine = values == c
        ys, xs = np.divmod(changed[mine], w)
        y0, x0 = int(ys.min()), int(xs.min())
        if ys.max() - y0 < click_extent and xs.max() - x0 < click_extent:
            continue  # everything new of this class fits in one click
        box = np.zeros((int(ys.max()) - y0 + 1, int(xs.max()) - x0 + 1), bool)
        box[ys - y0, xs - x0] = True
        lab, _ = ndi.label(box, structure=np.ones((3, 3)))
        if any(sl[0].stop - sl[0].start > click_extent or sl[1].stop - sl[1].start > click_extent
               for sl in ndi.find_objects(lab)):
            out[mine] = True
    return out


class ReachSearch:
    """The geodesic searches of one session, each run once per update and, while its
    sources only grow (seeds added, none taken away), only from the new sources: the
    distance from a set is the smaller of the distances from its parts, so the answer is
    the one a search from all sources gives.

    >>> import scipy.sparse as sp
    >>> cost = sp.csr_matrix(np.array([[0, 1, 0], [1, 0, 1], [0, 1, 0]], float))
    >>> r = ReachSearch(); r.distance("a", np.array([True, False, False]), cost, 5).tolist()
    [0.0, 1.0, 2.0]
    >>> r.distance("a", np.array([True, False, True]), cost, 5).tolist()
    [0.0, 1.0, 0.0]
    """

    def __init__(self):
        self._memo: dict = {}

    def distance(self, name, sources: np.ndarray, cost, limit: float) -> np.ndarray:
        """:func:`seed_distance` of ``sources``, remembered under ``name``."""
        prev = self._memo.get(name)
        if prev is not None and prev[1] is cost and prev[2] == limit and not (prev[0] & ~sources).any():
            new = sources & ~prev[0]
            d = prev[3] if not new.any() else np.minimum(prev[3], seed_distance(new, cost, limit))
        else:
            d = seed_distance(sources, cost, limit)
        self._memo[name] = (sources.copy(), cost, limit, d)
        return d

    def clicks(self, sources: dict, cost, reach: float) -> dict:
        """``{class: (n,) bool}``: within ``reach`` of a click of that class."""
        return {cls: np.isfinite(self.distance(("click", cls), c, cost, reach)) for cls, (c, _) in sources.items()}


def reachable(search: ReachSearch, cost, sources: dict, clicks: dict, stroke_reach: float) -> dict:
    """Where each class may be given against the model: within ``reach`` of one of its
    clicks (``clicks``, :meth:`ReachSearch.clicks`) or ``stroke_reach`` of one of its
    strokes.

    Parameters
    ----------
    search : ReachSearch
    cost : (n, n) CSR
        Edge costs of the superpixel graph (colour step + hop cost).
    sources : dict
        ``{class: (clicks, strokes)}``: boolean per superpixel, seeded by a click or by a
        stroke of that class.
    clicks : dict
        ``{class: (n,) bool}`` within reach of its clicks.
    stroke_reach : float

    Returns
    -------
    dict
        ``{class: (n,) bool}``.
    """
    out = {}
    for cls, (_, strokes) in sources.items():
        ok = clicks[cls]
        if strokes.any():
            ok = ok | np.isfinite(search.distance(("stroke", cls), strokes, cost, stroke_reach))
        out[cls] = ok
    return out


def held(search: ReachSearch, cost, tally, clicks: dict, clamped: np.ndarray, kc: np.ndarray,
         conf: np.ndarray, positive: np.ndarray, p: dict, has_prior: bool) -> np.ndarray:
    """Superpixels that keep the model's answer (their correction clamped at 0).

    Those beyond ``reach`` of every click and ``stroke_hold`` of every stroke (with
    ``stroke_hold`` 0: beyond ``reach`` of every seed), and, with ``hold`` > 0, those
    whose answer is confident and lies beyond ``reach * (1 - hold * confidence)`` of every
    seed of the other class. Zones of correcting seeds (``kc`` > 0, ``method="region"``)
    are never held.

    Parameters
    ----------
    search : ReachSearch
    cost : (n, n) CSR
        Edge costs of the superpixel graph.
    tally : SeedTally
    clicks : dict
        ``{class: (n,) bool}`` within ``reach`` of its clicks (:meth:`ReachSearch.clicks`).
    clamped : (n,) bool
        Seeded superpixels.
    kc : (n,) float
        The zones' discount of the prior.
    conf : (n,) float
        The model's confidence ``|2p - 1|`` per superpixel.
    positive : (n,) bool
        The model's answer is tumour.
    p : dict
        The session's parameters.
    has_prior : bool
    """
    free = kc >= 1e-3
    if p["stroke_hold"] > 0:  # strokes open ground only around them
        t = tally
        strokes = (t.nts > 0) | (t.nns > 0)
        near = clicks[TUMOUR] | clicks[NOT_TUMOUR]
        near = near | np.isfinite(search.distance("strokes", strokes, cost, p["stroke_hold"]))
        far = ~near & ~free
    else:
        far = ~np.isfinite(search.distance("seeded", clamped, cost, p["reach"])) & ~free
    if p["hold"] <= 0 or not has_prior:
        return far
    r = p["reach"] * np.clip(1.0 - p["hold"] * conf * (1.0 - kc), 0.0, 1.0)
    d_t = search.distance(("seeded", TUMOUR), tally.nt > 0, cost, p["reach"])
    d_n = search.distance(("seeded", NOT_TUMOUR), tally.nn > 0, cost, p["reach"])
    return far | ((np.where(positive, d_n, d_t) > r) & ~clamped & ~free)
