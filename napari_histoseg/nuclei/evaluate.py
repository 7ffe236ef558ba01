"""Evaluate a nucleus model, side by side with the classical baseline, on an instances folder.

Every tile of the split is segmented whole by the model (tiled, as
:func:`~napari_histoseg.nuclei.infer.detect_nuclei` does) and by
:func:`~napari_histoseg.nuclei.baseline.classical_labels`, and scored with AJI, PQ, DQ,
SQ and F1 at IoU 0.5 (:mod:`~napari_histoseg.nuclei.metrics`). Figures are means over
tiles, overall and per organ (the convention of the MoNuSeg challenge and HoVer-Net).
"""

from __future__ import annotations

import time

import numpy as np

from napari_histoseg.nuclei.baseline import classical_labels
from napari_histoseg.nuclei.data import load_instances
from napari_histoseg.nuclei.metrics import score

KEYS = ("aji", "pq", "dq", "sq", "f1")


def _means(rows):
    return {k: float(np.mean([r[k] for r in rows])) for k in KEYS} | {"n_images": len(rows)}


def evaluate_nuclei(dataset, model=None, split="test", baseline=True, tile=640, overlap=128,
                    score_threshold=None, log=None) -> dict:
    """``{"per_image": [...], "model": {"overall", "by_organ"}, "baseline": {...}, ...}``."""
    from napari_histoseg.core.runs import drive
    from napari_histoseg.nuclei.infer import iter_detect, load_nuclei_model

    net, meta = load_nuclei_model(model) if model is None or isinstance(model, str) else model
    if score_threshold is None:
        score_threshold = float((meta.preprocessing or {}).get("score_threshold", 0.5))
    mask_threshold = float((meta.preprocessing or {}).get("mask_threshold", 0.5))
    tiles = load_instances(dataset, split)
    per_image, seconds = [], {"model": 0.0, "baseline": 0.0}
    for t in tiles:
        factor = (t.mpp / meta.mpp) if (t.mpp and meta.mpp) else 1.0
        if abs(factor - 1) > 0.05:
            raise ValueError(f"{t.id}: mpp {t.mpp} is far from the model's {meta.mpp}; "
                             "evaluate resamples nothing")
        t0 = time.perf_counter()
        labels, _ = drive(iter_detect(t.image, net, tile, overlap, score_threshold, mask_threshold))
        t1 = time.perf_counter()
        rows = [{"id": t.id, "organ": t.organ, "method": "model", **score(t.labels, labels),
                 "seconds": t1 - t0}]
        seconds["model"] += t1 - t0
        if baseline:
            b = classical_labels(t.image, t.mpp or 0.25)
            t2 = time.perf_counter()
            rows.append({"id": t.id, "organ": t.organ, "method": "baseline", **score(t.labels, b),
                         "seconds": t2 - t1})
            seconds["baseline"] += t2 - t1
        for r in rows:
            r.pop("ious", None)
        per_image += rows
        if log:
            log("  ".join(f"{r['method']} AJI {r['aji']:.3f} PQ {r['pq']:.3f}" for r in rows)
                + f"  {t.id} ({t.organ})")
    out = {"dataset": str(dataset), "split": split, "model_name": meta.name,
           "model_arch": meta.arch, "tile": tile, "overlap": overlap, "score_threshold": score_threshold, "mask_threshold": mask_threshold, "per_image": per_image,
           "seconds": seconds}
    for method in ("model", "baseline") if baseline else ("model",):
        rows = [r for r in per_image if r["method"] == method]
        organs = sorted({r["organ"] for r in rows})
        out[method] = {"overall": _means(rows),
                       "by_organ": {o: _means([r for r in rows if r["organ"] == o]) for o in organs}}
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
    return "\n".join(lines)
