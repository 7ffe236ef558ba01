"""Instance-segmentation metrics for nuclei: AJI, PQ (= DQ x SQ) and F1 at IoU 0.5.

All take two label images of one shape (0 background, any positive id per object) and
work from the sparse table of overlaps between true and predicted objects, so they cost
one pass over the pixels however many nuclei there are.

* **AJI**, the aggregated Jaccard index of Kumar et al. (IEEE TMI 2017): every true
  nucleus is paired with the predicted one of highest IoU; AJI = Σ|G∩P| / (Σ|G∪P| + the
  area of predicted nuclei paired with none). A true nucleus that overlaps nothing adds
  its area to the denominator. (The formula of the MoNuSeg challenge and of HoVer-Net's
  ``get_fast_aji``.)
* **PQ** of Kirillov et al. (2019): pairs with IoU > 0.5 are unique matches (TP);
  SQ = mean IoU of the matches, DQ = TP / (TP + FP/2 + FN/2), PQ = DQ x SQ.
* **F1** at IoU 0.5: 2TP / (2TP + FP + FN), the same matching (numerically equal to DQ).

Where part of an image is unlabelled (an ``ignore`` mask: MoNuSAC's ambiguous regions),
:func:`drop_ignored` first removes every true or predicted object with at least half its
area there and blanks the region in both, so neither a found nor a missed nucleus in it
counts. :func:`size_recall` gives recall by nucleus size (so a miss of the large ones
cannot hide in a mean).

scikit-image's ``contingency_table``/``adapted_rand_error`` give pixel-pair scores, not
these per-object ones, and torchmetrics' ``PanopticQuality`` needs category maps and
counts "stuff"; both would need as much glue as the sparse overlap table below.

Example
-------
>>> t = np.zeros((4, 4), int); t[:2, :2] = 1
>>> p = t.copy()
>>> round(aji(t, p), 3), pq(t, p)["pq"]
(1.0, 1.0)
"""

from __future__ import annotations

import numpy as np


def _relabel(x: np.ndarray) -> np.ndarray:
    ids, inv = np.unique(x, return_inverse=True)
    inv = inv.reshape(x.shape)
    if ids[0] != 0:
        inv = inv + 1
    return inv


def overlaps(true: np.ndarray, pred: np.ndarray):
    """``(area_true, area_pred, ti, pi, inter)``: object areas (index 0 = background) and the
    non-zero intersections between true object ``ti`` and predicted object ``pi``."""
    if true.shape != pred.shape:
        raise ValueError(f"label images differ in shape: {true.shape} and {pred.shape}")
    t = _relabel(np.asarray(true)).ravel()
    p = _relabel(np.asarray(pred)).ravel()
    nt, np_ = int(t.max()) + 1, int(p.max()) + 1
    at = np.bincount(t, minlength=nt)
    ap = np.bincount(p, minlength=np_)
    both = (t > 0) & (p > 0)
    key = t[both].astype(np.int64) * np_ + p[both]
    keys, inter = np.unique(key, return_counts=True)
    return at, ap, keys // np_, keys % np_, inter


