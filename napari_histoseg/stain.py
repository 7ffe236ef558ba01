"""H&E colour: optical density, colour deconvolution, stain normalisation, CLAHE.

Optical density (OD) here is ``OD = -ln((I + 1) / 256)`` per channel for uint8 ``I``:
white (255) is exactly 0, black (0) is ln 256 = 5.55. The natural log is the variant of
Macenko's reference MATLAB code, TIAToolbox and StainTools, so ``beta = 0.15`` means what
it means there (with log10 the same beta would drop 39 % instead of 12 % of the reference
image's pixels). Decadic absorbance is ``OD / ln 10``.

Stain matrices hold one stain's OD colour per row (scikit-image's ``rgb_from_hed``
convention): ``OD = C @ M`` and ``C = OD @ inv(M)``.
"""

from __future__ import annotations

import numpy as np
from skimage.color import lab2rgb, rgb2lab, rgb_from_hed
from skimage.exposure import equalize_adapthist

__all__ = [
    "optical_density", "rgb_from_od", "tissue_mask", "deconvolve", "hematoxylin",
    "hed_to_uint8", "HED_RANGES", "MacenkoNormalizer", "ReinhardNormalizer",
    "normalizer_from_dict", "clahe",
]

# Fixed concentration ranges (OD units, default matrix) mapped to 0..255 by hed_to_uint8.
# Chosen from the three samples in ../shared/samples (TIAToolbox target, StarDist histo,
# CMU SVS crop): 99th / 99.9th percentiles H 1.85-2.73 / 2.15-2.71 (CMU 6.4: pen and dirt),
# E 0.56-0.94 / 0.84-0.85 (CMU 2.7), DAB row 0.90-1.21 / 1.15-1.79. 1st percentiles are
# >= -0.27, so negatives are clipped to 0. For other stain matrices pass your own ranges.
HED_RANGES = ((0.0, 3.0), (0.0, 1.25), (0.0, 1.5))

# Reference stain parameters of napari_histoseg/sample_data/tiatoolbox_target_image.png
# (1000 x 1000 H&E, TIAToolbox's normalisation target), computed once with
# MacenkoNormalizer().fit_target(img).to_dict() and ReinhardNormalizer().fit_target(img)
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


def _apply3(x, m) -> np.ndarray:
    """``x @ m`` for (..., 3) x and a 3x3 m, written elementwise so that every pixel's
    result is bitwise the same whatever the array's shape (BLAS may round differently
    for different shapes, which would make tile-wise and whole-image results differ)."""
    m = np.asarray(m, np.float32)
    return x[..., 0:1] * m[0] + x[..., 1:2] * m[1] + x[..., 2:3] * m[2]


def _rgb(rgb) -> np.ndarray:
    """(..., 3 or 4) array in 0..255 -> float32 (..., 3); alpha is dropped."""
    a = np.asarray(rgb)
    if a.ndim < 1 or a.shape[-1] not in (3, 4):
        raise ValueError(f"expected an RGB(A) image with 3 or 4 channels last, got {a.shape}")
    return a[..., :3].astype(np.float32)


def optical_density(rgb) -> np.ndarray:
    """Beer-Lambert optical density, ``-ln((I + 1) / 256)``, as float32.

    Parameters
    ----------
    rgb : (..., 3) array
        uint8 RGB (other dtypes are read as values on the 0..255 scale; alpha is dropped).

    Returns
    -------
    od : (..., 3) float32
        0 for white, 5.55 for black; never negative for inputs in 0..255.

    Examples
    --------
    >>> optical_density(np.array([[255, 127, 0]], np.uint8)).round(3)
    array([[0.   , 0.693, 5.545]], dtype=float32)
    """
    return np.log(256.0 / (_rgb(rgb) + 1.0))


def rgb_from_od(od) -> np.ndarray:
    """Inverse of :func:`optical_density`: ``256 exp(-OD) - 1``, rounded, clipped, uint8."""
    out = 256.0 * np.exp(-np.asarray(od, np.float32)) - 1.0
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def tissue_mask(rgb, beta: float = 0.15) -> np.ndarray:
    """Pixels whose OD reaches ``beta`` in every channel (Macenko's transparency rule)."""
    return np.all(optical_density(rgb) >= beta, axis=-1)


