"""Whole slides and cohorts: tissue detection, magnification, Dask streaming into OME-Zarr.

No napari or Qt here; the widget side is ``widgets/_wholeslide.py``.

>>> from napari_histoseg.wsi import segment_slide            # doctest: +SKIP
>>> res = segment_slide("slide.svs", "out/slide.ome.zarr", model_mpp=0.5)  # doctest: +SKIP
>>> res.tumour_mm2, res.tumour_fraction_of_tissue, res.tiles_skipped_fraction  # doctest: +SKIP
"""

from napari_histoseg.core.tissue import TissueMask, detect_tissue, slide_tissue
from napari_histoseg.wsi.cohort import segment_cohort
from napari_histoseg.wsi.omezarr import read_result
from napari_histoseg.wsi.scale import Scale, choose_scale
from napari_histoseg.wsi.stream import SlideResult, iter_segment_slide, segment_slide

__all__ = ["segment_slide", "iter_segment_slide", "segment_cohort", "read_result", "SlideResult",
           "choose_scale", "Scale", "detect_tissue", "slide_tissue", "TissueMask"]
