"""The order in which fields are reviewed.

- ``entropy`` (default): the expected number of uncertain pixels, mean predictive entropy
  times the field's area, highest first: where the model is least sure of the most tissue.
- ``disagreement``: the area where the mask (refined, or as the model left it) differs
  from the model's ``probability >= 0.5``, highest first: where someone or something
  already overruled the model.
- ``random`` (seeded) and ``raster`` (top row first, left to right): the orders to beat.
"""

from __future__ import annotations

import numpy as np

from napari_histoseg.review.fields import Field

__all__ = ["RANKINGS", "rank_fields"]

RANKINGS = ("entropy", "disagreement", "random", "raster")


def rank_fields(fields: list[Field], method: str = "entropy", seed: int = 0) -> list[Field]:
    """``fields`` in review order, each with its ``score`` set (ties keep raster order)."""
    if method not in RANKINGS:
        raise ValueError(f"unknown ranking {method!r}; choose one of {', '.join(RANKINGS)}")
    n = len(fields)
    if method == "entropy":
        scores = [f.entropy * f.h * f.w for f in fields]
    elif method == "disagreement":
        scores = [f.disagreement * f.h * f.w for f in fields]
    elif method == "random":
        scores = list(np.random.default_rng(seed).permutation(n)[::-1].astype(float))
    else:
        scores = [float(n - i) for i in range(n)]
    for f, s in zip(fields, scores):
        f.score = float(s)
    order = sorted(range(n), key=lambda i: (-scores[i], i))
    return [fields[i] for i in order]