def _stain_matrix(m) -> np.ndarray:
    """2x3 (H, E rows) -> unit rows + residual row (their cross product); 3x3 as given."""
    if m is None:
        return rgb_from_hed.astype(np.float64)
    m = np.asarray(m, np.float64)
    if m.shape == (2, 3):
        m = m / np.linalg.norm(m, axis=1, keepdims=True)
        r = np.cross(m[0], m[1])
        m = np.vstack([m, r / max(np.linalg.norm(r), 1e-12)])
    if m.shape != (3, 3) or not np.all(np.isfinite(m)) or abs(np.linalg.det(m)) < 1e-6:
        raise ValueError(f"stain_matrix must be a finite, invertible 2x3 or 3x3 matrix, got {m}")
    return m


def deconvolve(rgb, stain_matrix=None) -> np.ndarray:
    """Colour deconvolution (Ruifrok & Johnston) into stain concentrations.

    ``skimage.color.separate_stains`` computes the same product, but it clips negative
    concentrations to 0 (so normalisation could not round-trip), uses ``I / 255`` with a
    1e-6 floor (black becomes OD 13.8) and divides by ln(1e-6); here concentrations are
    plain OD units and unclipped. For inputs away from black, ``deconvolve(rgb)`` ~=
    ``-ln(1e-6) * skimage.color.rgb2hed(rgb)`` where both are positive.

    Parameters
    ----------
    rgb : (..., 3) uint8 array
    stain_matrix : (2, 3) or (3, 3) array, optional
        Stain OD vectors as rows. Default: scikit-image's ``rgb_from_hed`` (Ruifrok &
        Johnston's hematoxylin, eosin, DAB). A 2x3 matrix (e.g. Macenko's H and E) gets
        unit rows and a residual third row, their normalised cross product.

    Returns
    -------
    conc : (..., 3) float32
        Hematoxylin, eosin, residual (DAB for the default matrix), in OD units.

    Examples
    --------
    >>> from skimage import data
    >>> hed = deconvolve(data.immunohistochemistry())
    >>> hed.shape, hed.dtype
    ((512, 512, 3), dtype('float32'))
    """
    inv = np.linalg.inv(_stain_matrix(stain_matrix))
    return _apply3(optical_density(rgb), inv)


def hematoxylin(rgb, stain_matrix=None) -> np.ndarray:
    """Hematoxylin concentration (OD units), (H, W) float32; see :func:`deconvolve`."""
    return deconvolve(rgb, stain_matrix)[..., 0]


def hed_to_uint8(conc, ranges=HED_RANGES) -> np.ndarray:
    """Map concentrations to uint8 channels with fixed ranges (:data:`HED_RANGES`).

    Fixed, not per-image min/max, so every tile of every slide is scaled alike and
    tiles do not show seams. Values outside a range are clipped; white background
    (all concentrations 0) becomes 0 in every channel.

    Parameters
    ----------
    conc : (..., 3) float array
        Output of :func:`deconvolve`.
    ranges : three (low, high) pairs
        Concentration mapped to 0 and to 255 for each channel.

    Returns
    -------
    (..., 3) uint8
    """
    conc = np.asarray(conc, np.float32)
    lo = np.array([r[0] for r in ranges], np.float32)
    hi = np.array([r[1] for r in ranges], np.float32)
    return np.clip(np.rint((conc - lo) * (255.0 / (hi - lo))), 0, 255).astype(np.uint8)


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
    if he[0, 0] < he[1, 0]:  # hematoxylin absorbs more red than eosin
        he = he[::-1].copy()
    max_c = np.percentile(tissue @ np.linalg.pinv(he), percentile, axis=0)
    if not np.all(np.isfinite(he)) or abs(he[0] @ he[1]) > 0.999 or np.any(max_c <= 1e-3):
        raise ValueError(f"Macenko estimate is degenerate (stain vectors {he.tolist()}, max "
                         f"concentrations {max_c.tolist()}); the image does not look like H&E")
    return he, max_c


