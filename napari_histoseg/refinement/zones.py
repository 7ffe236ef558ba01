"""Region-level flips: where a correction discredits the model's answer.

A click of one class inside a region the model gave to the other class says "the model is
wrong here", not only "this pixel is wrong". ``method="region"`` turns that into a *zone*
per correcting seed group: the superpixels of the model's connected region (its mask,
``prior >= 0.5``) around the seeds, out to a geodesic radius that scales with how far the
seeds lie from that region's border. Inside a zone the prior's weight falls to zero (the
person overrides the model there) and the propagation from the seeds decides; outside,
the model's answer stands as in ``method="confined"``.

The geodesic cost of a hop between neighbouring superpixels is its colour step (in units
of the median step) plus ``zone_hop`` plus ``zone_confidence`` times the model's
confidence ``|2p - 1|`` on the two sides, so a zone spreads across uniform tissue where
the model is unsure and stops at colour edges and at confident ground. Measured on the
first click of the simulated annotator with the bundled model's prior (all 32 bcss test
tiles, superpixels 16 px): the geodesic distance from the click separates the error
around it from the rest of its region with ROC area 0.91 (the confidence alone 0.77,
regional colour 0.72, local contrast 0.56, haematoxylin density 0.56), and flipping the
superpixels within 1.5 times the border distance (hop 1, confidence 2) raised Dice by
0.096 on average, the worst tile losing 0.015 (BENCHMARKS.md, Refinement).
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp_
from scipy.sparse.csgraph import connected_components, dijkstra

__all__ = ["ZoneGraph"]


class ZoneGraph:
    """The model's regions on the superpixel graph and the geodesic costs of zones.

    Parameters
    ----------
    edges : (m, 2) int
        Superpixel adjacency (each pair once).
    step : (m,) float
        Colour step of each edge in units of the median step.
    positive : (n,) bool
        The model's answer per superpixel (tumour where True).
    confidence : (n,) float
        ``|2p - 1|`` per superpixel, in [0, 1].
    hop, confidence_cost : float
        Cost of a hop on top of its colour step, and the weight of the confidence.
    """

    def __init__(self, edges, step, positive, confidence, hop: float = 1.0, confidence_cost: float = 2.0):
        n = positive.size
        self.n = n
        self.positive = np.asarray(positive, bool)
        a, b = edges[:, 0], edges[:, 1]
        same = self.positive[a] == self.positive[b]
        ij = (np.concatenate([a[same], b[same]]), np.concatenate([b[same], a[same]]))
        adj = sp_.coo_matrix((np.ones(2 * int(same.sum())), ij), shape=(n, n)).tocsr()
        self.ncomp, self.region = connected_components(adj, directed=False)
        # a superpixel on a region's border: one of its neighbours has the other answer
        self.border = np.zeros(n, bool)
        self.border[a[~same]] = True
        self.border[b[~same]] = True
        cost = step + hop + confidence_cost * 0.5 * (confidence[a] + confidence[b])
        ij = (np.concatenate([a, b]), np.concatenate([b, a]))
        self.cost = sp_.coo_matrix((np.concatenate([cost, cost]), ij), shape=(n, n)).tocsr()
        self.adj_seeded = sp_.coo_matrix((np.ones(2 * a.size), ij), shape=(n, n)).tocsr()

    def discount(self, tumour: np.ndarray, not_tumour: np.ndarray, factor: float = 1.5,
                 limit: float = 40.0, max_size: int = 0) -> np.ndarray:
        """How much the prior is discredited per superpixel, in [0, 1]: 1 inside a zone's
        radius, falling smoothly to 0 just beyond it, 0 outside every zone.

        Parameters
        ----------
        tumour, not_tumour : (n,) bool
            Superpixels holding seeds of each class.
        factor : float
            A zone's radius is ``factor`` times the geodesic distance from its seeds to
            the border of their region (the nearest superpixel with the other answer).
        limit : float
            The largest radius (where the region has no border within reach).
        max_size : int
            Only groups of at most this many superpixels make a zone (0: every group):
            a click says "the model is wrong here", a stroke "these pixels and what is
            clearly like them".
        """
        out = np.zeros(self.n)
        for seeded, want in ((tumour, True), (not_tumour, False)):
            correcting = seeded & (self.positive != want)
            if not correcting.any():
                continue
            # one zone per connected group of correcting seeds in one region
            nodes = np.flatnonzero(correcting)
            sub = self.adj_seeded[nodes][:, nodes]
            sub = sub.multiply(self.region[nodes][:, None] == self.region[nodes][None, :])
            _, group = connected_components(sp_.csr_matrix(sub), directed=False)
            for g in np.unique(group):
                src = nodes[group == g]
                if max_size and src.size > max_size:
                    continue
                reg = self.region[src[0]]
                d = dijkstra(self.cost, directed=False, indices=src, min_only=True, limit=limit)
                outside = self.region != reg
                reachable = outside & np.isfinite(d)
                edge = float(d[reachable].min()) if reachable.any() else limit / factor
                radius = min(factor * max(edge, 1e-6), limit)
                inside = (self.region == reg) & np.isfinite(d)
                # 1 well inside the radius, falling smoothly to 0 just beyond it
                k = 1.0 / (1.0 + (d[inside] / radius) ** 8)
                out[inside] = np.maximum(out[inside], k)
        return out
