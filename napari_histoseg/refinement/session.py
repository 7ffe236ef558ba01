"""The interactive refinement session: precompute once per image, answer every click fast.

What is propagated. The model's answer enters as ``P = prior_weight * (2 p - 1)`` (or a
small constant ``-no_prior_bias`` without a model) and the seeds as clamped values +1
(tumour) / -1 (not tumour). The refinement is ``F = P + G``, where ``G`` is Zhou et al.'s
propagation ``G = (1 - a)(I - a S)^-1 Y`` of the *corrections* the seeds ask for,
clamped at the seeds to ``seed - P``: in LGC terms ``Y`` is chosen so that without seeds
``F`` is the model's answer itself, and every click spreads its correction until colour
edges (small ``S``) or distance (``a``) stop it. (Propagating the prior itself with the
large ``a`` that a click needs would blur the model's answer over hundreds of pixels: on
camelyon that cost 0.1 Dice before the first click.) ``F > 0`` is tumour.

One update (a new click on top of the earlier ones) does three things:

1. *Reach* -- ``G`` on the superpixel graph (about 4,000 nodes per megapixel) with
   every seeded superpixel clamped to its seeds' vote, by conjugate gradients started
   from the last solution. With ``alpha`` 0.999 a click spreads over tens of
   superpixels, i.e. hundreds of pixels, until colour edges stop it.
2. *Precision* -- ``G`` on the 4-connected pixel grid, only in the superpixels on
   either side of a coarse boundary that the seeds moved (and in seeded superpixels),
   with the coarse ``G`` of the pixels around as a fixed boundary and every seeded
   pixel clamped; ``alpha_fine`` close to 1 makes it an edge-following interpolation
   across the band. Elsewhere a pixel's ``G`` is its superpixel's.
3. *Only what changed* -- superpixels whose ``G`` moved less than ``change_tol`` keep
   their pixels; with ``view`` only the superpixels on screen are redrawn and the
   others are remembered as stale until a later view (or ``view=None``) covers them.
"""

from __future__ import annotations

import time

import numpy as np

from napari_histoseg.refinement.graph import (
    affinity_channels,
    coarse_graph,
    colour_features,
    pixel_affinity,
    superpixels,
)
from napari_histoseg.refinement.history import HISTORY_BYTES, History, PixelDeltas
from napari_histoseg.refinement.index import SuperpixelIndex
from napari_histoseg.refinement.params import DEFAULTS, METHODS, check_params, resolve
from napari_histoseg.refinement.prior import PriorTerms
from napari_histoseg.refinement.reach import ReachSearch, held, reachable
from napari_histoseg.refinement.seeds import NOT_TUMOUR, TUMOUR, check_image, check_prior, check_seeds
from napari_histoseg.refinement.solver import normalise, propagate_grid, solve_clamped, solve_pixels
from napari_histoseg.refinement.tally import SeedTally

__all__ = ["RefineSession", "DEFAULTS", "METHODS"]

