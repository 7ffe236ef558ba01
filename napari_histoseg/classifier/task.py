"""Benign/malignant classification as a registered task (:mod:`napari_histoseg.tasks`):
loading, classifying a region, evaluation and training, and its result in wire parts."""

from __future__ import annotations

import numpy as np

from napari_histoseg.models.bundled import BUNDLED

name = "classification"
title = "benign/malignant classification"
# keyword options of infer (those of napari_histoseg.classifier.infer.classify_region)
INFER_OPTIONS = frozenset({"region", "mpp", "check", "what", "magnification", "estimate"})
EXPLAIN_OPTIONS = frozenset({"region", "mpp", "channel", "magnification"})   # Grad-CAM of a region


def load_model(ref=None, device: str = "auto", engine: str = "torch"):
    """The :class:`~napari_histoseg.classifier.infer.Classifier` of ``ref`` (None or ``"bundled"``: the bundled one)."""
    from napari_histoseg.classifier.infer import ENGINES, load_classifier

    if engine not in ENGINES:
        raise ValueError(f"the classifier runs on PyTorch only ({', '.join(ENGINES)}), not {engine!r}")
    return load_classifier(None if ref in (None, "", BUNDLED) else ref, device=device, engine=engine)


def iter_infer(model, image, *, region=None, mpp=None, **options):
    """Generator: yields ``(done, total)`` tiles, returns the
    :class:`~napari_histoseg.classifier.infer.Classification` of ``region`` (a boolean (H, W)
    mask; None: the whole image)."""
    from napari_histoseg.classifier.infer import classify_region
    from napari_histoseg.core.threaded import iter_threaded

    return (yield from iter_threaded(classify_region, image, model, region, mpp, **options))


def iter_explain(model, image, method: str = "gradcam", *, region=None, mpp=None, **options):
    """Generator: yields ``(done, total)``, returns the Grad-CAM (float32 (H, W), 0 outside
    ``region``) of :func:`~napari_histoseg.classifier.infer.explain_region`."""
    from napari_histoseg.classifier.infer import explain_region
    from napari_histoseg.core.threaded import iter_threaded

    if method != "gradcam":
        raise ValueError(f"the classifier explains with gradcam only, not {method!r}")
    return (yield from iter_threaded(explain_region, image, model, region, mpp, **options))


def evaluate(dataset, model=None, **options) -> dict:
    from napari_histoseg.classifier.evaluate import evaluate_classifier

    return evaluate_classifier(dataset, None if model in (None, "", BUNDLED) else model, **options)


def fine_tune(dataset, out, init=BUNDLED, *, progress=None, should_stop=None, **settings) -> dict:
    """Train a classifier from ``init`` (a checkpoint of this task; ``"bundled"``: the bundled
    one; None: from scratch) on training-data folder(s) through the one training loop;
    ``settings`` are fields of :class:`~napari_histoseg.classifier.config.ClassifierConfig` (others are refused).
    Weights are stored as float16 unless ``half_weights=False``."""
    from napari_histoseg.classifier.train import train

    settings.setdefault("half_weights", True)
    return train(dataset, out, init_checkpoint=None if init in (None, "") else str(init), progress=progress,
                 should_stop=should_stop, log=lambda *_: None, show_bar=False, **settings)

def result_parts(c) -> tuple[dict, dict]:
    arrays = {"probabilities": np.asarray(c.probabilities, np.float32), "logits": np.asarray(c.logits, np.float32),
              "tile_probabilities": np.asarray(c.tile_probabilities, np.float32),
              "boxes": np.asarray(c.boxes, np.float64).reshape(-1, 4)}
    return arrays, {"label": c.label, "probability": float(c.probability), "spread": float(c.spread),
                    "n_tiles": int(c.n_tiles), "warnings": [str(w) for w in c.warnings],
                    "scale": dict(getattr(c, "scale", {}) or {})}


def result_from_parts(arrays: dict, info: dict):
    from napari_histoseg.classifier.infer import Classification

    return Classification(arrays["probabilities"], info["label"], info["probability"], info["spread"],
                          info["n_tiles"], arrays["logits"], arrays["tile_probabilities"],
                          [tuple(float(v) for v in b) for b in arrays["boxes"]], list(info["warnings"]),
                          dict(info.get("scale") or {}))
