"""Binary classification figures: image level, patient level, per subtype.

Malignant is the positive class (1). Sensitivity = TP / (TP + FN) (malignant found),
specificity = TN / (TN + FP) (benign kept benign), balanced accuracy = their mean, AUC
the area under the ROC curve of P(malignant) (Mann-Whitney U, ties half;
:func:`napari_histoseg.core.scores.pixel_auc`). A patient's probability is the mean of its
images' calibrated probabilities; its label is its images' (majority) label.
"""

from __future__ import annotations

import math

import numpy as np

from napari_histoseg.core.scores import pixel_auc


def _ratio(a, b):
    return a / b if b > 0 else math.nan


def binary_metrics(p_malignant, labels, threshold: float = 0.5) -> dict:
    """accuracy, balanced_accuracy, auc, sensitivity, specificity, counts."""
    p = np.asarray(p_malignant, np.float64)
    y = np.asarray(labels).astype(int)
    pred = (p >= threshold).astype(int)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    bal = np.nanmean([sens, spec]) if not (math.isnan(sens) and math.isnan(spec)) else math.nan
    return {
        "n": int(y.size), "accuracy": _ratio(tp + tn, y.size), "balanced_accuracy": float(bal),
        "auc": pixel_auc(p, y, positive=1, ignore_index=-1) if y.size else math.nan,
        "sensitivity": sens, "specificity": spec, "tp": tp, "tn": tn, "fp": fp, "fn": fn,
    }


def per_patient(p_malignant, labels, groups) -> tuple[list[dict], dict]:
    """Per-patient rows ``{"patient", "label", "n_images", "p_malignant"}`` and their metrics."""
    p = np.asarray(p_malignant, np.float64)
    y = np.asarray(labels).astype(int)
    g = np.asarray([str(x) for x in groups])
    rows = []
    for name in sorted(set(g)):
        sel = g == name
        rows.append({"patient": name, "label": int(np.bincount(y[sel]).argmax()),
                     "n_images": int(sel.sum()), "p_malignant": float(p[sel].mean()),
                     "image_accuracy": float(((p[sel] >= 0.5) == (y[sel] == 1)).mean())})
    m = binary_metrics([r["p_malignant"] for r in rows], [r["label"] for r in rows])
    return rows, m


def per_subtype(p_malignant, labels, subtypes) -> dict:
    """``{subtype: {"n", "label", "accuracy", "mean_p_malignant"}}`` (one class each)."""
    p = np.asarray(p_malignant, np.float64)
    y = np.asarray(labels).astype(int)
    s = np.asarray([str(x) for x in subtypes])
    out = {}
    for name in sorted(set(s)):
        sel = s == name
        out[name] = {"n": int(sel.sum()), "label": int(np.bincount(y[sel]).argmax()),
                     "accuracy": float(((p[sel] >= 0.5) == (y[sel] == 1)).mean()),
                     "mean_p_malignant": float(p[sel].mean())}
    return out
