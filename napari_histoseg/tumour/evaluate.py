"""Evaluate a segmentation model on a training-data folder.

:func:`evaluate` predicts every tile of a split (with the tiled engine
:func:`napari_histoseg.core.tiling.predict`, or whole tiles through
``Segmenter.predict`` where the engine is not available), optionally refines the
prediction, and returns per-image and mean metrics (:mod:`napari_histoseg.tumour.metrics`:
Dice, IoU, precision, recall, pixel AUC, boundary F with a tolerance of 5 px by
default). ``histoseg evaluate`` prints them as a table and writes them as JSON.

Example
-------
>>> r = evaluate("../shared/data/camelyon", split="test")            # doctest: +SKIP
>>> r["mean"]["mean_dice"], r["mean"]["mean_boundary_f"]              # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from napari_histoseg.core.scores import DEFAULT_TOLERANCE
from napari_histoseg.io.dataset import load_dataset
from napari_histoseg.training.splits import split_tiles
from napari_histoseg.tumour.metrics import image_metrics, summarize


def _as_segmenter(model):
    """A Segmenter from a Segmenter, a checkpoint path, or None (the bundled model)."""
    from napari_histoseg.models.segmenter import Segmenter

    if model is None:
        return Segmenter.bundled(device="cpu")
    if isinstance(model, (str, Path)):
        return Segmenter.from_checkpoint(model, device="cpu")
    return model


def predict_tile(image: np.ndarray, segmenter, tile: Optional[int] = None, mpp: Optional[float] = None,
                 stain_norm: Optional[str] = None, tta: bool = False) -> np.ndarray:
    """Tumour probability (H, W) of one RGB tile.

    Uses the tiled engine where it is present (blended 512 px tiles, mirror padding, the tile
    resampled from ``mpp`` to the model's scale, optional stain normalisation fitted on the
    tile and flip TTA), else one forward pass of the whole tile (its sides padded by mirroring
    to a multiple of 32).
    """
    try:
        from napari_histoseg.core.tiling import predict
    except ImportError:
        predict = None
    if predict is not None:
        kwargs = {"tile": tile or int(getattr(segmenter.meta, "tile_size", 512) or 512), "mpp": mpp, "tta": tta}
        if stain_norm:
            from napari_histoseg.colour.preprocess import PreprocessConfig, Preprocessor

            try:
                kwargs["preprocess"] = Preprocessor(PreprocessConfig(stain_norm=stain_norm)).fit(image)
            except ValueError:  # too little tissue for a stain estimate: the tile as it is
                pass
        pred = predict(image, segmenter, **kwargs)
        prob = pred.probability
        return prob if prob.ndim == 2 else prob[1]
    h, w = image.shape[:2]
    ph, pw = (-h) % 32, (-w) % 32
    padded = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect") if (ph or pw) else image
    prob = segmenter.predict(padded[None])[0]
    prob = prob[0] if prob.shape[0] == 1 else prob[1]
    return prob[:h, :w]


def _refine(image: np.ndarray, prob: np.ndarray) -> np.ndarray:
    """The paper's label-propagation post-processing of a probability map (no seeds)."""
    from napari_histoseg.refinement import postprocess

    return (np.asarray(postprocess(image, prob)) == 1).astype(np.float32)


