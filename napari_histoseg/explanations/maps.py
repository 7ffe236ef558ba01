"""Uncertainty maps computed from a probability alone (numpy and scipy, no torch): predictive
entropy, on calibrated probabilities where the model has a temperature, and the nearness of the
predicted outline. The review queue ranks fields with them without loading a model.
"""

from __future__ import annotations

import numpy as np

#: how far (px at the model's scale) the boundary term of "tta-boundary" reaches: the
#: proximity to the predicted outline is exp(-distance / BOUNDARY_PX)
BOUNDARY_PX = 32.0


def boundary_proximity(mask: np.ndarray, reach: float = BOUNDARY_PX) -> np.ndarray:
    """``exp(-d / reach)`` in [0, 1], d the distance (px) of each pixel from the outline of the
    boolean ``mask`` (on either side): 1 on the outline, falling with the distance; 0
    everywhere when the mask is all one value (there is no outline)."""
    from scipy.ndimage import distance_transform_edt

    mask = np.asarray(mask, bool)
    if mask.all() or not mask.any():
        return np.zeros(mask.shape, np.float32)
    d = np.where(mask, distance_transform_edt(mask), distance_transform_edt(~mask)) - 0.5
    return np.exp(-np.clip(d, 0, None) / float(reach)).astype(np.float32)


def either(*maps: np.ndarray) -> np.ndarray:
    """The probabilistic "or" of maps in [0, 1]: ``1 - prod(1 - m)``, high where any one is."""
    out = np.ones_like(np.asarray(maps[0], np.float32))
    for m in maps:
        out *= 1.0 - np.clip(m, 0.0, 1.0)
    return (1.0 - out).astype(np.float32)


def entropy_bits(prob: np.ndarray) -> np.ndarray:
    """Predictive entropy in [0, 1]: binary entropy in bits of an (H, W) probability, or
    the entropy of a (C, H, W) class distribution divided by log2 C."""
    p = np.clip(np.asarray(prob, np.float64), 1e-12, 1.0)
    if p.ndim == 2:
        q = np.clip(1.0 - p, 1e-12, 1.0)
        h = -(p * np.log2(p) + q * np.log2(q))
    elif p.ndim == 3:
        h = -(p * np.log2(p)).sum(0) / np.log2(max(p.shape[0], 2))
    else:
        raise ValueError(f"expected a (H, W) or (C, H, W) probability, got shape {p.shape}")
    return np.clip(h, 0.0, 1.0).astype(np.float32)


def temperature(model) -> float:
    """The calibration temperature in the model's metadata, else 1: ``training.calibration.
    temperature``, ``training.temperature`` or ``preprocessing.temperature`` (a positive
    number; anything else is ignored)."""
    meta = model.meta
    training = meta.training if isinstance(meta.training, dict) else {}
    cal = training.get("calibration", {})
    pre = meta.preprocessing if isinstance(meta.preprocessing, dict) else {}
    for value in ((cal.get("temperature") if isinstance(cal, dict) else None), training.get("temperature"),
                  pre.get("temperature")):
        try:
            t = float(value)
        except (TypeError, ValueError):
            continue
        if np.isfinite(t) and t > 0:
            return t
    return 1.0


def calibrated(prob: np.ndarray, temp: float) -> np.ndarray:
    """Probabilities with their logits divided by ``temp`` (sigmoid for (H, W), softmax for (C, H, W))."""
    if temp == 1.0:
        return prob
    p = np.clip(np.asarray(prob, np.float64), 1e-7, 1 - 1e-7)
    if p.ndim == 2:
        return (1.0 / (1.0 + np.exp(-np.log(p / (1 - p)) / temp))).astype(np.float32)
    z = np.log(p) / temp
    z = np.exp(z - z.max(0, keepdims=True))
    return (z / z.sum(0, keepdims=True)).astype(np.float32)


