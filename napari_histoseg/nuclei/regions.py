"""Nuclei of one region of an image, measured and summarised against a tumour mask.

What the Nuclei widget shows after the detection ``histoseg nuclei`` runs
(:func:`napari_histoseg.nuclei.infer.detect_nuclei`, here or on a server, or
:func:`~napari_histoseg.nuclei.baseline.detect_nuclei_classical`); a nucleus belongs to the
region that holds its centroid.

Example
-------
>>> labels, _ = detect_nuclei(rgb, mpp=0.25, features=False)     # doctest: +SKIP
>>> out = measure_nuclei(labels, rgb, mpp=0.25, tumour=tumour)   # doctest: +SKIP
>>> out["labels"].max(), out["summary"]                          # doctest: +SKIP
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


def measure_nuclei(labels, rgb, *, mpp: float | None = None, region: np.ndarray | None = None,
                   tumour: np.ndarray | None = None) -> dict:
    """Measure and summarise the nuclei ``labels`` found in ``rgb``.

    ``region``: only nuclei whose centroid lies inside this boolean mask are kept (and
    renumbered 1..N). ``tumour``: a boolean mask; each nucleus is then ``"tumour"`` or
    ``"rest"`` in the table's ``region`` column and in the summary (else ``"all"``).

    Returns ``{"labels": uint32 (H, W) numbered 1..N, "table": one row per nucleus,
    "summary": count, density and mean area per region}``.
    """
    from napari_histoseg.nuclei.infer import check_image

    rgb = check_image(rgb)
    labels = np.array(labels, np.uint32)
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
