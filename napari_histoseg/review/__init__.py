"""Slide review: walk a segmentation field by field, most uncertain first (no napari here).

- :mod:`~napari_histoseg.review.fields`: the segmentation to review (:class:`ReviewSource`,
  from an OME-Zarr of ``segment-slides`` or from arrays) and its grid of fields.
- :mod:`~napari_histoseg.review.ranking`: the order (predictive entropy, model vs mask
  disagreement, random, raster).
- :mod:`~napari_histoseg.review.state`: :class:`ReviewState`, one JSON file per reviewer
  beside the result, with each field's status, who, when and edit map.
- :mod:`~napari_histoseg.review.export`: reviewed fields to a training-data folder and to
  a QuPath GeoJSON carrying each field's status.

>>> src = ReviewSource.from_result("slide.ome.zarr")                       # doctest: +SKIP
>>> state = open_review(src, "A. Path", size=512, ranking="entropy")      # doctest: +SKIP
>>> state.set_status(state.fields[0], "accepted"); state.progress()      # doctest: +SKIP
'1 of 140 fields reviewed, 3 % of tumour area'
"""

from napari_histoseg.review.fields import Field, ReviewSource, make_fields
from napari_histoseg.review.ranking import RANKINGS, rank_fields
from napari_histoseg.review.state import STATUSES, ReviewState, open_review, reviewers

__all__ = ["Field", "ReviewSource", "make_fields", "RANKINGS", "rank_fields", "STATUSES", "ReviewState",
           "open_review", "reviewers"]
