"""The order in which fields are reviewed.

- ``entropy`` (default): the expected number of uncertain pixels, mean predictive entropy
  times the field's area, highest first: where the model is least sure of the most tissue.
  Of the maps a probability alone gives, entropy ranks the model's wrong pixels best
  (benchmarks/bench_explain.py, BENCHMARKS.md › Explanations: pixel ROC AUC 0.776 on 12 held-out
  tiles, against 0.768 for ``uncertainty`` and 0.727 for the outline alone). The Explain widget's
  best map, the entropy of the mean over flips and turns (0.801), needs the model and the image,
  which the review of a finished slide has not; a slide segmented with flip TTA gives the
  review the entropy of a flip-averaged probability, which is close to it.
- ``uncertainty``: mean of "unsure (entropy) or near the predicted outline"
  (:func:`~napari_histoseg.explanations.maps.either` of the entropy and
  :func:`~napari_histoseg.explanations.maps.boundary_proximity`) times the area: better than
  entropy on the BCSS test tiles, worse on camelyon's coarse outlines.
- ``disagreement``: the area where the mask (refined, or as the model left it) differs
  from the model's ``probability >= 0.5``, highest first: where someone or something
  already overruled the model.
- ``random`` (seeded) and ``raster`` (top row first, left to right): the orders to beat.
"""

from __future__ import annotations

import numpy as np

from napari_histoseg.review.fields import Field

__all__ = ["RANKINGS", "DEFAULT_RANKING", "rank_fields"]

RANKINGS = ("entropy", "uncertainty", "disagreement", "random", "raster")
#: the order a new review starts with: the measure that predicts the model's errors best
DEFAULT_RANKING = "entropy"


def rank_fields(fields: list[Field], method: str = DEFAULT_RANKING, seed: int = 0) -> list[Field]:
    """``fields`` in review order, each with its ``score`` set (ties keep raster order)."""
    if method not in RANKINGS:
        raise ValueError(f"unknown ranking {method!r}; choose one of {', '.join(RANKINGS)}")
    n = len(fields)
    if method in ("uncertainty", "entropy", "disagreement"):
        scores = [getattr(f, method) * f.h * f.w for f in fields]
    elif method == "random":
        scores = list(np.random.default_rng(seed).permutation(n)[::-1].astype(float))
    else:
        scores = [float(n - i) for i in range(n)]
    for f, s in zip(fields, scores):
        f.score = float(s)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    return [fields[i] for i in order]
