"""The order in which fields are reviewed.

- ``uncertainty``: the expected number of pixels the model gets wrong, as far as the
  probability alone can tell: the mean of "the model is unsure (predictive entropy) or the
  pixel lies near the predicted outline" (:func:`~napari_histoseg.explanations.maps.either` of
  the entropy and :func:`~napari_histoseg.explanations.maps.boundary_proximity`) times the
  field's area. Of the maps computable from the probability it ranks the model's errors best
  (benchmarks/bench_explain.py, BENCHMARKS.md › Explanations); the flip/turn maps of the
  Explain widget need the model and the image, which a review of a finished slide has not.
- ``entropy``: mean predictive entropy times the field's area: where the model is least sure
  of the most tissue.
- ``disagreement``: the area where the mask (refined, or as the model left it) differs
  from the model's ``probability >= 0.5``, highest first: where someone or something
  already overruled the model.
- ``random`` (seeded) and ``raster`` (top row first, left to right): the orders to beat.
"""

from __future__ import annotations

import numpy as np

from napari_histoseg.review.fields import Field

__all__ = ["RANKINGS", "DEFAULT_RANKING", "rank_fields"]

RANKINGS = ("uncertainty", "entropy", "disagreement", "random", "raster")
#: the order a new review starts with: the measure that predicts the model's errors best
DEFAULT_RANKING = "uncertainty"


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
