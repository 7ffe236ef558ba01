"""What a "tumour region" is, for every output that counts or exports regions.

One convention serves :func:`napari_histoseg.tumour.quantify.quantify` (Measure, ``histoseg
quantify``) and :func:`napari_histoseg.core.geojson.mask_to_geojson` (GeoJSON for QuPath), so
the number of regions in the table is the number of annotations QuPath shows:

* **4-connectivity** (:data:`CONNECTIVITY` = 1): pixels that touch only at a corner are
  separate regions. A GeoJSON polygon is traced along pixel edges; two pixels that meet at
  a corner would make a ring that touches itself at a point, which is not a valid simple
  polygon (QuPath/JTS keeps them as two pieces). Holes are the 8-connected background
  inside a region, as :func:`skimage.measure.find_contours` traces them.
* **A minimum region size**: refined masks break into 1-px specks that are not tumour
  regions a pathologist would count. Regions smaller than :data:`DEFAULT_MIN_REGION_UM2`
  µm² (about one tumour cell) are dropped, and holes smaller than that are filled, with
  :func:`skimage.morphology.remove_small_objects` / ``remove_small_holes``. Without an mpp
  the default is :data:`DEFAULT_MIN_REGION_PX` px. 0 keeps everything.

The filtering makes a new array for the measurement or the export; the mask it was given
is never changed, and how many regions were dropped is returned with the result.

>>> m = np.zeros((40, 40), bool); m[5:25, 5:25] = True; m[30, 30] = m[31, 31] = True
>>> c = clean_regions(m, min_region_px(mpp=0.5))
>>> c.n_regions, c.dropped_regions, c.dropped_px, bool(m[30, 30])
(1, 2, 2, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["CONNECTIVITY", "DEFAULT_MIN_REGION_UM2", "DEFAULT_MIN_REGION_PX", "min_region_px",
           "clean_regions", "Regions"]

CONNECTIVITY = 1              # 4-connected regions (see above)
DEFAULT_MIN_REGION_UM2 = 50.0  # about one tumour cell (an 8 µm disc is 50 µm²)
DEFAULT_MIN_REGION_PX = 16     # without an mpp: a 4 x 4 px speck


def min_region_px(mpp: float | None = None, min_region_um2: float | None = None,
                  min_region_px: int | None = None) -> int:
    """Smallest region kept, in pixels of a mask at ``mpp`` µm/px.

    ``min_region_px`` wins when given; else ``min_region_um2`` (default
    :data:`DEFAULT_MIN_REGION_UM2`) converted with ``mpp``; without an mpp,
    :data:`DEFAULT_MIN_REGION_PX`. 0 keeps every region.
    """
    if min_region_px is not None:
        if min_region_px < 0:
            raise ValueError(f"the minimum region size must be 0 or more px, got {min_region_px}")
        return int(min_region_px)
    if min_region_um2 is not None and min_region_um2 < 0:
        raise ValueError(f"the minimum region size must be 0 or more µm², got {min_region_um2}")
    if mpp is None:
        if min_region_um2 not in (None, 0):
            raise ValueError("a minimum region size in µm² needs the mpp (µm per pixel); give it in px instead")
        return 0 if min_region_um2 == 0 else DEFAULT_MIN_REGION_PX
    um2 = DEFAULT_MIN_REGION_UM2 if min_region_um2 is None else float(min_region_um2)
    return math.ceil(um2 / float(mpp) ** 2 - 1e-9)


@dataclass
class Regions:
    """The regions of a mask after the minimum size.

    Attributes
    ----------
    mask : ndarray of bool
        The cleaned foreground (a new array).
    labels : ndarray of int32
        Its regions, 1..n_regions (4-connected).
    n_regions : int
    dropped_regions, dropped_px : int
        Regions (and their pixels) smaller than ``min_px`` that were left out.
    filled_holes, filled_px : int
        Holes smaller than ``min_px`` that were filled.
    min_px : int
    """

    mask: np.ndarray
    labels: np.ndarray
    n_regions: int
    dropped_regions: int
    dropped_px: int
    filled_holes: int
    filled_px: int
    min_px: int


def clean_regions(foreground, min_px: int) -> Regions:
    """Drop regions and fill holes smaller than ``min_px`` pixels (0 or 1: keep all), and
    label what is left with :data:`CONNECTIVITY`. ``foreground`` is not changed."""
    from skimage import measure, morphology

    fg = np.asarray(foreground, bool)
    if fg.ndim != 2:
        raise ValueError(f"a mask must be 2-D, got shape {fg.shape}")
    min_px = int(min_px)
    before = measure.label(fg, connectivity=CONNECTIVITY).max()
    kept, filled = fg.copy(), fg
    dropped_px = filled_holes = filled_px = 0
    if min_px > 1:
        kept = morphology.remove_small_objects(fg, max_size=min_px - 1, connectivity=CONNECTIVITY)
        dropped_px = int(fg.sum() - kept.sum())
        filled = morphology.remove_small_holes(kept, max_size=min_px - 1, connectivity=2)
        new = filled & ~kept
        filled_px = int(new.sum())
        filled_holes = int(measure.label(new, connectivity=2).max()) if filled_px else 0
        kept_regions = measure.label(kept, connectivity=CONNECTIVITY).max()
    else:
        kept_regions = before
    labels = measure.label(filled, connectivity=CONNECTIVITY).astype(np.int32)
    return Regions(np.asarray(filled, bool), labels, int(labels.max()), int(before - kept_regions), dropped_px,
                   filled_holes, filled_px, min_px)