class MacenkoNormalizer:
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
    >>> norm = MacenkoNormalizer().fit(data.immunohistochemistry())  # default target
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

    def fit_target(self, rgb) -> "MacenkoNormalizer":
        """Estimate the target's stain vectors and maximum concentrations."""
        self.stain_matrix, self.max_concentrations = self._estimate(rgb)
        return self

    @property
    def is_fitted(self) -> bool:
        """True once :meth:`fit` has estimated the source's parameters."""
        return self.source_stain_matrix is not None

    def fit(self, rgb) -> "MacenkoNormalizer":
        """Estimate the source's parameters once (e.g. from a slide thumbnail)."""
        self.source_stain_matrix, self.source_max_concentrations = self._estimate(rgb)
        return self

    def transform(self, rgb) -> np.ndarray:
        """Normalise an RGB tile (uint8 (..., 3) in, uint8 (..., 3) out)."""
        if self.source_stain_matrix is None:
            raise RuntimeError("MacenkoNormalizer.transform needs fit(source_rgb) first")
        unmix = np.linalg.pinv(self.source_stain_matrix)  # (3, 2)
        scale = self.max_concentrations / self.source_max_concentrations
        mix = (unmix * scale) @ self.stain_matrix  # OD -> normalised OD, one 3x3 matrix
        return rgb_from_od(_apply3(optical_density(rgb), mix))

    def to_dict(self) -> dict:
        """Target parameters (JSON-ready)."""
        return {"method": self.method, "stain_matrix": self.stain_matrix.tolist(),
                "max_concentrations": self.max_concentrations.tolist(),
                "beta": self.beta, "alpha": self.alpha, "percentile": self.percentile}

    @classmethod
    def from_dict(cls, d: dict) -> "MacenkoNormalizer":
        _check_method(d, cls.method)
        norm = cls(**{k: d[k] for k in ("beta", "alpha", "percentile") if k in d})
        norm._set_target(d)
        return norm


class ReinhardNormalizer:
    """Reinhard colour transfer: match per-channel CIELAB mean and std to a target.

    Statistics are taken over tissue pixels only (:func:`tissue_mask`), so the amount
    of white background in a thumbnail does not shift them; :meth:`transform` is
    pointwise (tiles give exactly the whole image's result).

    Examples
    --------
    >>> from skimage import data
    >>> out = ReinhardNormalizer().fit(data.immunohistochemistry()).transform(
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
        a = _rgb(rgb)
        mask = tissue_mask(a, self.beta)
        if mask.sum() < self.min_tissue_pixels:
            raise ValueError(f"Reinhard needs at least {self.min_tissue_pixels} tissue "
                             f"pixels; this image has {int(mask.sum())}")
        lab = rgb2lab(a[mask][None] / 255.0)[0]
        return lab.mean(0), np.maximum(lab.std(0), 1e-3)

    def fit_target(self, rgb) -> "ReinhardNormalizer":
        """Estimate the target's LAB mean and std (tissue pixels)."""
        self.mean, self.std = self._estimate(rgb)
        return self

    @property
    def is_fitted(self) -> bool:
        """True once :meth:`fit` has estimated the source's parameters."""
        return self.source_mean is not None

    def fit(self, rgb) -> "ReinhardNormalizer":
        """Estimate the source's LAB mean and std once (e.g. from a thumbnail)."""
        self.source_mean, self.source_std = self._estimate(rgb)
        return self

    def transform(self, rgb) -> np.ndarray:
        """Normalise an RGB tile (uint8 (..., 3) in, uint8 (..., 3) out)."""
        if self.source_mean is None:
            raise RuntimeError("ReinhardNormalizer.transform needs fit(source_rgb) first")
        lab = rgb2lab(_rgb(rgb) / 255.0)
        lab = (lab - self.source_mean) * (self.std / self.source_std) + self.mean
        lab[..., 0] = np.clip(lab[..., 0], 0, 100)
        return np.clip(np.rint(lab2rgb(lab) * 255.0), 0, 255).astype(np.uint8)

    def to_dict(self) -> dict:
        """Target parameters (JSON-ready)."""
        return {"method": self.method, "mean": self.mean.tolist(), "std": self.std.tolist(),
                "beta": self.beta}

    @classmethod
    def from_dict(cls, d: dict) -> "ReinhardNormalizer":
        _check_method(d, cls.method)
        norm = cls(**({"beta": d["beta"]} if "beta" in d else {}))
        norm._set_target(d)
        return norm


