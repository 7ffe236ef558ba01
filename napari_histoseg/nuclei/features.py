"""Per-nucleus measurements and per-region summaries.

:func:`nucleus_features` measures every label with :func:`skimage.measure.regionprops_table`:
centroid, area, perimeter (µm² and µm when the mpp is known, else px² and px),
eccentricity, solidity and mean haematoxylin optical density (the H channel of
:func:`napari_histoseg.colour.stain.deconvolve`, OD units). :func:`region_summary` counts the nuclei whose centroid
lies in each region (tumour against the rest), their density per mm² of region and
their mean area.

Example
-------
>>> labels = np.zeros((50, 50), np.uint32); labels[10:20, 10:20] = 1
>>> t = nucleus_features(labels, mpp=0.5)
>>> float(t["area_um2"][0])
25.0
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table

from napari_histoseg.colour.stain import haematoxylin

COLUMNS = ["label", "centroid_y", "centroid_x", "area", "perimeter", "eccentricity",
           "solidity", "mean_haematoxylin"]


def nucleus_features(labels: np.ndarray, rgb: np.ndarray | None = None, mpp: float | None = None) -> pd.DataFrame:
    """One row per nucleus of ``labels``.

    Columns: ``label``, ``centroid_y``, ``centroid_x`` (px), ``area_um2`` and
    ``perimeter_um`` (``area_px2``/``perimeter_px`` without ``mpp``), ``eccentricity``,
    ``solidity`` and, given ``rgb``, ``mean_haematoxylin`` (optical density).
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    props = ["label", "centroid", "area", "perimeter", "eccentricity", "solidity"]
    kw = {}
    if rgb is not None:
        props.append("intensity_mean")
        kw["intensity_image"] = haematoxylin(np.asarray(rgb)[..., :3])
    raw = regionprops_table(labels.astype(np.int64, copy=False), properties=props, **kw)
    area_unit, len_unit = ("um2", "um") if mpp else ("px2", "px")
    s = float(mpp) if mpp else 1.0
    out = pd.DataFrame({
        "label": raw["label"].astype(np.int64),
        "centroid_y": raw["centroid-0"], "centroid_x": raw["centroid-1"],
        f"area_{area_unit}": raw["area"] * s * s,
        f"perimeter_{len_unit}": raw["perimeter"] * s,
        "eccentricity": raw["eccentricity"], "solidity": raw["solidity"],
    })
    if rgb is not None:
        out["mean_haematoxylin"] = raw["intensity_mean"]
    return out


def region_summary(table: pd.DataFrame, regions: dict, mpp: float | None = None) -> pd.DataFrame:
    """Count, density per mm² and mean area of the nuclei in each region.

    ``regions`` maps a name to a boolean mask of the image's shape (e.g. ``{"tumour": m,
    "rest": ~m}``); a nucleus belongs to the region holding its centroid. Density and
    region area need ``mpp`` (NaN otherwise).
    """
    rows = []
    area_col = "area_um2" if "area_um2" in table else "area_px2"
    for name, mask in regions.items():
        mask = np.asarray(mask, bool)
        if len(table):
            cy = np.clip(np.round(table["centroid_y"].to_numpy()).astype(int), 0, mask.shape[0] - 1)
            cx = np.clip(np.round(table["centroid_x"].to_numpy()).astype(int), 0, mask.shape[1] - 1)
            inside = mask[cy, cx]
        else:
            inside = np.zeros(0, bool)
        n = int(inside.sum())
        mm2 = mask.sum() * (mpp * 1e-3) ** 2 if mpp else float("nan")
        rows.append({"region": name, "nuclei": n, "region_mm2": mm2,
                     "density_per_mm2": n / mm2 if mpp and mm2 > 0 else float("nan"),
                     f"mean_{area_col}": float(table[area_col][inside].mean()) if n else float("nan")})
    return pd.DataFrame(rows)
