"""Graphs and affinities for label propagation: colour features, superpixels, weights.

Colour and texture (what the distances are measured on) are in
:mod:`~napari_histoseg.refinement.channels`; their names are importable from here too.

Two graphs
----------
*Coarse* (reach): SLIC superpixels (scikit-image) joined where they touch, with Zhou et
al.'s colour-and-position affinity ``w_IJ = exp(-d_IJ^2 / (2 s_c^2)) exp(-|x_I - x_J|^2
/ (2 s_x^2))``; ``d_IJ`` is the smaller of the mean-colour and the regional-colour
distance, ``x`` the centroids, ``s_x`` twice the superpixel spacing.
*Fine* (precision): the 4-connected pixel grid with ``w_ij = exp(-d_ij^2 / (2 s_f^2))``,
``d_ij`` the smaller of the raw and the lightly smoothed colour difference (neighbours
are one pixel apart, so the position factor is a constant). The colour sigmas come from
the image unless given: the median neighbour distance on the coarse graph (at least 2
Lab units), the root mean square one on the pixel grid, each divided by
``colour_sensitivity``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import scipy.sparse as sp_
from scipy import ndimage

from napari_histoseg.refinement.channels import (  # noqa: F401  (the names' old home)
    COLOUR_SPACES,
    TEXTURE_STEP,
    _lab,
    affinity_channels,
    colour_features,
    texture_features,
)

__all__ = ["colour_features", "texture_features", "affinity_channels", "superpixels", "CoarseGraph", "coarse_graph",
           "PixelAffinity", "pixel_affinity", "regional_colour", "COLOUR_SPACES"]


def __getattr__(name):
    if name == "COLOR_SPACES":  # the old spelling
        import warnings

        warnings.warn("COLOR_SPACES is now COLOUR_SPACES", DeprecationWarning, stacklevel=2)
        return COLOUR_SPACES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def superpixels(features: np.ndarray, size: int = 16, compactness: float = 10.0,
                max_num_iter: int = 5) -> np.ndarray:
    """SLIC superpixels of about ``size`` x ``size`` px, labelled 0..n-1 without gaps.

    scikit-image's SLIC on the given colour features (no conversion). About 0.5 s per
    megapixel on one core; ``max_num_iter`` 5 instead of SLIC's 10 halves that and
    changes the boundaries little.
    """
    from skimage.segmentation import slic

    h, w = features.shape[:2]
    n = max(1, int(round(h * w / float(size * size))))
    # slic rescales a float image to [0, 1] over all channels before clustering (its
    # own Lab conversion comes after that); rescale the compactness the same way so
    # that it means what it means for Lab (10: colour dominates, edges are followed)
    span = float(features.max() - features.min()) or 1.0
    labels = slic(features, n_segments=n, compactness=compactness / span, max_num_iter=max_num_iter,
                  channel_axis=-1, convert2lab=False, start_label=0, enforce_connectivity=True)
    present = np.bincount(labels.ravel()) > 0  # relabel densely (no sort of every pixel)
    return (np.cumsum(present, dtype=np.int32) - 1)[labels].reshape(h, w)


@dataclass
class CoarseGraph:
    """Superpixel graph: ``weights`` (n, n) symmetric CSR, per-node ``colour`` means,
    ``centroid`` (y, x), pixel ``count``, the edge list ``edges`` (m, 2), their squared
    colour (``d2``) and centroid (``x2``) distances, the colour ``sigma`` used and the
    automatic one (``sigma_auto``, before ``colour_sensitivity``)."""

    weights: sp_.csr_matrix
    colour: np.ndarray
    centroid: np.ndarray
    count: np.ndarray
    edges: np.ndarray
    d2: np.ndarray
    x2: np.ndarray
    sigma: float
    sigma_auto: float
    sigma_position: float

    @property
    def n(self) -> int:
        return self.count.size

    def reweighted(self, sigma: float) -> "CoarseGraph":
        """The same graph with colour sigma ``sigma``."""
        e = self.edges
        wts = np.exp(-self.d2 / (2 * sigma ** 2) - self.x2 / (2 * self.sigma_position ** 2)) + 1e-10
        W = sp_.coo_matrix((np.concatenate([wts, wts]), (np.concatenate([e[:, 0], e[:, 1]]),
                                                         np.concatenate([e[:, 1], e[:, 0]]))),
                           shape=(self.n, self.n)).tocsr()
        return replace(self, weights=W, sigma=float(sigma))


def regional_colour(features: np.ndarray, scale: float) -> np.ndarray:
    """Colour averaged over a Gaussian neighbourhood of sigma ``scale`` px, computed on
    a block-mean image reduced by up to ``scale / 4`` (so it costs little on 4096^2).

    Returns the reduced (h', w', C) image and the reduction factor."""
    k = max(1, int(scale // 4))
    h, w, c = features.shape
    H, W = -(-h // k) * k, -(-w // k) * k
    f = features
    if (H, W) != (h, w):
        f = np.pad(f, ((0, H - h), (0, W - w), (0, 0)), mode="edge")
    small = f.reshape(H // k, k, W // k, k, c).mean(axis=(1, 3), dtype=np.float32)
    sm = np.empty_like(small)
    for i in range(c):
        sm[..., i] = ndimage.gaussian_filter(small[..., i], scale / k, mode="nearest")
    return sm, k


def coarse_graph(labels: np.ndarray, features: np.ndarray, sigma: float | None = None,
                 sensitivity: float = 1.0, scale: float | None = None,
                 sigma_position: float | None = None, sigma_channels: int | None = None) -> CoarseGraph:
    """The region adjacency graph of ``labels`` with colour-and-position affinities.

    Two neighbours differ by the smaller of two colour distances: between their mean
    colours, and between their *regional* colours (the features smoothed with a
    Gaussian of sigma ``scale``, default the superpixel spacing, read at the
    centroids). At the scale of a few nuclei tumour nests and stroma differ more than
    single superpixels do; the mean colours keep a sharp edge sharp where the
    smoothing blurs it over several superpixels (see the module docstring).

    Parameters
    ----------
    labels : (H, W) int32
        Superpixels 0..n-1.
    features : (H, W, 3) float32
        Colour features (:func:`colour_features`).
    sigma : float, optional
        Colour sigma; default: the median colour difference over the edges divided by
        ``sensitivity`` (at least 2, about one just-noticeable Lab difference).
    scale : float, optional
        Sigma (px) of the regional smoothing; 0 for plain superpixel means.
    sigma_position : float, optional
        Position sigma in px; default: twice the mean superpixel spacing.
    sigma_channels : int, optional
        The automatic sigma from the first this many channels only (the colour, where
        texture channels follow); default all.
    """
    h, w = labels.shape
    flat = labels.ravel()
    n = int(flat.max()) + 1
    count = np.bincount(flat, minlength=n).astype(np.float64)
    # sums of whole numbers, exact in float64 whatever the order
    sy = np.bincount(flat, np.repeat(np.arange(h, dtype=np.float64), w), minlength=n)
    sx = np.bincount(flat, np.tile(np.arange(w, dtype=np.float64), h), minlength=n)
    centroid = np.stack([sy, sx], 1) / count[:, None]
    del sy, sx
    spacing = np.sqrt(h * w / n)
    scale = spacing if scale is None else scale
    colour = np.empty((n, features.shape[-1]))
    for c in range(features.shape[-1]):  # one channel at a time: no (H * W, C) copy
        colour[:, c] = np.bincount(flat, features[..., c].ravel(), minlength=n)
    colour /= count[:, None]
    regional = None
    if scale > 0:
        sm, k = regional_colour(features, scale)
        cy = np.clip(np.rint((centroid[:, 0] - (k - 1) / 2) / k).astype(int), 0, sm.shape[0] - 1)
        cx = np.clip(np.rint((centroid[:, 1] - (k - 1) / 2) / k).astype(int), 0, sm.shape[1] - 1)
        regional = sm[cy, cx].astype(np.float64)
    keys = []
    for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        cut = a != b  # only the pixel pairs across a boundary become int64 keys
        a, b = a[cut].astype(np.int64), b[cut].astype(np.int64)
        keys.append(np.minimum(a, b) * n + np.maximum(a, b))
    key = np.unique(np.concatenate(keys))
    del keys
    edges = np.stack(np.divmod(key, n), axis=1)
    def dist2(channels):
        d = ((colour[edges[:, 0], channels] - colour[edges[:, 1], channels]) ** 2).sum(1)
        if regional is not None:
            d = np.minimum(d, ((regional[edges[:, 0], channels] - regional[edges[:, 1], channels]) ** 2).sum(1))
        return d

    d2 = dist2(slice(None))
    d2s = d2 if sigma_channels is None else dist2(slice(0, sigma_channels))
    auto = max(float(np.sqrt(np.median(d2s))) if d2s.size else 1.0, 2.0)
    if sigma_position is None:
        sigma_position = 2.0 * spacing
    x2 = ((centroid[edges[:, 0]] - centroid[edges[:, 1]]) ** 2).sum(1)
    g = CoarseGraph(None, colour.astype(np.float32), centroid.astype(np.float32), count, edges, d2, x2,
                    0.0, auto, float(sigma_position))
    return g.reweighted(sigma if sigma is not None else auto / max(sensitivity, 1e-6))


@dataclass
class PixelAffinity:
    """4-connected pixel affinities: ``right[y, x]`` joins (y, x) and (y, x + 1),
    ``down[y, x]`` joins (y, x) and (y + 1, x) (0 on the last column / row); ``degree``
    is each pixel's sum of weights; ``d_right``, ``d_down`` the squared colour
    differences they come from. All (H, W) float32."""

    right: np.ndarray
    down: np.ndarray
    degree: np.ndarray
    d_right: np.ndarray
    d_down: np.ndarray
    sigma: float
    sigma_auto: float

    def reweighted(self, sigma: float) -> "PixelAffinity":
        """The same grid with colour sigma ``sigma``."""
        k = np.float32(-1.0 / (2 * max(sigma, 1e-3) ** 2))
        right = np.exp(self.d_right * k) + np.float32(1e-6)
        down = np.exp(self.d_down * k) + np.float32(1e-6)
        right[:, -1] = 0
        down[-1, :] = 0
        degree = right + down
        degree[:, 1:] += right[:, :-1]
        degree[1:, :] += down[:-1, :]
        return replace(self, right=right, down=down, degree=degree, sigma=float(sigma))


def _square_steps(f: np.ndarray, axis: int) -> np.ndarray:
    """Squared colour difference of each pixel to the next along ``axis`` (1: right,
    0: down), summed over the channels one at a time (the same float32 sums as
    ``(diff ** 2).sum(-1)`` without the (H, W, C) temporaries)."""
    out = None
    for c in range(f.shape[-1]):
        x = f[..., c]
        d = x[:, 1:] - x[:, :-1] if axis == 1 else x[1:, :] - x[:-1, :]
        d *= d
        if out is None:
            out = d
        else:
            out += d
    return out


def pixel_affinity(features: np.ndarray, sigma: float | None = None, sensitivity: float = 1.0,
                   smooth: float = 1.0) -> PixelAffinity:
    """Colour affinities of the pixel grid (see the module docstring).

    Neighbours differ by the smaller of their raw colour difference and their
    difference after a Gaussian of sigma ``smooth`` px: smoothing keeps JPEG noise and
    single dark pixels from cutting the graph, the raw difference keeps a one-pixel
    edge one pixel wide (smoothing alone spreads it over three and strands the pixels
    in between).
    """
    f = features
    dr = np.zeros(f.shape[:2], np.float32)
    dd = np.zeros(f.shape[:2], np.float32)
    dr[:, :-1] = _square_steps(f, 1)
    dd[:-1, :] = _square_steps(f, 0)
    if smooth > 0:
        s = np.empty(f.shape, np.float32)
        for c in range(f.shape[-1]):
            s[..., c] = ndimage.gaussian_filter(f[..., c], smooth, mode="nearest")
        np.minimum(dr[:, :-1], _square_steps(s, 1), out=dr[:, :-1])
        np.minimum(dd[:-1, :], _square_steps(s, 0), out=dd[:-1, :])
        del s
    m = (dr[:, :-1].sum() + dd[:-1, :].sum()) / max(dr[:, :-1].size + dd[:-1, :].size, 1)
    auto = max(float(np.sqrt(m)), 1e-3)
    a = PixelAffinity(None, None, None, dr, dd, 0.0, auto)
    return a.reweighted(sigma if sigma is not None else auto / max(sensitivity, 1e-6))