def _check_method(d, method):
    if not isinstance(d, dict) or d.get("method") != method:
        got = d.get("method") if isinstance(d, dict) else type(d).__name__
        raise ValueError(f"expected stain parameters with method {method!r}, got {got!r}")


def normalizer_from_dict(d: dict):
    """Rebuild a :class:`MacenkoNormalizer` or :class:`ReinhardNormalizer` from ``to_dict``."""
    classes = {c.method: c for c in (MacenkoNormalizer, ReinhardNormalizer)}
    method = d.get("method") if isinstance(d, dict) else None
    if method not in classes:
        raise ValueError(f"unknown stain normalisation method {method!r}; "
                         f"known: {sorted(classes)}")
    return classes[method].from_dict(d)


def _clahe_channel(light, clip_limit, kernel_size):
    """equalize_adapthist of a [0, 1] image, with its input range pinned to 0..1."""
    h, w = light.shape
    if kernel_size is None:
        kernel_size = (max(h // 8, 1), max(w // 8, 1))
    k = int(np.max(kernel_size))
    # equalize_adapthist first stretches its input's own min..max to the full range, so
    # a pale background tile would be blown up to black and white, and every tile would
    # be scaled differently. A 0..1 ramp, placed beyond a 3-kernel reflected margin so
    # its contextual regions never touch the image's, pins that range to 0..1.
    ext = np.pad(light, ((0, 0), (0, 3 * k)), mode="reflect")
    ramp = np.broadcast_to(np.linspace(0.0, 1.0, 2 * k), (h, 2 * k))
    ext = np.concatenate([ext, ramp], axis=1)
    return equalize_adapthist(ext, kernel_size=kernel_size, clip_limit=clip_limit)[:, :w]


def clahe(rgb, clip_limit: float = 0.01, kernel_size=None, space: str = "hsv") -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of lightness only.

    Equalising one lightness channel (``skimage.exposure.equalize_adapthist``) instead of
    R, G and B separately leaves hues as they were. With ``space="hsv"`` the value
    V = max(R, G, B) is equalised and each pixel's RGB is scaled by V'/V, which keeps HSV
    hue and saturation exactly (up to rounding) and never leaves the gamut. With
    ``space="lab"`` CIELAB L* is equalised with a* and b* kept: perceptually closer, but
    pixels pushed out of the sRGB gamut are clipped and shift hue.

    CLAHE is local: on a tile it can differ from CLAHE on the whole image near the tile's
    borders. ``equalize_adapthist`` is used as is, except that its input range is pinned
    to 0..1 (see the code), so a background tile stays pale; its final stretch of the
    output to 0..1 remains (on the reference image it moves values by <= 6 of 255).

    Parameters
    ----------
    rgb : (H, W, 3) uint8 array
    clip_limit : float
        Contrast limit in [0, 1]; higher gives more contrast.
    kernel_size : int or tuple, optional
        Context region size; default 1/8 of the image's height and width.
    space : {"hsv", "lab"}
        Which lightness channel is equalised.

    Returns
    -------
    (H, W, 3) uint8

    Examples
    --------
    >>> from skimage import data
    >>> clahe(data.immunohistochemistry()).dtype
    dtype('uint8')
    """
    a = _rgb(rgb)
    if space == "hsv":
        v = a.max(axis=-1) / 255.0
        v_eq = _clahe_channel(v, clip_limit, kernel_size)
        out = a * (v_eq / np.maximum(v, 1e-6))[..., None]
        out[v <= 0] = 255.0 * v_eq[v <= 0, None]  # black: grey at the new value
    elif space == "lab":
        lab = rgb2lab(a / 255.0)
        lab[..., 0] = 100.0 * _clahe_channel(np.clip(lab[..., 0] / 100.0, 0, 1),
                                             clip_limit, kernel_size)
        out = lab2rgb(lab) * 255.0
    else:
        raise ValueError(f"space must be 'hsv' or 'lab', got {space!r}")
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)
