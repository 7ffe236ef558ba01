"""Evaluate a classifier on a classification folder: patient level first, then images.

Every image is classified as :func:`.infer.classify_region` does it (at the model's
scale: BreakHis images carry ``magnification``, turned into µm/px by
:data:`.magnification.BREAKHIS_MPP`, or an ``mpp`` per record). Figures use the calibrated
probabilities; the calibration error is given for the raw (T = 1) and the calibrated
probabilities on the same images, which for ``--split test`` are patients that neither
training nor the temperature fit saw.

``simulate_magnification=400`` evaluates on higher-power fields simulated from the same
images (:mod:`.zoom`: four fields per image, one centred on each quadrant, each a
``1 / zoom`` part enlarged ``zoom`` times with optical blur), classified at the field's
µm/px; every field counts as an image and a patient's probability is the mean over its
fields.
"""

from __future__ import annotations

import math

import numpy as np

from napari_histoseg.classifier.calibration import expected_calibration_error, nll, softmax
from napari_histoseg.classifier.data import load_classification
from napari_histoseg.classifier.magnification import BREAKHIS_MPP
from napari_histoseg.classifier.metrics import binary_metrics, per_patient, per_subtype
from napari_histoseg.classifier.zoom import simulated_fields


def record_mpp(record: dict):
    if record.get("mpp"):
        return float(record["mpp"])
    return BREAKHIS_MPP.get(record.get("magnification"))


def _fields(ds, i, rec, magnification):
    """``[(suffix, field, mpp)]`` of record ``i``: the image itself, or its simulated fields."""
    image, mpp = ds.load(i), record_mpp(rec)
    if magnification is None:
        return [("", image, mpp)]
    base = rec.get("magnification")
    if not base:
        raise ValueError(f"image {rec['id']!r} states no 'magnification'; a higher one cannot be simulated")
    zoom = float(magnification) / float(base)
    if zoom < 1 - 1e-6:
        raise ValueError(f"cannot simulate {magnification:g}x from a {base}x image (only higher magnifications)")
    fields = simulated_fields(image, zoom)
    return [(f"@{magnification:g}x-{k}" if len(fields) > 1 else "", f, mpp / zoom if mpp else None)
            for k, f in enumerate(fields)]


def evaluate_classifier(dataset, model=None, split: str = "test", progress=None,
                        simulate_magnification=None) -> dict:
    """Per-image, per-patient and per-subtype figures and calibration, as a JSON-able dict."""
    from napari_histoseg.classifier.infer import Classifier, ClassifierInputError, classify_region, load_classifier

    clf = model if isinstance(model, Classifier) else load_classifier(model)
    ds = load_classification(dataset).subset(split)
    if len(ds) == 0:
        raise ValueError(f"{dataset}: no images in split {split!r}")
    rows, logits, temps, refused = [], [], [], []
    for i, rec in enumerate(ds.records):
        for suffix, image, mpp in _fields(ds, i, rec, simulate_magnification):
            try:
                r = classify_region(image, clf, mpp=mpp, check=False, estimate=False)
            except ClassifierInputError as e:  # counted and reported, never silently dropped
                refused.append({"id": rec["id"] + suffix, "reason": str(e)})
                continue
            logits.append(r.logits)
            temps.append(clf.temperature_at(r.scale.get("model_mpp")))
            rows.append({"id": rec["id"] + suffix, "patient": str(rec.get("group", rec["id"])),
                         "subtype": rec.get("subtype", ""), "label": int(rec["label"]),
                         "p_malignant": float(r.probabilities[1]), "n_tiles": r.n_tiles,
                         "model_mpp": r.scale.get("model_mpp")})
        if progress is not None:
            progress(i + 1, len(ds))
    if not rows:
        raise ValueError(f"the model refused every image: {refused[0]['reason']}")
    logits = np.stack(logits)
    y = np.array([r["label"] for r in rows])
    raw, cal = softmax(logits), softmax(logits / np.asarray(temps)[:, None])
    p = cal[:, 1]
    patients, patient_m = per_patient(p, y, [r["patient"] for r in rows])
    return {
        "model": clf.description, "split": split, "n_images": len(rows),
        "n_patients": len(patients), "temperature": float(np.mean(temps)),
        "magnification": simulate_magnification or sorted({r.get("magnification") for r in ds.records} - {None}),
        "simulated": simulate_magnification is not None,
        "scales_read": sorted({r["model_mpp"] for r in rows if r["model_mpp"]}),
        "patient": patient_m, "image": binary_metrics(p, y),
        "subtype": per_subtype(p, y, [r["subtype"] for r in rows]),
        "calibration": {"ece_raw": expected_calibration_error(raw, y),
                        "ece_calibrated": expected_calibration_error(cal, y),
                        "nll_raw": nll(raw, y), "nll_calibrated": nll(cal, y), "bins": 10},
        "patients": patients, "images": rows, "refused": refused,
    }


def _f(v):
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:5.3f}"


def format_report(res: dict) -> str:
    """Plain-text report: patient level, image level, per subtype, calibration, patients."""
    cols = ["accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity"]
    head = f"{'':<22}" + "".join(f"{c.replace('_accuracy', ' acc'):>14}" for c in cols) + "       n"
    mag = res.get("magnification")
    at = (f" at simulated {mag:g}x (4 fields per image)" if res.get("simulated") else
          f" at {', '.join(f'{m}x' for m in mag)}" if mag else "")
    read = ", ".join(f"{m:.3g}" for m in res.get("scales_read", []))
    lines = [f"{res['model']} on {res['split']}{at}: {res['n_images']} images of {res['n_patients']} patients "
             f"(read at {read or '?'} µm/px; temperature {res['temperature']:.3f})"]
    if res.get("refused"):
        lines.append(f"REFUSED {len(res['refused'])} images (not in the figures): {res['refused'][0]['reason']}")
    lines.append(head)
    for level in ("patient", "image"):
        m = res[level]
        lines.append(f"{level + '-level':<22}" + "".join(f"{_f(m[c]):>14}" for c in cols) + f"{m['n']:>8}")
    lines.append("")
    lines.append("per subtype (images):   label      accuracy   mean P(malignant)     n")
    for name, s in res["subtype"].items():
        lines.append(f"  {name:<20}  {('malignant' if s['label'] else 'benign'):<10} {_f(s['accuracy']):>8}"
                     f"   {_f(s['mean_p_malignant']):>12}        {s['n']:>4}")
    c = res["calibration"]
    lines.append("")
    lines.append(f"calibration (image level, 10 bins): ECE {c['ece_raw']:.3f} raw -> {c['ece_calibrated']:.3f} "
                 f"calibrated; NLL {c['nll_raw']:.3f} -> {c['nll_calibrated']:.3f}")
    lines.append("")
    lines.append("per patient:   label      P(malignant)  images right   n")
    for r in res["patients"]:
        lines.append(f"  {r['patient']:<22} {('malignant' if r['label'] else 'benign'):<10} "
                     f"{r['p_malignant']:6.3f}      {r['image_accuracy']:6.3f}   {r['n_images']:>3}")
    return "\n".join(lines)
