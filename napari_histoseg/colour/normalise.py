"""Stain normalisation of H&E to a reference: Macenko and Reinhard.

Both are fitted once on the target (built-in: the TIAToolbox target image) and once on
the source (a thumbnail is enough), then applied pointwise, so normalising tile by tile
gives exactly the whole-image result. Optical density and matrices: see
:mod:`napari_histoseg.colour.stain`.
"""

from __future__ import annotations

import numpy as np
from skimage.color import lab2rgb, rgb2lab, rgb_from_hed

from napari_histoseg.colour.stain import apply_3x3, optical_density, rgb_float, rgb_from_od, tissue_mask

__all__ = ["MacenkoNormaliser", "ReinhardNormaliser", "normaliser_from_dict"]

# Reference stain parameters of napari_histoseg/sample_data/tiatoolbox_target_image.png
# (1000 x 1000 H&E, TIAToolbox's normalisation target), computed once with
# MacenkoNormaliser().fit_target(img).to_dict() and ReinhardNormaliser().fit_target(img)
# .to_dict() on the full image at the defaults below (beta 0.15, alpha 1, 99th pct).
_TARGET_MACENKO = {
    "method": "macenko",
    "stain_matrix": [[0.52994302, 0.75060417, 0.39465652],
                     [0.17858673, 0.83203893, 0.52518377]],
    "max_concentrations": [2.92022006, 1.17961023],
}
_TARGET_REINHARD = {  # CIELAB L*, a*, b* over tissue pixels
    "method": "reinhard",
    "mean": [47.78773880, 32.31584549, -14.57624054],
    "std": [13.24322224, 5.32355118, 6.01384068],
}



def _macenko_estimate(rgb, beta, alpha, percentile, min_pixels):
    """Macenko et al. 2009: stain vectors from OD angles; 99th-pct max concentrations."""
    od = optical_density(rgb).reshape(-1, 3).astype(np.float64)
    tissue = od[np.all(od >= beta, axis=1)]
    if len(tissue) < min_pixels:
        raise ValueError(
            f"Macenko needs at least {min_pixels} tissue pixels (OD >= {beta} in every "
            f"channel); this image has {len(tissue)}. Fit on a region or thumbnail with tissue.")
    _, vecs = np.linalg.eigh(np.cov(tissue, rowvar=False))
    plane = vecs[:, 1:3] * np.where(vecs[:, 1:3].sum(0) < 0, -1.0, 1.0)  # 2 largest
    proj = tissue @ plane
    phi = np.arctan2(proj[:, 1], proj[:, 0])
    lo, hi = np.percentile(phi, [alpha, 100 - alpha])
    he = np.array([plane @ [np.cos(lo), np.sin(lo)], plane @ [np.cos(hi), np.sin(hi)]])
    he *= np.where(he.sum(1, keepdims=True) < 0, -1.0, 1.0)
    he /= np.linalg.norm(he, axis=1, keepdims=True)
    # which vector is haematoxylin: the order that lies closer to Ruifrok & Johnston's H and E
    # (a plain "haematoxylin absorbs more red" test swaps them on purple-heavy images, e.g. BCSS)
    ref = rgb_from_hed[:2] / np.linalg.norm(rgb_from_hed[:2], axis=1, keepdims=True)
    if he[0] @ ref[1] + he[1] @ ref[0] > he[0] @ ref[0] + he[1] @ ref[1]:
        he = he[::-1].copy()
    max_c = np.percentile(tissue @ np.linalg.pinv(he), percentile, axis=0)
    if not np.all(np.isfinite(he)) or abs(he[0] @ he[1]) > 0.999 or np.any(max_c <= 1e-3):
        raise ValueError(f"Macenko estimate is degenerate (stain vectors {he.tolist()}, max "
                         f"concentrations {max_c.tolist()}); the image does not look like H&E")
    return he, max_c


