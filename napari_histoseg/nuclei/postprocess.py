"""Separating touching nuclei that one detection outlined as one.

In crowded tumour nests Mask R-CNN sometimes gives two or three touching nuclei one box and one
mask. :func:`split_touching` looks at every instance that is both large and not convex (its
solidity, area / convex-hull area, below ``solidity``: a single nucleus is close to convex,
two touching ones have a waist), and cuts it by a watershed of its distance transform from one
marker per distance peak that stands out by at least ``h`` px (an h-maximum, so a bumpy border
does not make markers). A cut is kept only if every piece is at least ``min_area`` px; otherwise
the instance stays whole. Nothing else changes.

The classical baseline (:mod:`napari_histoseg.nuclei.baseline`) uses the same idea on the whole
foreground; here it only refines the detector's own masks.

Example
-------
>>> import numpy as np
>>> yy, xx = np.mgrid[:40, :60]
>>> two = ((yy - 20) ** 2 + (xx - 18) ** 2 < 144) | ((yy - 20) ** 2 + (xx - 40) ** 2 < 144)
>>> int(split_touching(two.astype(np.int32), min_area=50).max())
2
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from skimage.morphology import h_maxima
from skimage.segmentation import watershed


def _solidity(mask: np.ndarray) -> float:
    from skimage.measure import regionprops

    props = regionprops(mask.astype(np.uint8))
    return float(props[0].solidity) if props else 1.0


def split_touching(labels: np.ndarray, *, solidity: float = 0.92, min_area: int = 80, h: float = 2.0,
                   large: float = 1.5) -> np.ndarray:
    """``labels`` with non-convex instances larger than ``large`` x the median area (of 5 or
    more instances; else any above ``2 x min_area``) cut at their waists (see the module text). Returns a new int32 label image; ids of untouched
    instances are kept, new pieces get ids above the largest."""
    labels = np.asarray(labels)
    out = labels.astype(np.int32, copy=True)
    objs = ndi.find_objects(out)
    areas = np.bincount(out.ravel())[1:]
    present = areas[areas > 0]
    if not len(present):
        return out
    typical = float(np.median(present)) if len(present) >= 5 else 0.0   # too few to know what is typical
    floor = max(2 * min_area, large * typical)
    next_id = int(out.max()) + 1
    for i, sl in enumerate(objs, start=1):
        if sl is None or areas[i - 1] < floor:
            continue
        sl = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in sl)
        mask = out[sl] == i
        if _solidity(mask) >= solidity:
            continue
        dist = ndi.distance_transform_edt(mask)
        peaks = ndi.label(h_maxima(dist, h) & mask)[0]
        if peaks.max() < 2:
            continue
        pieces = watershed(-dist, peaks, mask=mask)
        sizes = np.bincount(pieces.ravel())[1:]
        if (sizes[sizes > 0] < min_area).any():
            continue
        view = out[sl]
        for k in range(2, int(pieces.max()) + 1):
            view[pieces == k] = next_id
            next_id += 1
    return out
