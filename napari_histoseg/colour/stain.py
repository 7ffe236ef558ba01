"""H&E colour: optical density, colour deconvolution, CLAHE (stain normalisation: stain_norm).

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
    "optical_density", "rgb_from_od", "tissue_mask", "deconvolve", "haematoxylin",
    "hed_to_uint8", "HED_RANGES", "clahe", "perturb_stains",
]

# Fixed concentration ranges (OD units, default matrix) mapped to 0..255 by hed_to_uint8.
# Chosen from the three samples in ../shared/samples (TIAToolbox target, StarDist histo,
# CMU SVS crop): 99th / 99.9th percentiles H 1.85-2.73 / 2.15-2.71 (CMU 6.4: pen and dirt),
# E 0.56-0.94 / 0.84-0.85 (CMU 2.7), DAB row 0.90-1.21 / 1.15-1.79. 1st percentiles are
# >= -0.27, so negatives are clipped to 0. For other stain matrices pass your own ranges.
HED_RANGES = ((0.0, 3.0), (0.0, 1.25), (0.0, 1.5))

def apply_3x3(x, m) -> np.ndarray:
    """``x @ m`` for (..., 3) x and a 3x3 m, written elementwise so that every pixel's
    result is bitwise the same whatever the array's shape (BLAS may round differently
    for different shapes, which would make tile-wise and whole-image results differ)."""
    m = np.asarray(m, np.float32)
    return x[..., 0:1] * m[0] + x[..., 1:2] * m[1] + x[..., 2:3] * m[2]


def rgb_float(rgb) -> np.ndarray:
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
    return np.log(256.0 / (rgb_float(rgb) + 1.0))


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
        Johnston's haematoxylin, eosin, DAB). A 2x3 matrix (e.g. Macenko's H and E) gets
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
    return apply_3x3(optical_density(rgb), inv)


def perturb_stains(rgb, rng: np.random.Generator, sigma: float = 0.05, bias: float = 0.01,
                   vector_sigma: float = 0.0, stain_matrix=None) -> np.ndarray:
    """A random but plausible re-staining of a uint8 H&E image (training augmentation).

    The image is deconvolved with ``stain_matrix`` (default: Ruifrok & Johnston's H, E, DAB),
    every concentration channel is scaled by U(1 - sigma, 1 + sigma) and shifted by
    U(-bias, bias) OD units (Tellez et al. 2018, "HED jitter": stain amount), and the image is
    put back together with the stain vectors themselves moved: each row gets Gaussian noise of
    ``vector_sigma`` and is renormalised (another hue of haematoxylin or eosin, as another lab's
    dyes or another scanner's colour response give). White stays white: OD 0 has no stain.

    Examples
    --------
    >>> rgb = np.full((4, 4, 3), (200, 120, 180), np.uint8)
    >>> perturb_stains(rgb, np.random.default_rng(0), 0.0, 0.0, 0.0).tolist() == rgb.tolist()
    True
    """
    m = _stain_matrix(stain_matrix)
    conc = apply_3x3(optical_density(rgb), np.linalg.inv(m))
    a = rng.uniform(1 - sigma, 1 + sigma, size=3).astype(np.float32)
    b = rng.uniform(-bias, bias, size=3).astype(np.float32)
    tissue = (conc[..., :2].sum(-1, keepdims=True) > 0.02).astype(np.float32)  # glass keeps no bias
    conc = conc * a + b * tissue
    m2 = m.copy()
    if vector_sigma > 0:
        m2 = m2 + rng.normal(0.0, vector_sigma, size=m2.shape)
        m2 = np.abs(m2) / np.linalg.norm(m2, axis=1, keepdims=True)
        if abs(np.linalg.det(m2)) < 1e-3:  # degenerate draw: keep the vectors
            m2 = m
    return rgb_from_od(apply_3x3(conc, m2))


def haematoxylin(rgb, stain_matrix=None) -> np.ndarray:
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
    a = rgb_float(rgb)
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

