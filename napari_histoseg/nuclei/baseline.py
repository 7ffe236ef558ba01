"""Classical nucleus segmentation, the baseline the Mask R-CNN is measured against.

Colour deconvolution to haematoxylin (:func:`napari_histoseg.colour.stain.haematoxylin`), Gaussian
smoothing, Otsu's threshold, hole filling and removal of specks, a distance transform,
its local maxima as markers (:func:`skimage.feature.peak_local_max`) and a marker-
controlled watershed (:func:`skimage.segmentation.watershed`) that splits touching
nuclei. Lengths are given in µm and converted with the image's mpp (0.25 µm/px when
unknown, the 40x of MoNuSeg).

Example
-------
>>> labels, table = detect_nuclei_classical(rgb, mpp=0.25)   # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.morphology import remove_small_objects
from skimage.segmentation import watershed

from napari_histoseg.colour.stain import haematoxylin
from napari_histoseg.nuclei.features import nucleus_features
from napari_histoseg.nuclei.infer import check_image


def classical_labels(rgb: np.ndarray, mpp: float = 0.25, min_diameter_um: float = 3.0,
                     peak_distance_um: float = 2.0, smooth_um: float = 0.25) -> np.ndarray:
    """uint32 nucleus labels of an RGB uint8 image (see the module docstring)."""
    px = 1.0 / float(mpp)
    h = gaussian(haematoxylin(rgb), sigma=max(smooth_um * px, 0.5))
    try:
        t = threshold_otsu(h)
    except ValueError:      # a constant image
        return np.zeros(rgb.shape[:2], np.uint32)
    fg = ndi.binary_fill_holes(h > t)
    min_area = int(np.pi * (min_diameter_um * px / 2) ** 2)
    fg = remove_small_objects(fg, max_size=max(min_area - 1, 0))
    if not fg.any():
        return np.zeros(rgb.shape[:2], np.uint32)
    dist = ndi.distance_transform_edt(fg)
    dist = gaussian(dist, sigma=1.0)
    cc, _ = ndi.label(fg)
    peaks = peak_local_max(dist, min_distance=max(int(round(peak_distance_um * px)), 1),
                           labels=cc, exclude_border=False)
    markers = np.zeros(fg.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-dist, markers, mask=fg)
    labels = remove_small_objects(labels, max_size=max(min_area // 2 - 1, 0))
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.uint32)


def detect_nuclei_classical(image, mpp=None, features=True, **kwargs):
    """``(labels uint32, table)`` like :func:`~napari_histoseg.nuclei.detect_nuclei`, classically."""
    rgb = check_image(image)
    labels = classical_labels(rgb, mpp or 0.25, **kwargs)
    return labels, (nucleus_features(labels, rgb, mpp=mpp) if features else None)
