"""Magnification: what a stated objective means, and an estimate from the size of nuclei.

**Stated.** A magnification is given the way BreakHis and a microscope's camera report it
(``"40x"``, ``"100X"``, ``"200×"``, ``"400"``): the objective times a 10x eyepiece. It turns
into microns per pixel with the classifier's training convention, ``mpp = 19.7 / mag``
(:data:`BREAKHIS_MPP`: 100X is 0.197 µm/px; see CLASSIFIER_MODEL_CARD.md for where that
figure comes from and how uncertain it is). A scanner's "40x" is an objective, about
0.25 µm/px: give a slide's mpp instead (a slide file carries it).

**Estimated.** :func:`estimate_magnification` measures nuclei, the one structure of H&E
whose size does not depend much on the diagnosis: the haematoxylin channel
(:func:`napari_histoseg.colour.stain.haematoxylin`) is smoothed, thresholded (Otsu) and
opened; for every dark blob the largest distance to its border is its half-width, and the
75th percentile over blobs is the image's nucleus radius in pixels. Small blobs vanish and
enlarged images blur, so a single measurement is biased by the scale; the image is
therefore resized until that radius is :data:`WORKING_RADIUS` px and measured again (three
rounds), which makes the measurement proportional to the scale. The radius in pixels is
compared with BreakHis 100X training images (:data:`REFERENCE_RADIUS` px at 100X), and the
spread of that ratio over those images (:data:`LOG_SD`, natural log; :data:`LOG_SD_FEW`
from fewer than :data:`FEW_NUCLEI` blobs) gives the interval.
It is a classical estimate, not the nuclei model (the classifier does not depend on it).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from napari_histoseg.io.checks import InputError, check_float

# BreakHis "100X" = 10x objective x 3.3x relay lens onto a 6.5 um camera pixel
# (Spanhol et al. 2016): 6.5 / 33 = 0.197 um per pixel. See CLASSIFIER_MODEL_CARD.md.
BREAKHIS_MPP = {40: 0.49, 100: 0.197, 200: 0.098, 400: 0.049}
MPP_AT_100X = 0.197

#: Nucleus radius (px, 75th percentile over blobs) of BreakHis 100X training images, median.
REFERENCE_RADIUS = 4.51
#: Spread (sd of the natural log) of the estimate over single BreakHis images.
LOG_SD = 0.28
#: Radius the image is resized to before the final measurement.
WORKING_RADIUS = 4.0
#: Fewer blobs than this: no estimate.
MIN_NUCLEI = 6
#: Fewer blobs than this (a high-power field often has only a few nuclei): the wider spread below.
FEW_NUCLEI = 15
#: Spread of the estimate from FEW_NUCLEI or fewer blobs (simulated 400X BreakHis test fields).
LOG_SD_FEW = 0.54


def mpp_of(magnification: float) -> float:
    """Microns per pixel of a field at ``magnification`` (BreakHis convention)."""
    return MPP_AT_100X * 100.0 / float(magnification)


def magnification_of(mpp: float) -> float:
    """The magnification (BreakHis convention) whose pixels are ``mpp`` µm."""
    return MPP_AT_100X * 100.0 / float(mpp)


def parse_magnification(value, name: str = "magnification") -> float:
    """``"400x"``, ``"400X"``, ``"400×"``, ``"400"`` or 400 -> 400.0 (4-1000; else :class:`InputError`).

    >>> parse_magnification("400x")
    400.0
    """
    text = value
    if isinstance(value, str):
        text = re.sub(r"\s*[xX×]\s*$", "", value.strip())
    return check_float(text, name, lo=4, hi=1000)


def magnification_arg(text: str) -> float:
    """``argparse`` ``type=`` for ``--magnification``."""
    import argparse

    try:
        return parse_magnification(text, "the value")
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e).replace("the value must be", "must be")) from None


@dataclass
class MagnificationEstimate:
    """A magnification (BreakHis convention) estimated from nuclei, with its 95 % interval."""

    magnification: float
    low: float
    high: float
    n_nuclei: int
    log_sd: float = LOG_SD

    @property
    def mpp(self) -> float:
        return mpp_of(self.magnification)

    def text(self) -> str:
        return (f"about {self.magnification:.0f}x by nucleus size ({self.mpp:.3g} µm/px; 95 % range "
                f"{self.low:.0f}-{self.high:.0f}x, {self.n_nuclei} nuclei)")

    def disagrees(self, magnification: float) -> bool:
        """True when ``magnification`` lies outside the 95 % range and is off by more than 1.5x."""
        r = abs(math.log(float(magnification) / self.magnification))
        return r > max(math.log(1.5), 1.96 * self.log_sd)

    def to_json(self) -> dict:
        return {"magnification": self.magnification, "low": self.low, "high": self.high,
                "mpp": self.mpp, "n_nuclei": self.n_nuclei}


def nucleus_radius(rgb) -> tuple[float, int]:
    """``(radius px, blobs)``: 75th percentile of the dark blobs' half-widths (nan if < 5 blobs)."""
    import numpy as np
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    from napari_histoseg.colour.stain import haematoxylin

    h = ndi.gaussian_filter(haematoxylin(rgb).astype(np.float32), 1.0)
    if float(h.max() - h.min()) < 1e-3:
        return math.nan, 0
    mask = ndi.binary_opening(h > threshold_otsu(h))
    lab, n = ndi.label(mask)
    if n == 0:
        return math.nan, 0
    dist = ndi.distance_transform_edt(mask)
    half = np.asarray(ndi.maximum(dist, lab, index=np.arange(1, n + 1)))
    half = half[half >= 1.5]
    return (float(np.percentile(half, 75)) if half.size >= 5 else math.nan), int(half.size)


def estimate_magnification(rgb, rounds: int = 3):
    """:class:`MagnificationEstimate` of a uint8 RGB H&E field, or None with too few nuclei."""
    import numpy as np

    from napari_histoseg.core.resize import resize

    step = max(1, int(math.sqrt(rgb.shape[0] * rgb.shape[1] / 4e6)))  # at most ~4 Mpx measured
    rgb = np.ascontiguousarray(rgb[::step, ::step])
    factor, n = 1.0, 0
    for _ in range(rounds):
        r, n = nucleus_radius(rgb if abs(factor - 1) < 1e-3 else resize(rgb, factor))
        if not math.isfinite(r) or n < MIN_NUCLEI:
            return None
        factor = min(factor * WORKING_RADIUS / r, 4.0)
    radius = WORKING_RADIUS / factor * step     # in the pixels of the image given
    mag = 100.0 * radius / REFERENCE_RADIUS
    sd = LOG_SD if n >= FEW_NUCLEI else LOG_SD_FEW
    k = math.exp(1.96 * sd)
    return MagnificationEstimate(round(mag, 1), round(mag / k, 1), round(mag * k, 1), n, sd)
