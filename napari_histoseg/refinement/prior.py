"""What the model's answer puts into the propagation, and what the seeds' zones take off it.

The session refines ``F = P + G`` (:mod:`~napari_histoseg.refinement.session`): ``P`` is
the model's answer, ``prior_weight * (2 p - 1)`` per pixel, or ``-no_prior_bias``
everywhere without a model. :class:`PriorTerms` holds ``P`` per pixel and per superpixel,
the model's confidence per superpixel and the leak it adds to the superpixel solve
(``confidence_weight``), the colour steps and hop costs of the reach searches
(:mod:`~napari_histoseg.refinement.reach`), and for ``method="region"`` the zones in
which a correcting seed discounts the prior (:class:`~napari_histoseg.refinement.zones.ZoneGraph`):
there ``P`` becomes ``(1 - kc) P``.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp_

__all__ = ["PriorTerms"]


class PriorTerms:
    """The prior's terms of one session's graph.

    Parameters
    ----------
    graph : CoarseGraph
        The superpixel graph (:func:`~napari_histoseg.refinement.graph.coarse_graph`).
    superpixels : (H * W,) int
        Each pixel's superpixel (flat).
    prior : (H, W) float or None
        The model's tumour probability.
    params : dict
        Resolved session parameters (:func:`~napari_histoseg.refinement.params.resolve`).

    Attributes
    ----------
    y : (H * W,) float32
        ``P`` per pixel; ``yc`` its superpixel means; ``yeff`` ``P`` after the zones'
        discount (``y`` itself until a discount is taken).
    conf, leak : (n,) float
        The model's mean confidence ``|2 p - 1|`` per superpixel and
        ``confidence_weight`` times it.
    steps, cost : (n, n) CSR
        Colour step between neighbours (in units of the automatic sigma) and that plus
        ``hop_cost``: the edge lengths of the reach searches.
    zones : ZoneGraph or None
        Only for ``method="region"`` with a prior.
    kc : (n,) float
        The discount per superpixel now in force.
    """

    def __init__(self, graph, superpixels: np.ndarray, prior, params: dict):
        p, g = params, graph
        self._sp = superpixels
        if prior is None:
            self.y = np.full(superpixels.size, -p["no_prior_bias"], np.float32)
        else:
            self.y = (np.float32(p["prior_weight"]) * (2.0 * prior - 1.0)).ravel().astype(np.float32)
        self.yc = np.bincount(superpixels, self.y, minlength=g.n) / g.count
        if prior is None:
            conf = np.zeros(g.n)
        else:
            conf = np.bincount(superpixels, np.abs(2.0 * prior.ravel() - 1.0), minlength=g.n) / g.count
        self.conf = conf
        self.leak = p["confidence_weight"] * conf
        step = np.sqrt(g.d2) / max(g.sigma_auto, 1e-6) + 1e-6
        e = g.edges
        ij = (np.concatenate([e[:, 0], e[:, 1]]), np.concatenate([e[:, 1], e[:, 0]]))
        self.steps = sp_.coo_matrix((np.concatenate([step, step]), ij), shape=(g.n, g.n)).tocsr()
        self.cost = self.steps.copy()
        self.cost.data += p["hop_cost"]
        self.zones = None
        if p["method"] == "region" and prior is not None:
            from napari_histoseg.refinement.zones import ZoneGraph

            self.zones = ZoneGraph(e, step, self.yc > 0, conf, p["zone_hop"], p["zone_confidence"])
        self.kc = np.zeros(g.n)
        self.yeff = self.y

    def set_discount(self, kc: np.ndarray, pix: np.ndarray) -> None:
        """Take the zones' discount ``kc`` per superpixel (:meth:`ZoneGraph.discount`):
        the prior there is ``(1 - kc) P``; ``pix``: the pixels whose superpixels' value
        changed."""
        self.kc = kc
        if pix.size == 0:
            return
        if self.yeff is self.y:
            self.yeff = self.y.copy()
        self.yeff[pix] = self.y[pix] * (1.0 - kc[self._sp[pix]]).astype(np.float32)
