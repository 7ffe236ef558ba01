"""Nuclei of one region of an image, measured and summarised against a tumour mask.

The detection is the one ``histoseg nuclei`` runs (:func:`napari_histoseg.nuclei.infer.detect_nuclei`,
or :func:`~napari_histoseg.nuclei.baseline.detect_nuclei_classical`), so the same image and
mpp give the same nuclei here as on the command line; a nucleus belongs to the region that
holds its centroid.

Example
-------
>>> out = nuclei_in_region(rgb, mpp=0.25, tumour=tumour_mask)   # doctest: +SKIP
>>> out["labels"].max(), out["summary"]                         # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from napari_histoseg.nuclei.features import nucleus_features, region_summary


def centroid_inside(table: pd.DataFrame, mask: np.ndarray) -> np.ndarray:
    """Whether each nucleus (row of ``table``) has its centroid inside the boolean ``mask``."""
    cy = np.clip(table["centroid_y"].to_numpy().round().astype(int), 0, mask.shape[0] - 1)
    cx = np.clip(table["centroid_x"].to_numpy().round().astype(int), 0, mask.shape[1] - 1)
    return np.asarray(mask, bool)[cy, cx]


def nuclei_in_region(rgb, *, classical: bool = False, model=None, mpp: float | None = None,
                     score_threshold: float | None = None, region: np.ndarray | None = None,
                     tumour: np.ndarray | None = None, progress=None, should_stop=None) -> dict:
    """Find, measure and summarise the nuclei of ``rgb``.

    ``classical``: the watershed baseline instead of the Mask R-CNN ``model`` (a checkpoint
    path, or None for the bundled one). ``region``: only nuclei whose centroid lies inside
    this boolean mask are kept. ``tumour``: a boolean mask; each nucleus is then ``"tumour"``
    or ``"rest"`` in the table's ``region`` column and in the summary. ``progress`` and
    ``should_stop`` as for :func:`~napari_histoseg.nuclei.infer.detect_nuclei`.

    Returns ``{"labels": uint32 (H, W) numbered 1..N, "table": one row per nucleus,
    "summary": count, density and mean area per region}``.
    """
    from napari_histoseg.nuclei.infer import check_image

    rgb = check_image(rgb)
    if classical:
        from napari_histoseg.nuclei.baseline import detect_nuclei_classical

        labels, _ = detect_nuclei_classical(rgb, mpp=mpp, features=False)
    else:
        from napari_histoseg.nuclei.infer import detect_nuclei

        labels, _ = detect_nuclei(rgb, model, mpp=mpp, score_threshold=score_threshold, features=False,
                                  progress=progress, should_stop=should_stop)
    labels = np.asarray(labels, np.uint32)
    if region is not None:
        table = nucleus_features(labels, None)
        labels[np.isin(labels, table["label"].to_numpy()[~centroid_inside(table, region)])] = 0
        from skimage.segmentation import relabel_sequential

        labels = relabel_sequential(labels)[0].astype(np.uint32)
    table = nucleus_features(labels, rgb, mpp=mpp)
    if tumour is not None:
        regions = {"tumour": tumour, "rest": ~tumour}
        table["region"] = np.where(centroid_inside(table, tumour), "tumour", "rest")
    else:
        regions = {"all": np.ones(labels.shape, bool)}
        table["region"] = "all"
    if region is not None:
        regions = {k: v & region for k, v in regions.items()}
    return {"labels": labels, "table": table, "summary": region_summary(table, regions, mpp)}
