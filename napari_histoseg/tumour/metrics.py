"""Segmentation metrics for binary tumour masks: per image and averaged.

All functions take a predicted mask (or probability) and a true mask of the same
shape; pixels whose true code is ``ignore_index`` (255) count for nothing. Tumour is
code 1 (``positive``).

* Dice = 2TP / (2TP + FP + FN); IoU = TP / (TP + FP + FN); precision = TP / (TP + FP);
  recall = TP / (TP + FN). Where a denominator is 0 (no tumour predicted and none
  true) the score is 1.0 for Dice and IoU (a perfect empty answer) and NaN for
  precision or recall; averages skip NaN.
* Pixel AUC: area under the ROC curve of the tumour probability over the valid
  pixels (the Mann-Whitney U statistic, ties counted half); NaN where the image holds
  only one class.
* Boundary F-score (Csurka et al. 2013): the boundaries of both masks are their
  one-pixel inner contours; a predicted boundary pixel is correct if a true boundary
  pixel lies within ``tolerance`` pixels (Euclidean distance transform), and vice
  versa for recall; F = 2PR / (P + R). **Default tolerance: 5 px**, about 0.75 % of
  the diagonal of a 512² tile, the convention of the BF score. At 0.25 µm/px that is
  1.25 µm; the camelyon masks here are jagged at a 16 px scale, so boundary F against
  them measures the annotation's coarseness as much as the model.

Example
-------
>>> t = np.zeros((8, 8), np.uint8); t[2:6, 2:6] = 1
>>> p = np.zeros((8, 8), np.uint8); p[2:6, 2:4] = 1
>>> round(dice(p, t), 4)
0.6667
"""

from __future__ import annotations

import math

import numpy as np

from napari_histoseg.core.scores import DEFAULT_TOLERANCE, _ratio, boundary_f, confusion, pixel_auc

METRIC_NAMES = ("dice", "iou", "precision", "recall", "auc", "boundary_f")


def image_metrics(prob, truth, threshold: float = 0.5, tolerance: float = DEFAULT_TOLERANCE,
                  positive=1, ignore_index=255) -> dict:
    """All metrics of one image from a tumour probability map (H, W) and true mask."""
    prob = np.asarray(prob)
    pred = (prob >= threshold).astype(np.uint8) if prob.dtype.kind == "f" else prob
    tp, fp, fn, tn = confusion(pred, truth, positive, ignore_index)
    return {
        "dice": _ratio(2 * tp, 2 * tp + fp + fn, 1.0),
        "iou": _ratio(tp, tp + fp + fn, 1.0),
        "precision": _ratio(tp, tp + fp, math.nan),
        "recall": _ratio(tp, tp + fn, math.nan),
        "auc": pixel_auc(prob, truth, positive, ignore_index) if prob.dtype.kind == "f" else math.nan,
        "boundary_f": boundary_f(pred, truth, tolerance, positive, ignore_index),
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
    }


def summarize(per_image: list[dict]) -> dict:
    """Mean of each metric over images (NaN skipped) plus pooled pixel Dice and IoU.

    ``mean_*`` averages per-image scores (each image counts once); ``pooled_dice``
    and ``pooled_iou`` sum TP/FP/FN over all images first (large tumours weigh more).
    """
    out = {"n_images": len(per_image)}
    for name in METRIC_NAMES:
        vals = [r[name] for r in per_image if r.get(name) is not None and not math.isnan(r[name])]
        out[f"mean_{name}"] = float(np.mean(vals)) if vals else math.nan
    tp = sum(r.get("tp", 0) for r in per_image)
    fp = sum(r.get("fp", 0) for r in per_image)
    fn = sum(r.get("fn", 0) for r in per_image)
    out["pooled_dice"] = _ratio(2 * tp, 2 * tp + fp + fn, 1.0)
    out["pooled_iou"] = _ratio(tp, tp + fp + fn, 1.0)
    return out


def expected_calibration_error(prob, truth, bins: int = 15) -> float:
    """ECE of a tumour probability against 0/1 truth (flat arrays): the pixel-weighted mean,
    over ``bins`` equal-width probability bins, of |fraction tumour - mean probability|."""
    p = np.asarray(prob, np.float64).ravel()
    t = np.asarray(truth, np.float64).ravel()
    if p.size == 0:
        return math.nan
    idx = np.minimum((p * bins).astype(int), bins - 1)
    n = np.bincount(idx, minlength=bins)
    conf = np.bincount(idx, p, minlength=bins)
    acc = np.bincount(idx, t, minlength=bins)
    ok = n > 0
    return float(np.abs(acc[ok] - conf[ok]).sum() / p.size)


def fit_temperature(logits, truth, bins: int = 15) -> dict:
    """The temperature T > 0 that minimises the binary cross-entropy of ``sigmoid(logits / T)``
    against 0/1 ``truth`` (Guo et al. 2017), with ECE and NLL before and after.

    T only rescales confidence: ``sigmoid(z / T) >= 0.5`` exactly where ``z >= 0``, so masks at
    the 0.5 threshold do not change.

    >>> z = np.array([-4.0, -4, 4, 4]); t = np.array([0, 1, 1, 0])
    >>> fit_temperature(z, t)["temperature"] > 4
    True
    """
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, np.float64).ravel()
    t = np.asarray(truth, np.float64).ravel()

    def nll(log_t):
        s = z / np.exp(log_t)
        return float(np.mean(np.logaddexp(0, s) - t * s))

    res = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    temp = float(np.exp(res.x))

    def sig(x):
        return 1.0 / (1.0 + np.exp(-x))

    return {"temperature": round(temp, 4), "pixels": int(z.size), "bins": bins,
            "ece_before": round(expected_calibration_error(sig(z), t, bins), 5),
            "ece_after": round(expected_calibration_error(sig(z / temp), t, bins), 5),
            "nll_before": round(nll(0.0), 5), "nll_after": round(nll(res.x), 5)}
