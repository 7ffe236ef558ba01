"""Scores of a predicted mask against the truth: confusion, Dice, IoU, ROC AUC, boundary F."""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi
from scipy.stats import rankdata

DEFAULT_TOLERANCE = 5


def _valid(truth: np.ndarray, ignore_index: int) -> np.ndarray:
    return truth != ignore_index


def confusion(pred, truth, positive: int = 1, ignore_index: int = 255) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` pixel counts over the valid pixels."""
    pred, truth = np.asarray(pred), np.asarray(truth)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and truth {truth.shape} differ in shape")
    v = _valid(truth, ignore_index)
    p = (pred == positive) & v
    t = (truth == positive) & v
    tp = int((p & t).sum())
    fp = int((p & ~t).sum())
    fn = int((~p & t & v).sum())
    tn = int((v & ~p & ~t).sum())
    return tp, fp, fn, tn


def _ratio(num, den, empty):
    return num / den if den > 0 else empty


def dice(pred, truth, positive=1, ignore_index=255) -> float:
    """Dice coefficient (F1 of the tumour pixels); 1.0 when both are empty."""
    tp, fp, fn, _ = confusion(pred, truth, positive, ignore_index)
    return _ratio(2 * tp, 2 * tp + fp + fn, 1.0)


def iou(pred, truth, positive=1, ignore_index=255) -> float:
    """Intersection over union (Jaccard); 1.0 when both are empty."""
    tp, fp, fn, _ = confusion(pred, truth, positive, ignore_index)
    return _ratio(tp, tp + fp + fn, 1.0)


def precision(pred, truth, positive=1, ignore_index=255) -> float:
    """TP / (TP + FP); NaN when nothing is predicted."""
    tp, fp, _, _ = confusion(pred, truth, positive, ignore_index)
    return _ratio(tp, tp + fp, math.nan)


def recall(pred, truth, positive=1, ignore_index=255) -> float:
    """TP / (TP + FN) (sensitivity); NaN when there is no true tumour."""
    tp, _, fn, _ = confusion(pred, truth, positive, ignore_index)
    return _ratio(tp, tp + fn, math.nan)


def pixel_auc(prob, truth, positive=1, ignore_index=255) -> float:
    """ROC AUC of ``prob`` for the tumour pixels, over valid pixels (NaN for one class)."""
    prob, truth = np.asarray(prob, np.float64), np.asarray(truth)
    v = _valid(truth, ignore_index)
    s = prob[v].ravel()
    y = (truth[v] == positive).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(s)  # average ranks: ties count half
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def boundary(mask: np.ndarray) -> np.ndarray:
    """One-pixel inner contour of a binary mask (pixels with a 4-neighbour outside)."""
    mask = np.asarray(mask, bool)
    eroded = ndi.binary_erosion(mask, structure=ndi.generate_binary_structure(2, 1), border_value=1)
    return mask & ~eroded


def boundary_f(pred, truth, tolerance: float = DEFAULT_TOLERANCE, positive=1, ignore_index=255) -> float:
    """Boundary F-score with a tolerance of ``tolerance`` pixels.

    Boundary pixels that fall on ignored truth pixels are not counted. Both boundaries
    empty gives 1.0, one of them empty gives 0.0.
    """
    pred, truth = np.asarray(pred), np.asarray(truth)
    v = _valid(truth, ignore_index)
    bp = boundary(pred == positive) & v
    bt = boundary(truth == positive) & v
    if not bp.any() and not bt.any():
        return 1.0
    if not bp.any() or not bt.any():
        return 0.0
    dist_to_t = ndi.distance_transform_edt(~bt)
    dist_to_p = ndi.distance_transform_edt(~bp)
    prec = float((dist_to_t[bp] <= tolerance).mean())
    rec = float((dist_to_p[bt] <= tolerance).mean())
    return _ratio(2 * prec * rec, prec + rec, 0.0)