class RefineSession:
    """Label-propagation refinement of one image, warm from click to click.

    Parameters
    ----------
    image : (H, W, 3) uint8
        RGB H&E image.
    prior : (H, W) float, optional
        The model's tumour probability in [0, 1]; None to refine from seeds alone.
    prior_weight : float
        Weight of the prior: the model's answer is ``prior_weight * (2 p - 1)`` while
        seeds are clamped at +1 / -1. Lower lets one click overrule a confident model
        over a larger area. Default 0.5.
    sigma_colour : float, optional
        Sigma of the colour affinity in the units of ``colour_space`` (for both graphs).
        Default: taken from the image (RMS colour difference along each graph's edges).
    colour_sensitivity : float
        Divides the automatic sigma: above 1 colour edges stop propagation sooner,
        below 1 it flows across them more easily. Default 1.
    alpha : float
        Propagation weight on the superpixel graph; the reach is about
        ``sqrt(alpha / (6 (1 - alpha)))`` superpixels (6 neighbours each), 13 for the
        default 0.999.
    alpha_fine : float
        Propagation weight on the pixel grid near the boundary. Default 0.9999.
    superpixel_size : int
        Mean superpixel edge in pixels. Default 16.
    compactness : float
        SLIC compactness on the Lab scale: lower follows colour edges more closely,
        higher gives squarer superpixels. Default 10.
    colour_space : {"lab", "od", "rgb"}
        Colour features of the affinities (see :mod:`napari_histoseg.refinement.graph`).
    no_prior_bias : float
        Without a prior the answer before any seed is ``-no_prior_bias`` everywhere
        (slightly "not tumour"), so tumour seeds spread through their colour region and
        stop at its edges instead of flooding the image. Default 0.05.
    change_tol : float
        Superpixels whose coarse ``G`` moved less than this keep their pixels (and
        superpixels with ``|G|`` below it get no pixel-level solve). Default 0.01.
    tol : float
        Relative residual at which the conjugate gradients stop. Default 1e-3.
    method : {"confined", "region", "lgc"}
        ``"lgc"``: the plain propagation above (every seed reaches as far as colour lets
        it). ``"confined"`` (default) bounds a seed's reach by colour and the model's
        confidence, so that a stroke means "these pixels and what is clearly like them";
        ``"region"`` adds that a click inside a region the model got wrong overrides the
        model around it. Their own parameters (``confidence_weight``, ``reach``,
        ``hop_cost``, ``texture_weight``, ``zone_factor``, ``zone_hop``,
        ``zone_confidence``, ``zone_max``, ``hold``; for strokes, which stay local:
        ``click_extent``, ``stroke_*``) are in :mod:`napari_histoseg.refinement.params`.
    features : (H, W, C) float, optional
        The segmentation network's features per pixel
        (:func:`~napari_histoseg.refinement.features.session_features`), for
        ``affinity="features"`` or ``"mixed"`` (ignored with the default ``"colour"``).

    Attributes
    ----------
    timings : dict
        Seconds spent in ``setup`` (``setup_parts``: colour, superpixels, channels (texture
        and features), coarse_graph, pixel_affinity, index_and_state) and in the parts of
        the last update.

    Examples
    --------
    >>> s = RefineSession(image, prior=prob)          # doctest: +SKIP
    >>> labels = s.update(seeds)                      # doctest: +SKIP
    """

    def __init__(self, image, prior=None, features=None, **params):
        self.params = resolve(params)
        p = self.params
        t0 = time.perf_counter()
        self.image = check_image(image)
        h, w = self.shape = self.image.shape[:2]
        self.prior = check_prior(prior, self.shape)
        parts, t = {}, time.perf_counter()

        def lap(name):  # seconds per stage of the set-up, in timings["setup_parts"]
            nonlocal t
            parts[name], t = time.perf_counter() - t, time.perf_counter()

        feat = colour_features(self.image, p["colour_space"])
        lap("colour")
        self.superpixels = sp = superpixels(feat, int(p["superpixel_size"]), p["compactness"])
        lap("superpixels")
        if features is not None:
            from napari_histoseg.refinement.features import check_features

            features = check_features(features, self.shape)
        # the colour sets the automatic sigma; texture and the network's features only add distance
        feat_c, sigma_channels = affinity_channels(feat, p, features)
        lap("channels")
        self.graph = g = coarse_graph(sp, feat_c, p["sigma_colour"], p["colour_sensitivity"],
                                      sigma_channels=sigma_channels)
        del feat_c
        self._S = normalise(g.weights)
        lap("coarse_graph")
        self.affinity = pixel_affinity(feat, p["sigma_colour"], p["colour_sensitivity"])
        del feat
        lap("pixel_affinity")
        flat = sp.ravel()
        self._sp = flat
        n = g.n
        self._terms = PriorTerms(self.graph, self._sp, self.prior, self.params)
        self._index = SuperpixelIndex(sp)
        self._count = self._index.count
        self._adj = g.weights.copy()
        self._adj.data[:] = 1.0
        self._tally = SeedTally(flat, n, self.shape)
        self._search = ReachSearch()
        self._ok = {TUMOUR: np.zeros(n, bool), NOT_TUMOUR: np.zeros(n, bool)}
        self._G = None
        self._Gpix = np.zeros(h * w, np.float32)
        self._labels = (self._terms.y > 0).astype(np.uint8)
        self._band = np.zeros(n, bool)
        self._dirty = np.zeros(n, bool)
        self._pos = np.full(h * w, -1, np.int32)
        self._history = History(HISTORY_BYTES)
        self._pixstate = PixelDeltas((self._Gpix, self._labels))
        lap("index_and_state")
        self.timings = {"setup": time.perf_counter() - t0, "setup_parts": parts}

    def set_params(self, **params) -> None:
        """Change parameters of a running session; the next :meth:`update` recomputes
        from all seeds so far (cold, about the cost of a first click).

        Colour (``sigma_colour``, ``colour_sensitivity``) re-weights the stored graphs;
        ``prior_weight``, ``no_prior_bias``, ``alpha``, ``alpha_fine``, ``change_tol`` and
        ``tol`` are simply taken. ``superpixel_size``, ``compactness`` and
        ``colour_space`` change the graphs themselves: make a new session for those.
        """
        params = check_params(params)
        rebuild = [k for k in ("superpixel_size", "compactness", "colour_space", "method", "texture_weight",
                                  "affinity", "feature_weight")
                   if k in params and params[k] != self.params[k]]
        if rebuild:
            raise ValueError(f"changing {', '.join(rebuild)} needs a new RefineSession")
        self.params.update(params)
        p = self.params
        if {"sigma_colour", "colour_sensitivity"} & set(params):
            sens = max(p["colour_sensitivity"], 1e-6)
            sc = p["sigma_colour"]
            self.graph = self.graph.reweighted(sc if sc is not None else self.graph.sigma_auto / sens)
            self._S = normalise(self.graph.weights)
            self.affinity = self.affinity.reweighted(sc if sc is not None else self.affinity.sigma_auto / sens)
        self._terms = PriorTerms(self.graph, self._sp, self.prior, self.params)
        self._G = None
        self._dirty[:] = False
        self._history.clear()

    @property
    def labels(self) -> np.ndarray:
        """The current labels, uint8 (H, W) 0/1 (a copy)."""
        return self._labels.reshape(self.shape).copy()

    def update(self, seeds, view=None, gesture=None) -> np.ndarray:
        """Refine with all seeds so far, warm from the last solution.

        Parameters
        ----------
        seeds : (H, W) int
            0 no seed, 1 tumour, 2 not tumour: all seeds, old and new.
        view : (y, x, h, w), optional
            Region on screen: pixels are redrawn only there; elsewhere the labels stay as
            they were until a later update covers them.
        gesture : {None, "stroke", "click"}
            What the new seeds are (a brush stroke stays local, a click reaches its
            region); None: told by their shape (``click_extent``).

        Returns
        -------
        labels : (H, W) uint8
            1 tumour, 0 not tumour; every seeded pixel has its seed's class.

        Raises
        ------
        SeedError
            Wrong shape, values other than 0, 1, 2, or no seed at all.
        """
        t0 = time.perf_counter()
        p = self.params
        n, tally = self.graph.n, self._tally
        # the layer is read once; its values are checked where they changed (SeedTally.change)
        s = check_seeds(seeds, self.shape, require_any=False, values=False).ravel()
        ch, layer = tally.change(s)
        key = (layer, None if view is None else tuple(view))
        if key in self._history:  # undo / redo: the very state this seed layer had
            self._restore(self._history.get(key), s, ch)
            self.timings.update(total=time.perf_counter() - t0, restored=True)
            return self.labels
        cap = p["stroke_px"] if p["method"] != "lgc" else 0.0   # lgc has no use for the stroke band
        touched = tally.apply(s, int(p["click_extent"]), cap, gesture, changed=ch)
        t1 = time.perf_counter()
        tot = tally.nt + tally.nn
        clamped = tot > 0
        target = (tally.nt - tally.nn) / np.maximum(tot, 1)
        leak = None
        if self._terms.zones is not None:  # the prior yields in the zones of correcting seeds
            kc = self._terms.zones.discount(tally.nt > 0, tally.nn > 0, p["zone_factor"], max_size=int(p["zone_max"]))
            moved = np.flatnonzero(np.abs(kc - self._terms.kc) > 1e-9)
            self._terms.set_discount(kc, self._index.pixels(moved))
            touched[moved] = True
        yc = self._terms.yc * (1.0 - self._terms.kc)
        values = target - yc
        if p["method"] != "lgc":  # every search once, and while seeds are only added from the new ones
            search, src = self._search, tally.sources()
            clicks = search.clicks(src, self._terms.cost, p["reach"])
            terms = self._terms
            far = held(search, terms.cost, tally, clicks, clamped, terms.kc, terms.conf, terms.yc > 0, p,
                       self.prior is not None)
            values[far] = 0.0
            clamped = clamped | far
            # confidence resists more the more colour lies between a node and the seeds:
            # in the region a stroke was drawn in the stroke wins, across edges the model
            dc = np.minimum(search.distance("steps", tot > 0, self._terms.steps, p["reach"]), p["reach"])
            leak = self._terms.leak * (1.0 - self._terms.kc) * (dc / p["reach"]) ** 2
        G = solve_clamped(self._S, np.zeros(n), clamped, values, p["alpha"], x0=self._G, tol=p["tol"], leak=leak)
        clamped = tot > 0
        if p["method"] != "lgc":  # a class is given against the model only within reach of its seeds
            ok = reachable(search, self._terms.cost, src, clicks, p["stroke_reach"])
            Lc = np.where(yc > 0, (yc + G > 0) | ~ok[NOT_TUMOUR], (yc + G > 0) & ok[TUMOUR])
            if p["stroke_px"] > 0:  # strokes reach pixels within stroke_px (SeedTally.near)
                ok = clicks
            # pixels may follow the boundary one superpixel further than the superpixels
            ok = {k: v | (self._adj @ v.astype(np.float64) > 0) for k, v in ok.items()}
            touched |= (ok[TUMOUR] != self._ok[TUMOUR]) | (ok[NOT_TUMOUR] != self._ok[NOT_TUMOUR])
            self._ok = ok
        else:
            Lc = yc + G > 0
        e = self.graph.edges
        active = np.abs(G) > p["change_tol"]
        cut = (Lc[e[:, 0]] != Lc[e[:, 1]]) & (active[e[:, 0]] | active[e[:, 1]])
        band = clamped.copy()
        band[e[cut, 0]] = True
        band[e[cut, 1]] = True
        t2 = time.perf_counter()
        tol = p["change_tol"]
        if self._G is None:
            changed = np.ones(n, bool)
            big = changed.copy()
            shift = np.zeros(n)
        else:
            shift = G - self._G
            changed = (np.abs(shift) > tol) | (band != self._band) | touched
            # the pixel-level solve is redone where the coarse answer moved a lot, where
            # a superpixel joined the band, and around new seeds; elsewhere in the band
            # the last pixel solution is shifted by the coarse change
            big = (np.abs(shift) > 5 * tol) | (band & ~self._band) | touched
            big |= band & ((self._adj @ touched.astype(np.float64)) > 0)
        big |= self._dirty
        changed |= self._dirty
        if view is not None:
            inside = self._index.in_view(view)
            self._dirty = changed & ~inside
            changed &= inside
            big &= inside
        else:
            self._dirty[:] = False
        self._G, self._band = G, band
        plain = np.flatnonzero(changed & ~band)
        pix = plain_pix = self._index.pixels(plain)
        gp = np.repeat(G[plain], self._count[plain]).astype(np.float32)
        self._Gpix[pix] = gp
        self._labels[pix] = self._decide(self._terms.yeff[pix] + gp, pix)
        moved = np.flatnonzero(changed & band & ~big)
        pix = moved_pix = self._index.pixels(moved)
        self._Gpix[pix] += np.repeat(shift[moved], self._count[moved]).astype(np.float32)
        self._labels[pix] = self._decide(self._terms.yeff[pix] + self._Gpix[pix], pix)
        fine = np.flatnonzero(big & band)
        pix = self._index.pixels(fine)
        sd = tally.seeds[pix]
        seeded = sd > 0
        sp_ = pix[seeded]
        self._Gpix[sp_] = np.where(sd[seeded] == TUMOUR, 1.0, -1.0) - self._terms.yeff[sp_]
        U = pix[~seeded]
        # warm start: the last pixel answer moved by its superpixel's coarse change
        x0 = self._Gpix[U] + np.repeat(shift[fine], self._count[fine])[~seeded].astype(np.float32)
        Gu = solve_pixels(U, np.zeros(U.size), self._Gpix, self.affinity, p["alpha_fine"], self._pos,
                          x0=x0, tol=p["tol"])
        self._Gpix[U] = Gu
        self._labels[U] = self._decide(self._terms.yeff[U] + Gu, U)
        allpix = np.concatenate([plain_pix, moved_pix, pix])
        sd = tally.seeds[allpix]
        hit = sd > 0
        self._labels[allpix[hit]] = sd[hit] == TUMOUR
        self._pixstate.mark(allpix)
        t3 = time.perf_counter()
        self.timings.update(seeds=t1 - t0, coarse=t2 - t1, fine=t3 - t2, total=t3 - t0,
                            fine_pixels=int(U.size), redrawn=int(changed.sum()), restored=False)
        self._remember(key)
        return self.labels

    def _decide(self, F: np.ndarray, pix: np.ndarray) -> np.ndarray:
        """Labels ``F > 0``, except that where the model (``model``: its label) is
        overruled, the seeds of the new class must reach superpixel ``nodes``."""
        L = F > 0
        model, nodes = self._terms.yeff[pix] > 0, self._sp[pix]
        if self.params["method"] == "lgc":
            return L
        ok_t, ok_n = self._ok[TUMOUR][nodes], self._ok[NOT_TUMOUR][nodes]
        if self.params["stroke_px"] > 0:  # near a stroke, or carried by it at nearly full strength
            near, m = self._tally.near, self.params["stroke_margin"]
            ok_t, ok_n = ok_t | near[TUMOUR][pix] | (F >= m), ok_n | near[NOT_TUMOUR][pix] | (F <= -m)
        return np.where(model, L | ~ok_n, L & ok_t)

    def _remember(self, key) -> None:
        """Keep the state after this update so that the same seeds again (undo, redo)
        give exactly these labels."""
        self._history.put(key, (self._G.copy(), self._band.copy(), self._dirty.copy(),
                                self._pixstate.snapshot((self._Gpix, self._labels)), self._terms.kc.copy(),
                                self._tally.stroke_pixels, self._ok[TUMOUR].copy(), self._ok[NOT_TUMOUR].copy()))

    def _restore(self, state, seeds: np.ndarray, changed: np.ndarray) -> None:
        G, band, dirty, pixels, kc, stroke, ok_t, ok_n = state
        self._terms.set_discount(kc, self._index.pixels(np.flatnonzero(kc != self._terms.kc)))
        self._tally.reset(seeds, stroke, changed)
        self._ok = {TUMOUR: ok_t.copy(), NOT_TUMOUR: ok_n.copy()}
        self._G, self._band, self._dirty = G.copy(), band.copy(), dirty.copy()
        self._pixstate.restore(pixels, (self._Gpix, self._labels))

    def postprocess(self, alpha: float = 0.9) -> np.ndarray:
        """The paper's use (a): label propagation of the prior alone on the pixel graph.

        ``F* = (1 - alpha)(I - alpha S)^-1 (2 p - 1)`` with no seeds, ``alpha`` 0.9 as in
        the paper; an edge-aware smoothing of the probability map a few pixels wide.

        Returns
        -------
        labels : (H, W) uint8
            1 where ``F* > 0``.
        """
        if self.prior is None:
            raise ValueError("postprocess needs a prior (the model's tumour probability)")
        F = propagate_grid(2.0 * self.prior - 1.0, self.affinity, alpha=alpha)
        return (F > 0).astype(np.uint8)
