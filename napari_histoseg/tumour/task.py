"""Tumour segmentation as a registered task (:mod:`napari_histoseg.tasks`): loading, tiled
inference, evaluation and fine-tuning of a tumour model, and its result in wire parts."""

from __future__ import annotations

import numpy as np

from napari_histoseg.models.bundled import BUNDLED

name = "segmentation"
title = "tumour segmentation"
# keyword options of infer (those of napari_histoseg.core.tiling.iter_predict)
INFER_OPTIONS = frozenset({"tile", "overlap", "batch_size", "threshold", "region", "preprocess", "tissue_gate",
                           "tissue", "mpp", "tta"})
# keyword options of explain (those of napari_histoseg.explanations.iter_explain)
EXPLAIN_OPTIONS = frozenset({"target", "region", "layer", "tile", "overlap", "samples", "normalise", "preprocess",
                             "batch_size", "baseline", "blur_sigma", "stdevs", "channel"})


def load_model(ref=None, device: str = "auto", engine: str = "torch"):
    """The :class:`~napari_histoseg.models.segmenter.Segmenter` of ``ref`` (None or ``"bundled"``: the bundled one)."""
    from napari_histoseg.models.segmenter import load_segmenter

    return load_segmenter(None if ref in (None, "", BUNDLED) else ref, device=device, engine=engine)


def iter_infer(model, image, *, tile=None, region=None, **options):
    """Generator: yields ``(done, total)`` tiles, returns the :class:`~napari_histoseg.core.tiling.Prediction`."""
    from napari_histoseg.core.tiling import iter_predict

    if region is not None:
        region = tuple(int(v) for v in region)
    return (yield from iter_predict(image, model, tile=tile or model.meta.tile_size, region=region, **options))


def iter_explain(model, image, method: str = "gradcam", *, tile=None, **options):
    """Generator: yields ``(done, total)`` tiles, returns the float32 heat map of
    :func:`~napari_histoseg.explanations.iter_explain`."""
    from napari_histoseg.explanations import iter_explain as explain_tumour

    return (yield from explain_tumour(image, model, method, tile=tile or model.meta.tile_size, **options))


def evaluate(dataset, model=None, **options) -> dict:
    from napari_histoseg.tumour.evaluate import evaluate as evaluate_tumour

    return evaluate_tumour(dataset, None if model in (None, "", BUNDLED) else model, **options)


def fine_tune(dataset, out, init=BUNDLED, *, progress=None, should_stop=None, **settings) -> dict:
    """Train a tumour model from ``init`` (a checkpoint of this task; ``"bundled"``: the bundled
    one; None: from scratch) on training-data folder(s) through the one training loop;
    ``settings`` are fields of :class:`~napari_histoseg.tumour.config.TumourConfig` (others are refused).
    Weights are stored as float16 unless ``half_weights=False``."""
    from napari_histoseg.tumour.train import train

    settings.setdefault("half_weights", True)
    return train(dataset, out, init_checkpoint=None if init in (None, "") else str(init), progress=progress,
                 should_stop=should_stop, log=lambda *_: None, show_bar=False, **settings)

def result_parts(pred) -> tuple[dict, dict]:
    """``(arrays, info)`` of a Prediction, for the wire."""
    arrays = {"probability": np.asarray(pred.probability, np.float16), "mask": pred.mask}
    if pred.tissue is not None:
        arrays["tissue"] = pred.tissue
    return arrays, {"region": [int(v) for v in pred.region]}


def result_from_parts(arrays: dict, info: dict):
    from napari_histoseg.core.tiling import Prediction

    tissue = arrays.get("tissue")
    return Prediction(arrays["probability"].astype(np.float32), arrays["mask"].astype(np.uint8),
                      tuple(int(v) for v in info["region"]), None if tissue is None else tissue.astype(bool))