class MacenkoNormaliser:
    """Macenko stain normalisation: map a source's stains onto a target's.

    Each pixel's OD is unmixed with the source's two stain vectors, concentrations are
    scaled by target/source maxima (99th percentile over tissue pixels) and remixed with
    the target's vectors; the residual is dropped, as in the paper. :meth:`transform` is pointwise,
    so tiles give exactly the whole image's result. White stays white (OD 0 maps to 0).

    Parameters
    ----------
    beta : float
        OD below which a channel counts as transparent (pixel excluded from fitting).
    alpha : float
        Angle percentile for the robust extreme stain directions (alpha, 100 - alpha).
    percentile : float
        Percentile of each stain's concentration taken as its maximum.
    min_tissue_pixels : int
        Fewer tissue pixels than this in a fitted image raises ``ValueError``.

    Examples
    --------
    >>> from skimage import data
    >>> norm = MacenkoNormaliser().fit(data.immunohistochemistry())  # default target
    >>> out = norm.transform(data.immunohistochemistry()[:64, :64])
    """

    method = "macenko"

    def __init__(self, beta=0.15, alpha=1.0, percentile=99.0, min_tissue_pixels=100):
        self.beta, self.alpha, self.percentile = float(beta), float(alpha), float(percentile)
        self.min_tissue_pixels = int(min_tissue_pixels)
        self._set_target(_TARGET_MACENKO)
        self.source_stain_matrix = self.source_max_concentrations = None

    def _set_target(self, d):
        self.stain_matrix = np.asarray(d["stain_matrix"], np.float64).reshape(2, 3)
        self.max_concentrations = np.asarray(d["max_concentrations"], np.float64).reshape(2)

    def _estimate(self, rgb):
        return _macenko_estimate(rgb, self.beta, self.alpha, self.percentile,
                                 self.min_tissue_pixels)

    def fit_target(self, rgb) -> "MacenkoNormaliser":
        """Estimate the target's stain vectors and maximum concentrations."""
        self.stain_matrix, self.max_concentrations = self._estimate(rgb)
        return self

    @property
    def is_fitted(self) -> bool:
        """True once :meth:`fit` has estimated the source's parameters."""
        return self.source_stain_matrix is not None

    def fit(self, rgb) -> "MacenkoNormaliser":
        """Estimate the source's parameters once (e.g. from a slide thumbnail)."""
        self.source_stain_matrix, self.source_max_concentrations = self._estimate(rgb)
        return self

    def transform(self, rgb) -> np.ndarray:
        """Normalise an RGB tile (uint8 (..., 3) in, uint8 (..., 3) out)."""
        if self.source_stain_matrix is None:
            raise RuntimeError("MacenkoNormaliser.transform needs fit(source_rgb) first")
        unmix = np.linalg.pinv(self.source_stain_matrix)  # (3, 2)
        scale = self.max_concentrations / self.source_max_concentrations
        mix = (unmix * scale) @ self.stain_matrix  # OD -> normalised OD, one 3x3 matrix
        return rgb_from_od(apply_3x3(optical_density(rgb), mix))

    def to_dict(self) -> dict:
        """Target parameters (JSON-ready)."""
        return {"method": self.method, "stain_matrix": self.stain_matrix.tolist(),
                "max_concentrations": self.max_concentrations.tolist(),
                "beta": self.beta, "alpha": self.alpha, "percentile": self.percentile}

    @classmethod
    def from_dict(cls, d: dict) -> "MacenkoNormaliser":
        _check_method(d, cls.method)
        norm = cls(**{k: d[k] for k in ("beta", "alpha", "percentile") if k in d})
        norm._set_target(d)
        return norm


class ReinhardNormaliser:
    """Reinhard colour transfer: match per-channel CIELAB mean and std to a target.

    Statistics are taken over tissue pixels only (:func:`tissue_mask`), so the amount
    of white background in a thumbnail does not shift them; :meth:`transform` is
    pointwise (tiles give exactly the whole image's result).

    Examples
    --------
    >>> from skimage import data
    >>> out = ReinhardNormaliser().fit(data.immunohistochemistry()).transform(
    ...     data.immunohistochemistry()[:64, :64])
    """

    method = "reinhard"

    def __init__(self, beta=0.15, min_tissue_pixels=100):
        self.beta, self.min_tissue_pixels = float(beta), int(min_tissue_pixels)
        self._set_target(_TARGET_REINHARD)
        self.source_mean = self.source_std = None

    def _set_target(self, d):
        self.mean = np.asarray(d["mean"], np.float64).reshape(3)
        self.std = np.asarray(d["std"], np.float64).reshape(3)

    def _estimate(self, rgb):
        a = rgb_float(rgb)
        mask = tissue_mask(a, self.beta)
        if mask.sum() < self.min_tissue_pixels:
            raise ValueError(f"Reinhard needs at least {self.min_tissue_pixels} tissue "
                             f"pixels; this image has {int(mask.sum())}")
        lab = rgb2lab(a[mask][None] / 255.0)[0]
        return lab.mean(0), np.maximum(lab.std(0), 1e-3)

    def fit_target(self, rgb) -> "ReinhardNormaliser":
        """Estimate the target's LAB mean and std (tissue pixels)."""
        self.mean, self.std = self._estimate(rgb)
        return self

    @property
    def is_fitted(self) -> bool:
        """True once :meth:`fit` has estimated the source's parameters."""
        return self.source_mean is not None

    def fit(self, rgb) -> "ReinhardNormaliser":
        """Estimate the source's LAB mean and std once (e.g. from a thumbnail)."""
        self.source_mean, self.source_std = self._estimate(rgb)
        return self

    def transform(self, rgb) -> np.ndarray:
        """Normalise an RGB tile (uint8 (..., 3) in, uint8 (..., 3) out)."""
        if self.source_mean is None:
            raise RuntimeError("ReinhardNormaliser.transform needs fit(source_rgb) first")
        lab = rgb2lab(rgb_float(rgb) / 255.0)
        lab = (lab - self.source_mean) * (self.std / self.source_std) + self.mean
        lab[..., 0] = np.clip(lab[..., 0], 0, 100)
        return np.clip(np.rint(lab2rgb(lab) * 255.0), 0, 255).astype(np.uint8)

    def to_dict(self) -> dict:
        """Target parameters (JSON-ready)."""
        return {"method": self.method, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "beta": self.beta}

    @classmethod
    def from_dict(cls, d: dict) -> "ReinhardNormaliser":
        _check_method(d, cls.method)
        norm = cls(**({"beta": d["beta"]} if "beta" in d else {}))
        norm._set_target(d)
        return norm


def _check_method(d, method):
    if not isinstance(d, dict) or d.get("method") != method:
        got = d.get("method") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"expected stain parameters with method {method!r}, got {got!r}")


def normaliser_from_dict(d: dict):
    """Rebuild a :class:`MacenkoNormaliser` or :class:`ReinhardNormaliser` from ``to_dict``."""
    classes = {c.method: c for c in (MacenkoNormaliser, ReinhardNormaliser)}
    method = d.get("method") if isinstance(d, dict) else None
    if method not in classes:
        raise ValueError(f"unknown stain normalisation method {method!r}; "
                         f"known: {sorted(classes)}")
    return classes[method].from_dict(d)
