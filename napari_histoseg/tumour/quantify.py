"""Tumour area, tumour fraction of the tissue, tumour/stroma ratio and tumour regions.

Pixels are counted on the mask as given; ``mpp`` (microns per pixel of that mask)
turns counts into µm² (one pixel is ``mpp ** 2`` µm²). Without ``mpp`` the areas stay
in pixels and the result says so in ``warnings``. The tissue is
:func:`napari_histoseg.colour.stain.tissue_mask` of the image (optical density at least
``beta`` in every channel) unless a tissue mask is given; tumour pixels always count as
tissue. Stroma here is simply tissue that is not tumour. Pixels of ``ignore_index``
count for nothing.

Regions follow :mod:`napari_histoseg.core.regions`, the same convention as the GeoJSON export:
4-connected, and regions (and holes) smaller than a minimum size (50 µm² with an mpp,
16 px without; 0 keeps all) are left out of the areas and the region list. The mask
given is not changed; ``dropped_regions`` / ``dropped_px`` say what was left out.

Example
-------
>>> r = quantify(mask, image=rgb, mpp=0.5)     # doctest: +SKIP
>>> r["tumour_area_um2"], r["tumour_fraction"]  # doctest: +SKIP
>>> to_csv(r, "report.csv")                     # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
from skimage import measure

from napari_histoseg.core.regions import CONNECTIVITY, clean_regions
from napari_histoseg.core.regions import min_region_px as _min_px
from napari_histoseg.io.atomic import atomic_write_text
from napari_histoseg.io.checks import check_float
from napari_histoseg.io.masks import check_mask

__all__ = ["quantify", "rows", "to_csv"]

NO_MPP = "mpp unknown: areas are in pixels, not µm²"


def _area(px: int, mpp):
    return None if mpp is None else float(px) * mpp * mpp


def quantify(mask, image=None, mpp=None, tissue=None, *, label: int = 1, ignore_index: int = 255,
             min_region_um2: float | None = None, min_region_px: int | None = None) -> dict:
    """Measure the tumour in a mask.

    Parameters
    ----------
    mask : (H, W) array
        Class codes: ``label`` is tumour, ``ignore_index`` unknown, others not tumour.
    image : (H, W, 3) uint8, optional
        The H&E image, for the tissue mask (ignored when ``tissue`` is given).
    mpp : float, optional
        Microns per pixel of ``mask``.
    tissue : (H, W) bool, optional
        Where there is tissue. Without it and without ``image`` the tissue figures are None.
    label : int
        Mask code of tumour.
    ignore_index : int
        Mask code of pixels that count for nothing.
    min_region_um2, min_region_px : float, int, optional
        Tumour regions smaller than this are left out of the areas and ``regions`` and
        smaller holes in them are filled (:func:`napari_histoseg.core.regions.min_region_px`:
        default 50 µm² with ``mpp``, 16 px without; 0 keeps all). Regions are
        4-connected, as in the GeoJSON export, so both count the same regions.

    Returns
    -------
    result : dict
        ``mpp``, ``unit`` ("µm²" or "px"), ``tumour_px``, ``tumour_area_um2``,
        ``tumour_area_mm2``, ``tissue_px``, ``tissue_area_um2``, ``tumour_fraction``
        (of the tissue), ``stroma_px``, ``stroma_area_um2``, ``tumour_stroma_ratio``,
        ``n_regions``, ``regions`` (largest first: ``id``, ``area_px``, ``area_um2``,
        ``centroid_x``, ``centroid_y``, ``bbox`` as ``[x0, y0, x1, y1]``),
        ``min_region_px``, ``dropped_regions`` and ``dropped_px`` (specks left out),
        ``filled_holes`` and ``warnings`` (a list of strings). µm² figures are None
        without ``mpp``.

    Examples
    --------
    >>> m = np.zeros((100, 100), np.uint8); m[:40, :50] = 1; m[80, 80] = 1   # a region, a speck
    >>> r = quantify(m, mpp=0.5, tissue=np.ones((100, 100), bool))
    >>> r["tumour_area_um2"], r["tumour_fraction"], r["n_regions"], r["dropped_regions"]
    (500.0, 0.2, 1, 1)
    """
    mask = check_mask(mask, "mask")   # 2-D integer class codes 0..255: not float, not a stack
    if mpp is not None:
        mpp = check_float(mpp, "mpp", lo=0, lo_open=True, hi=1000)
    warnings = [] if mpp is not None else [NO_MPP]
    counts = np.bincount(mask.ravel(), minlength=256)   # one pass: every check below reads it
    other = sorted(set(np.flatnonzero(counts).tolist()) - {0, label, ignore_index})
    if other:
        warnings.append(f"mask codes {other[:10]} counted as not tumour (tumour is {label}, unknown {ignore_index})")
    def n(code):
        return int(counts[code]) if 0 <= code < counts.size else 0

    if n(label) == 0 and n(ignore_index) > 0:
        warnings.append(f"no pixel is tumour ({label}) and {n(ignore_index)} px are unknown "
                        f"({ignore_index}): a black-and-white mask with {ignore_index} for tumour? Save tumour as {label}")
    valid = mask != ignore_index
    cleaned = clean_regions(mask == label, _min_px(mpp, min_region_um2, min_region_px))
    tumour = cleaned.mask & valid
    n_tumour = int(tumour.sum())
    if cleaned.dropped_regions:
        warnings.append(f"{cleaned.dropped_regions} tumour speck(s) under {cleaned.min_px} px "
                        f"({cleaned.dropped_px} px) left out")

    if tissue is None and image is not None:
        from napari_histoseg.colour.stain import tissue_mask

        image = np.asarray(image)
        if image.shape[:2] != mask.shape:
            raise ValueError(f"image is {image.shape[:2]} but mask is {mask.shape}")
        tissue = tissue_mask(image[..., :3])
    if tissue is not None:
        tissue = np.asarray(tissue, bool)
        if tissue.shape != mask.shape:
            raise ValueError(f"tissue is {tissue.shape} but mask is {mask.shape}")
        tissue = (tissue | tumour) & valid
        n_tissue = int(tissue.sum())
        n_stroma = n_tissue - n_tumour
        fraction = n_tumour / n_tissue if n_tissue else None
        ratio = n_tumour / n_stroma if n_stroma else None
        if not n_tissue:
            warnings.append("no tissue found: the tumour fraction is undefined")
    else:
        n_tissue = n_stroma = fraction = ratio = None
        warnings.append("no image or tissue mask: tissue, fraction and stroma figures are not computed")

    lab = measure.label(tumour, connectivity=CONNECTIVITY)
    regions = []
    for reg in measure.regionprops(lab):
        cy, cx = reg.centroid
        r0, c0, r1, c1 = reg.bbox
        regions.append({"area_px": int(reg.area), "area_um2": _area(int(reg.area), mpp),
                        "centroid_x": float(cx), "centroid_y": float(cy), "bbox": [c0, r0, c1, r1]})
    regions.sort(key=lambda r: -r["area_px"])
    for i, r in enumerate(regions, 1):
        r["id"] = i

    area = _area(n_tumour, mpp)
    return {
        "mpp": mpp, "unit": "µm²" if mpp is not None else "px",
        "tumour_px": n_tumour, "tumour_area_um2": area,
        "tumour_area_mm2": None if area is None else area / 1e6,
        "tissue_px": n_tissue, "tissue_area_um2": None if n_tissue is None else _area(n_tissue, mpp),
        "tumour_fraction": fraction,
        "stroma_px": n_stroma, "stroma_area_um2": None if n_stroma is None else _area(n_stroma, mpp),
        "tumour_stroma_ratio": ratio,
        "n_regions": len(regions), "regions": regions, "min_region_px": cleaned.min_px,
        "dropped_regions": cleaned.dropped_regions, "dropped_px": cleaned.dropped_px,
        "filled_holes": cleaned.filled_holes, "warnings": warnings,
    }


def rows(result: dict, regions: bool = True) -> list[tuple[str, object, str]]:
    """The result as ``(measure, value, unit)`` rows for a table (areas in µm² when
    ``mpp`` is known, else in pixels), then one row per region when ``regions``."""
    um = result["mpp"] is not None
    pick = (lambda k: result[f"{k}_area_um2"]) if um else (lambda k: result[f"{k}_px"])  # noqa: E731
    unit = "µm²" if um else "px"
    out = [("tumour area", pick("tumour"), unit)]
    if um:
        out.append(("tumour area", result["tumour_area_mm2"], "mm²"))
    out += [("tissue area", pick("tissue"), unit), ("stroma area", pick("stroma"), unit),
            ("tumour fraction of tissue", result["tumour_fraction"], ""),
            ("tumour/stroma ratio", result["tumour_stroma_ratio"], ""),
            ("tumour regions", result["n_regions"], "")]
    if "dropped_regions" in result:
        out += [("specks left out", result["dropped_regions"], f"under {result['min_region_px']} px")]
    out += [("mpp", result["mpp"], "µm/px")]
    if regions:
        out += [(f"region {r['id']} area", r["area_um2"] if um else r["area_px"], unit)
                for r in result["regions"]]
    out += [("warning", w, "") for w in result["warnings"]]
    return out


def to_csv(result: dict, path, regions: bool = True) -> Path:
    """Write :func:`rows` as a CSV with the header ``measure,value,unit`` (UTF-8).
    Missing figures are empty cells. Returns the path."""
    path = Path(path)
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(["measure", "value", "unit"])
    for name, value, unit in rows(result, regions):
        w.writerow([name, "" if value is None else value, unit])
    return atomic_write_text(path, buf.getvalue())   # whole or not at all
