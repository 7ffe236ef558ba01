"""What the affinities are computed on: per-pixel colour, its local contrast (texture),
and the channels the superpixel graph measures its distances in.

Colour space
------------
Affinities are computed in CIELAB by default. L*a*b* is close to perceptually uniform,
so one Euclidean ``sigma`` means the same colour step in pale stroma and in dark tumour
nests; optical density (OD) and its stain decomposition (HED) stretch the dark end (a
step of 10 grey levels is ten times larger in OD at intensity 25 than at 250), so JPEG
noise in dense nuclei dominates their distances, and HED drops the residual channel.
Measured on the shared real tiles: the area under the ROC curve of the colour distance
between neighbouring superpixels, "tumour on one side, not tumour on the other" against
"same class on both sides" (``python benchmarks/robot_user.py --colour-spaces``; the
figures are in BENCHMARKS.md, section Refinement): with the distance used here, Lab
0.742 / 0.726 (camelyon / bcss), RGB 0.714 / 0.733, OD 0.720 / 0.711, HED 0.690 / 0.648;
Lab is best or within 0.01 of best on both, HED (which drops the residual channel) last.
The *regional* colour (smoothed over about one superpixel, the scale of a few nuclei)
separates far better than the superpixel mean (Lab 0.559 / 0.570). ``"od"`` and
``"rgb"`` remain available through ``colour_space``. In the simulated annotator without
a prior (``robot_user.py --no-rw --limit 8 --no-prior-arm --param colour_space=...``),
NoC@90 camelyon / bcss: Lab 6.2 / 11.1, OD 7.0 / 10.6, RGB 9.0 / 11.4.

Texture
-------
Two tissues of one mean colour can differ in how much the colour varies over a few
pixels (dense lymphocytes against a nest of large pale cells or plain stroma):
:func:`texture_features` is that local contrast; the superpixel graph takes it as extra
channels (``texture_weight``, :func:`affinity_channels`), computed on a grid half as fine
(``TEXTURE_STEP``), where it costs a quarter.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["colour_features", "texture_features", "affinity_channels", "COLOUR_SPACES", "TEXTURE_STEP"]

COLOUR_SPACES = ("lab", "od", "rgb")
#: The superpixel graph's texture channels are computed on a grid this many times coarser
#: (:func:`texture_features`, ``step``).
TEXTURE_STEP = 2


# sRGB -> linear RGB for each uint8 value; D65 RGB -> XYZ (scikit-image's constants).
_LINEAR = np.where(np.arange(256) / 255.0 > 0.04045,
                   ((np.arange(256) / 255.0 + 0.055) / 1.055) ** 2.4,
                   np.arange(256) / 255.0 / 12.92).astype(np.float32)
_XYZ_FROM_RGB = np.array([[0.412453, 0.357580, 0.180423],
                          [0.212671, 0.715160, 0.072169],
                          [0.019334, 0.119193, 0.950227]], np.float32)
_WHITE = np.array([0.95047, 1.0, 1.08883], np.float32)


def _lab(image: np.ndarray) -> np.ndarray:
    """CIELAB (D65, 2 degrees) of uint8 RGB in float32: a lookup table and one cube
    root; matches ``skimage.color.rgb2lab`` to 1e-3 and is several times faster."""
    # one channel at a time on contiguous planes, the linear branch only where it applies
    # (the same float32 operations as on the whole (H, W, 3) array, 3x faster)
    m = _XYZ_FROM_RGB / _WHITE[:, None]
    lin = [_LINEAR[image[..., c]] for c in range(3)]
    eps = np.float32(0.008856)
    f = []
    for i in range(3):
        t = lin[0] * m[i, 0]
        t += lin[1] * m[i, 1]
        t += lin[2] * m[i, 2]
        fi = np.cbrt(t)
        low = t <= eps
        fi[low] = np.float32(7.787) * t[low] + np.float32(16.0 / 116.0)
        if i == 1:
            y, y_low = t, low
        f.append(fi)
    del lin
    out = np.empty(image.shape[:2] + (3,), np.float32)
    L = 116.0 * f[1] - 16.0
    L[y_low] = 903.3 * y[y_low]
    out[..., 0] = L
    del L, y
    np.subtract(f[0], f[1], out=f[0])
    f[0] *= 500.0
    out[..., 1] = f[0]
    np.subtract(f[1], f[2], out=f[1])
    f[1] *= 200.0
    out[..., 2] = f[1]
    return out


def colour_features(image: np.ndarray, space: str = "lab") -> np.ndarray:
    """Per-pixel colour in the space the affinities use.

    Parameters
    ----------
    image : (H, W, 3) uint8
    space : {"lab", "od", "rgb"}
        CIELAB (default), optical density ``-ln((I + 1) / 256)`` scaled by 20 so that
        its sigmas are of the same order as Lab's, or raw RGB.

    Returns
    -------
    (H, W, 3) float32
    """
    if space == "lab":
        return _lab(image)
    if space == "od":
        from napari_histoseg.colour.stain import optical_density

        return optical_density(image) * np.float32(20.0)
    if space == "rgb":
        return image.astype(np.float32)
    raise ValueError(f"colour_space must be one of {COLOUR_SPACES}, not {space!r}")


def texture_features(features: np.ndarray, scale: float = 3.0, out: np.ndarray | None = None,
                     step: int = 1) -> np.ndarray:
    """Local contrast per pixel: the standard deviation of each colour channel over a
    Gaussian window of sigma ``scale`` px, (H, W, C) float32 in the features' units
    (written into ``out`` if given).

    Two tissues of one mean colour differ here: dense small nuclei (lymphocytes) on a
    pale background vary strongly over a few pixels, a nest of large pale tumour cells
    or plain stroma much less.

    ``step`` 2 computes it on a grid of half the resolution, a quarter of the cost: the
    window's mean of ``f`` and of ``f^2`` from the 2 x 2 block means of both (so the
    contrast inside a block still counts) smoothed with sigma ``scale / 2``; each block's
    four pixels get its value. The window is several blocks wide, so the answer differs
    from the full-resolution one mainly by its 2 px steps.
    """
    h, w, C = features.shape
    out = np.empty(features.shape, np.float32) if out is None else out
    k = max(1, int(step))
    H, W = -(-h // k) * k, -(-w // k) * k
    for c in range(C):
        f = np.ascontiguousarray(features[..., c], dtype=np.float32)
        if k > 1:
            if (H, W) != (h, w):
                f = np.pad(f, ((0, H - h), (0, W - w)), mode="edge")
            f2 = _block_mean(f * f, k)
            f = _block_mean(f, k)
        else:
            f2 = f * f
        # truncated at 2 sigma (half scipy's kernel): the window's contrast, at half the cost
        m = ndimage.gaussian_filter(f, scale / k, mode="nearest", truncate=2.0)
        m2 = ndimage.gaussian_filter(f2, scale / k, mode="nearest", truncate=2.0)
        m *= m
        m2 -= m
        np.maximum(m2, 0.0, out=m2)
        np.sqrt(m2, out=m2)
        if k == 1:
            out[..., c] = m2
            continue
        hb, wb = h // k, w // k  # whole blocks as a broadcast view, the ragged edge after
        out[:hb * k, :wb * k, c].reshape(hb, k, wb, k)[...] = m2[:hb, None, :wb, None]
        if hb * k < h:
            out[hb * k:, :, c] = np.repeat(m2[hb:hb + 1], k, axis=1)[:, :w]
        if wb * k < w:
            out[:, wb * k:, c] = np.repeat(m2[:, wb:wb + 1], k, axis=0)[:h]
    return out


def _block_mean(a: np.ndarray, k: int) -> np.ndarray:
    """Means of the k x k blocks of a 2-D float32 array whose sides are multiples of k."""
    s = a[0::k, 0::k].copy()
    for dy in range(k):
        for dx in range(k):
            if dy or dx:
                s += a[dy::k, dx::k]
    s *= np.float32(1.0 / (k * k))
    return s


def affinity_channels(colour: np.ndarray, params: dict, features: np.ndarray | None = None):
    """What the superpixel graph's distances are computed on, and how many of its first
    channels set the automatic sigma: ``(channels, sigma_channels)`` for
    :func:`coarse_graph`.

    ``params["affinity"]`` (:mod:`~napari_histoseg.refinement.params`): ``"colour"``
    the colour plus ``texture_weight`` times its local contrast (not for ``method="lgc"``,
    which keeps the plain colour), the colour alone setting sigma; ``"features"`` the
    given per-pixel ``features`` alone, setting their own sigma; ``"mixed"`` the colour
    channels plus ``feature_weight`` times the features, the colour setting sigma (so
    the features only add distance where the network sees a difference).
    """
    from napari_histoseg.io.checks import InputError

    kind = params.get("affinity", "colour")
    if kind != "colour" and features is None:
        raise InputError(f"affinity={kind!r} needs the network's features (features=, e.g. "
                         "napari_histoseg.refinement.features.session_features(image, model))")
    if kind == "features":
        return features, None
    tex = params["method"] != "lgc" and params["texture_weight"] > 0
    mix = kind == "mixed" and params["feature_weight"] > 0
    c = colour.shape[-1]
    if not (tex or mix):
        return colour, c
    k = c * (1 + tex) + (features.shape[-1] if mix else 0)
    out = np.empty(colour.shape[:2] + (k,), np.float32)  # filled in place, no concatenation
    out[..., :c] = colour
    if tex:
        texture_features(colour, out=out[..., c:2 * c], step=TEXTURE_STEP)
        out[..., c:2 * c] *= np.float32(params["texture_weight"])
    if mix:
        np.multiply(features, np.float32(params["feature_weight"]), out=out[..., k - features.shape[-1]:])
    return out, c