def evaluate(
    dataset_dir: str | Path,
    model=None,
    split: str = "test",
    refine: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    threshold: float = 0.5,
    seed: int = 0,
    progress: Optional[Callable[[int, int], None]] = None,
    mpp="auto",
    stain_norm: Optional[str] = None,
    tta: bool = False,
) -> dict:
    """Metrics of ``model`` on the ``split`` tiles of a training-data folder.

    Parameters
    ----------
    dataset_dir : path
        Training-data folder (docs/ARCHITECTURE.md layout).
    model : Segmenter, path or None
        The model; a checkpoint path; None for the bundled default model.
    split : str
        ``"train"``, ``"val"``, ``"test"`` or ``"all"``. Tiles without a ``split`` are
        assigned one by a seeded group split (20 % test, 15 % val).
    refine : bool
        Refine each prediction with label propagation before scoring.
    tolerance : float
        Boundary-F tolerance in pixels.
    threshold : float
        Probability at or above which a pixel counts as tumour.
    mpp : float, None or "auto"
        µm per pixel of the tiles, so that they are resampled to the model's scale: "auto" takes
        each tile's recorded ``mpp``, else the folder's entry in
        :data:`~napari_histoseg.tumour.config.DATA_MPP`; None: the tiles as they are.
    stain_norm : {None, "macenko", "reinhard"}
        Normalise each tile's stains to the reference first.
    tta : bool
        Average over 4 flips.

    Returns
    -------
    dict
        ``{"dataset", "split", "model", "tolerance", "threshold", "refine", "mpp",
        "per_image": [{"id", "dice", "iou", "precision", "recall", "auc",
        "boundary_f", "true_fraction", "predicted_fraction", ...}], "mean": {...,
        "tumour_free_tiles", "tumour_free_over_5pct"}, "seconds"}``. A tumour-free tile
        (no tumour in its truth; "nearly free": under 1 %) "over 5 %" is one the model calls
        more than 5 % tumour.
    """
    t0 = time.time()
    ds = load_dataset(dataset_dir)
    if any(t.get("split") is None for t in ds.tiles):
        ds = split_tiles(ds, val_fraction=0.15, test_fraction=0.2, seed=seed)
    sub = ds if split == "all" else ds.subset(split)
    if len(sub) == 0:
        raise ValueError(f"{dataset_dir}: no tiles in split {split!r}")
    seg = _as_segmenter(model)
    if mpp == "auto":
        from napari_histoseg.tumour.config import DATA_MPP

        fallback = DATA_MPP.get(ds.name) or DATA_MPP.get(Path(dataset_dir).name)
    per_image = []
    for i in range(len(sub)):
        image, mask = sub.load(i)
        tile_mpp = (sub.tiles[i].get("mpp") or fallback) if mpp == "auto" else mpp
        prob = predict_tile(image, seg, mpp=tile_mpp, stain_norm=stain_norm, tta=tta)
        if refine:
            prob = _refine(image, prob)
        m = image_metrics(prob.astype(np.float32), mask, threshold=threshold, tolerance=tolerance,
                          ignore_index=ds.ignore_index)
        valid = mask != ds.ignore_index
        n = max(int(valid.sum()), 1)
        m["true_fraction"] = float((mask[valid] == 1).sum()) / n
        m["predicted_fraction"] = float((prob[valid] >= threshold).sum()) / n
        per_image.append({"id": sub.tiles[i]["id"], "mpp": tile_mpp, **m})
        if progress:
            progress(i + 1, len(sub))
    mean = summarize(per_image)
    free = [r for r in per_image if r["tp"] + r["fn"] == 0]
    mean["tumour_free_tiles"] = len(free)
    mean["tumour_free_over_5pct"] = sum(r["predicted_fraction"] > 0.05 for r in free)
    nearly = [r for r in per_image if r["true_fraction"] < 0.01]   # a few stray pixels of truth
    mean["nearly_free_tiles"] = len(nearly)
    mean["nearly_free_over_5pct"] = sum(r["predicted_fraction"] > 0.05 for r in nearly)
    clean = lambda v: None if isinstance(v, float) and math.isnan(v) else v  # noqa: E731
    return {
        "dataset": str(dataset_dir), "split": split, "model": getattr(seg, "source", str(model)),
        "model_name": getattr(getattr(seg, "meta", None), "name", None),
        "tolerance": tolerance, "threshold": threshold, "refine": refine, "mpp": mpp,
        "model_mpp": getattr(getattr(seg, "meta", None), "mpp", None), "stain_norm": stain_norm, "tta": tta,
        "per_image": [{k: clean(v) for k, v in r.items()} for r in per_image],
        "mean": {k: clean(v) for k, v in mean.items()},
        "seconds": round(time.time() - t0, 2),
    }
