"""Nuclei (instances) as a registered task (:mod:`napari_histoseg.tasks`): loading, detection,
evaluation and training of a nucleus model, and its result in wire parts."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_histoseg.models.bundled import BUNDLED

name = "instances"
title = "nuclei"
# keyword options of infer (those of napari_histoseg.nuclei.infer.detect_nuclei)
INFER_OPTIONS = frozenset({"mpp", "tile", "overlap", "score_threshold", "mask_threshold", "features", "batch",
                           "split_touching", "stain"})
EXPLAIN_OPTIONS = frozenset()   # no explanations of nuclei


def load_model(ref=None, device: str = "auto", engine: str = "torch"):
    """The :class:`~napari_histoseg.models.detector.NucleusDetector` of a nucleus checkpoint
    (None or ``"bundled"``: the bundled one) on ``device``."""
    from napari_histoseg.nuclei.infer import load_nuclei_detector

    if engine != "torch":
        raise ValueError(f"the nucleus detector runs on torch only, not {engine!r}")
    return load_nuclei_detector(None if ref in (None, "", BUNDLED) else ref, device=device)


def iter_infer(model, image, **options):
    """Generator: yields ``(done, total)`` tiles, returns ``(labels uint32, table or None)``
    exactly as :func:`~napari_histoseg.nuclei.infer.detect_nuclei` (same resampling to the model's mpp)."""
    from napari_histoseg.core.threaded import iter_threaded
    from napari_histoseg.nuclei.infer import detect_nuclei

    return (yield from iter_threaded(detect_nuclei, image, model, **options))


def iter_explain(model, image, method: str = "gradcam", **options):
    raise ValueError("nuclei have no explanations")
    yield  # a generator, like the other tasks'


def evaluate(dataset, model=None, **options) -> dict:
    from napari_histoseg.nuclei.evaluate import evaluate_nuclei

    if model in (None, "", BUNDLED):
        model = None
    return evaluate_nuclei(dataset, str(model) if isinstance(model, Path) else model, **options)


def fine_tune(dataset, out, init=BUNDLED, *, progress=None, should_stop=None, **settings) -> dict:
    """Train a nucleus model from ``init`` (a checkpoint of this task; ``"bundled"``: the bundled
    one; None: from scratch) on training-data folder(s) through the one training loop;
    ``settings`` are fields of :class:`~napari_histoseg.nuclei.config.NucleiConfig` (others are refused).
    Weights are stored as float16 unless ``half_weights=False``."""
    from napari_histoseg.nuclei.train import train

    settings.setdefault("half_weights", True)
    return train(dataset, out, init_checkpoint=None if init in (None, "") else str(init), progress=progress,
                 should_stop=should_stop, log=lambda *_: None, show_bar=False, **settings)

def result_parts(result) -> tuple[dict, dict]:
    labels, table = result
    arrays = {"labels": np.asarray(labels, np.uint32)}
    columns = None if table is None else [str(c) for c in table.columns]
    for c in columns or []:
        arrays[f"table.{c}"] = table[c].to_numpy()
    return arrays, {"columns": columns}


def result_from_parts(arrays: dict, info: dict):
    table = None
    if info.get("columns") is not None:
        import pandas as pd

        table = pd.DataFrame({c: arrays[f"table.{c}"] for c in info["columns"]})
    return arrays["labels"].astype(np.uint32), table