def aji(true: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard index (Kumar et al. 2017). 1.0 when both are empty."""
    at, ap, ti, pi, inter = overlaps(true, pred)
    nt, np_ = len(at) - 1, len(ap) - 1
    if nt == 0 and np_ == 0:
        return 1.0
    union = at[ti] + ap[pi] - inter
    iou = inter / union
    best_iou = np.full(nt + 1, -1.0)
    best = np.full(nt + 1, -1)
    # for each true object the pair with the highest IoU (ties: the first)
    order = np.lexsort((-iou, ti))
    first = np.ones(len(order), bool)
    first[1:] = ti[order][1:] != ti[order][:-1]
    sel = order[first]
    best[ti[sel]] = sel
    best_iou[ti[sel]] = iou[sel]
    c = u = 0
    for g in range(1, nt + 1):
        k = best[g]
        if k < 0:
            u += at[g]
        else:
            c += inter[k]
            u += union[k]
    used = np.zeros(np_ + 1, bool)
    used[pi[best[best >= 0]]] = True
    u += ap[1:][~used[1:]].sum()
    return float(c / u) if u else 1.0


def match(true: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """Unique matches at IoU > ``iou_threshold`` (>= 0.5 makes them unique): tp, fp, fn, ious."""
    at, ap, ti, pi, inter = overlaps(true, pred)
    iou = inter / (at[ti] + ap[pi] - inter)
    ok = iou > iou_threshold
    if iou_threshold < 0.5:  # greedy one-to-one by IoU
        order = np.argsort(-iou)
        st, sp, keep = set(), set(), []
        for k in order:
            if ok[k] and ti[k] not in st and pi[k] not in sp:
                st.add(ti[k]); sp.add(pi[k]); keep.append(k)
        ious = iou[keep]
    else:
        ious = iou[ok]
    tp = len(ious)
    return {"tp": tp, "fp": len(ap) - 1 - tp, "fn": len(at) - 1 - tp, "ious": ious}


def pq(true: np.ndarray, pred: np.ndarray) -> dict:
    """Panoptic quality: ``{"pq", "dq", "sq", "f1", "tp", "fp", "fn"}`` (IoU > 0.5 matches)."""
    m = match(true, pred, 0.5)
    tp, fp, fn = m["tp"], m["fp"], m["fn"]
    denom = tp + 0.5 * fp + 0.5 * fn
    dq = tp / denom if denom else 1.0
    sq = float(m["ious"].mean()) if tp else (1.0 if denom == 0 else 0.0)
    f1 = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return {"pq": dq * sq, "dq": dq, "sq": sq, "f1": f1, "tp": tp, "fp": fp, "fn": fn}


def drop_ignored(labels: np.ndarray, ignore, fraction: float = 0.5) -> np.ndarray:
    """A copy of ``labels`` without the objects that have ``fraction`` or more of their area
    in ``ignore`` (bool, same shape), and with 0 inside ``ignore``."""
    labels = np.asarray(labels)
    if ignore is None:
        return labels
    ignore = np.asarray(ignore, bool)
    if ignore.shape != labels.shape:
        raise ValueError(f"ignore mask {ignore.shape} differs from the labels {labels.shape}")
    n = int(labels.max()) + 1
    area = np.bincount(labels.ravel(), minlength=n)
    inside = np.bincount(labels[ignore].ravel(), minlength=n)
    gone = inside >= fraction * np.maximum(area, 1)
    gone[0] = True
    out = np.where(gone[labels], 0, labels)
    out[ignore] = 0
    return out


def matched_true(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(ids, found)``: every true object id and whether a prediction matches it at IoU > 0.5."""
    at, ap, ti, pi, inter = overlaps(true, pred)
    ids = np.unique(true)
    ids = ids[ids > 0]
    iou = inter / (at[ti] + ap[pi] - inter)
    hit = np.zeros(len(at), bool)
    hit[ti[iou > 0.5]] = True
    return ids, hit[1:1 + len(ids)]


def size_recall(areas: np.ndarray, found: np.ndarray, edges) -> list[dict]:
    """Recall of true nuclei per size bin: ``edges`` (k+1 areas, e.g. pooled quintiles) give k
    bins ``[edges[i], edges[i+1])`` (the last one closed); one dict per bin."""
    areas, found = np.asarray(areas, float), np.asarray(found, bool)
    out = []
    for i in range(len(edges) - 1):
        lo, hi = edges[i], edges[i + 1]
        sel = (areas >= lo) & ((areas < hi) if i < len(edges) - 2 else (areas <= hi))
        n = int(sel.sum())
        out.append({"bin": i + 1, "area_min": float(lo), "area_max": float(hi), "n": n,
                    "found": int(found[sel].sum()), "recall": float(found[sel].mean()) if n else float("nan")})
    return out


def score(true: np.ndarray, pred: np.ndarray, ignore=None) -> dict:
    """AJI, PQ, DQ, SQ, F1 and counts of one image (outside ``ignore``, if given)."""
    if ignore is not None:
        true, pred = drop_ignored(true, ignore), drop_ignored(pred, ignore)
    return {"aji": aji(true, pred), **pq(true, pred),
            "n_true": int(len(np.unique(true)) - (np.asarray(true) == 0).any()),
            "n_pred": int(len(np.unique(pred)) - (np.asarray(pred) == 0).any())}
