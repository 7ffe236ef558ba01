"""Evaluate a nucleus model, side by side with the classical baseline, on an instances folder.

Every tile of the split is segmented whole by the model (tiled, as
:func:`~napari_histoseg.nuclei.infer.detect_nuclei` does) and by
:func:`~napari_histoseg.nuclei.baseline.classical_labels`, and scored with AJI, PQ, DQ,
SQ and F1 at IoU 0.5 (:mod:`~napari_histoseg.nuclei.metrics`). Figures are means over
tiles, overall and per organ (the convention of the MoNuSeg challenge and HoVer-Net).
A tile's ignore mask (MoNuSAC's unlabelled nests) is left out of every score; a checkpoint's
stain target (``preprocessing["stain"]``) is applied as :func:`detect_nuclei` applies it. A tile whose
mpp differs from the model's is resampled to it (as :func:`detect_nuclei` does) and the
labels back. Recall by size: the true nuclei of the split, pooled, cut into quintiles of
area; per quintile the share matched at IoU > 0.5, for the model and for the baseline.
"""

from __future__ import annotations

import time

import numpy as np

from napari_histoseg.nuclei.baseline import classical_labels
from napari_histoseg.nuclei.data import load_instances
from napari_histoseg.nuclei.metrics import drop_ignored, matched_true, score, size_recall

KEYS = ("aji", "pq", "dq", "sq", "f1")


def _means(rows):
    return {k: float(np.mean([r[k] for r in rows])) for k in KEYS} | {"n_images": len(rows)}


def _detect(t, net, meta, tile, overlap, score_threshold, mask_threshold, split_touching, batch, stain=None):
    """:func:`detect_nuclei` on one tile of the dataset, at its mpp, without the measurements."""
    from napari_histoseg.nuclei.infer import detect_nuclei

    labels, _ = detect_nuclei(t.image, (net, meta), t.mpp or None, tile=tile, overlap=overlap,
                              score_threshold=score_threshold, mask_threshold=mask_threshold, features=False,
                              batch=batch, split_touching=split_touching, stain=stain)
    return labels


def evaluate_nuclei(dataset, model=None, split="test", baseline=True, tile=640, overlap=128,
                    score_threshold=None, split_touching=None, batch=2, stain=None, log=None) -> dict:
    """``{"per_image": [...], "model": {"overall", "by_organ", "size_recall"}, "baseline": {...}, ...}``."""
    from napari_histoseg.nuclei.infer import load_nuclei_model, stain_target

    net, meta = load_nuclei_model(model) if model is None or isinstance(model, str) else model
    prep = meta.preprocessing or {}
    if score_threshold is None:
        score_threshold = float(prep.get("score_threshold", 0.5))
    mask_threshold = float(prep.get("mask_threshold", 0.5))
    if split_touching is None:
        split_touching = bool(prep.get("split_touching", False))
    tiles = load_instances(dataset, split)
    per_image, seconds = [], {"model": 0.0, "baseline": 0.0}
    areas, found = [], {"model": [], "baseline": []}
    for t in tiles:
        truth = drop_ignored(t.labels, t.ignore)
        ids = np.unique(truth)
        areas.append(np.bincount(truth.ravel())[ids[ids > 0]])
        t0 = time.perf_counter()
        labels = _detect(t, net, meta, tile, overlap, score_threshold, mask_threshold, split_touching, batch, stain)
        t1 = time.perf_counter()
        outputs = [("model", labels, t1 - t0)]
        if baseline:
            b = classical_labels(t.image, t.mpp or 0.25)
            outputs.append(("baseline", b, time.perf_counter() - t1))
        rows = []
        for method, pred, sec in outputs:
            pred = drop_ignored(pred, t.ignore)
            rows.append({"id": t.id, "organ": t.organ, "method": method, **score(truth, pred), "seconds": sec})
            found[method].append(matched_true(truth, pred)[1])
            seconds[method] += sec
        for r in rows:
            r.pop("ious", None)
        per_image += rows
        if log:
            log("  ".join(f"{r['method']} AJI {r['aji']:.3f} PQ {r['pq']:.3f}" for r in rows)
                + f"  {t.id} ({t.organ})")
    areas = np.concatenate(areas) if areas else np.zeros(0)
    edges = np.quantile(areas, np.linspace(0, 1, 6)) if len(areas) else np.zeros(6)
    out = {"dataset": str(dataset), "split": split, "model_name": meta.name, "model_version": meta.model_version,
           "model_arch": meta.arch, "tile": tile, "overlap": overlap, "score_threshold": score_threshold,
           "mask_threshold": mask_threshold, "split_touching": split_touching,
           "stain": bool(stain_target(meta, stain)), "per_image": per_image,
           "seconds": seconds}
    for method in ("model", "baseline") if baseline else ("model",):
        rows = [r for r in per_image if r["method"] == method]
        organs = sorted({r["organ"] for r in rows})
        hits = np.concatenate(found[method]) if found[method] else np.zeros(0, bool)
        out[method] = {"overall": _means(rows),
                       "by_organ": {o: _means([r for r in rows if r["organ"] == o]) for o in organs},
                       "size_recall": size_recall(areas, hits, edges)}
    return out


def format_table(result: dict) -> str:
    """Model and baseline side by side, overall then per organ, with the model's margin."""
    has_b = "baseline" in result
    head = f"{'organ':<10}{'n':>3}  " + "  ".join(f"{k.upper():>5}" for k in KEYS)
    if has_b:
        head += "   | baseline " + "  ".join(f"{k.upper():>5}" for k in KEYS) + "  | model - baseline AJI   PQ"
    lines = [f"split {result['split']} of {result['dataset']} ({result['model_name']}, "
             f"{result['model_arch']}); means over images", head]
    groups = [("overall", result["model"]["overall"], result.get("baseline", {}).get("overall"))]
    for organ, m in result["model"]["by_organ"].items():
        groups.append((organ, m, result["baseline"]["by_organ"][organ] if has_b else None))
    for name, m, b in groups:
        line = f"{name:<10}{m['n_images']:>3}  " + "  ".join(f"{m[k]:5.3f}" for k in KEYS)
        if b is not None:
            line += "   |          " + "  ".join(f"{b[k]:5.3f}" for k in KEYS)
            line += f"  |              {m['aji'] - b['aji']:+.3f} {m['pq'] - b['pq']:+.3f}"
        lines.append(line)
    if has_b:
        m, b = result["model"]["overall"], result["baseline"]["overall"]
        verdict = "beats" if m["aji"] > b["aji"] and m["pq"] > b["pq"] else "does NOT beat"
        lines.append(f"the model {verdict} the classical baseline: AJI {m['aji']:.3f} vs {b['aji']:.3f} "
                     f"({m['aji'] - b['aji']:+.3f}), PQ {m['pq']:.3f} vs {b['pq']:.3f} ({m['pq'] - b['pq']:+.3f})")
    lines.append("recall of true nuclei by size quintile (area px², IoU > 0.5):")
    for i, q in enumerate(result["model"].get("size_recall", [])):
        line = f"  Q{q['bin']} {q['area_min']:6.0f}-{q['area_max']:6.0f}  n {q['n']:5d}  model {q['recall']:.3f}"
        if has_b:
            line += f"  baseline {result['baseline']['size_recall'][i]['recall']:.3f}"
        lines.append(line)
    return "\n".join(lines)
