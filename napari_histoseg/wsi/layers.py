"""napari layer data for a whole-slide result (plain tuples: no napari import here).

The OME-Zarr levels are handed to napari lazily as multiscale layers, with the µm scale
and translation written in the store, so they lie on the slide opened with the same
reader (whose scale is its mpp). A store still being written can be opened: unwritten
chunks read as 0, and ``layer.refresh()`` shows blocks as they arrive.
"""

from __future__ import annotations

from pathlib import Path

from napari_histoseg.wsi.omezarr import TISSUE_RGBA, TUMOUR_RGBA, read_result

__all__ = ["result_layer_data", "is_result"]


def is_result(path) -> bool:
    """Whether ``path`` is an OME-Zarr folder written by :mod:`napari_histoseg.wsi`."""
    p = Path(str(path))
    if not (p.is_dir() and p.name.endswith(".zarr")):
        return False
    attrs = p / ".zattrs"
    return attrs.is_file() and '"histoseg"' in attrs.read_text()


def _colors(rgba):
    return {0: [0, 0, 0, 0], 1: [v / 255 for v in rgba], None: [0, 0, 0, 0]}


def result_layer_data(path, translate=(0.0, 0.0)) -> list[tuple]:
    """Layer data tuples: ``tumour probability`` (image, uint8 255 = 1.0), ``tumour`` and
    ``tissue`` (labels), shifted by ``translate`` (the slide layer's own translation)."""
    r = read_result(path)
    meta = {"path": str(path), "histoseg": r["attrs"]}
    units = {"units": (r["units"],) * 2} if r["units"] else {}

    def place(scale, tr):
        return {"scale": tuple(scale), "translate": tuple(t + o for t, o in zip(tr, translate)), **units}

    base = place(r["scale"], r["translate"])
    layers = [(r["probability"], {"name": "tumour probability", "multiscale": True, "colormap": "inferno",
                                  "contrast_limits": (0, 255), "opacity": 0.5, "visible": False,
                                  "metadata": meta, **base}, "image")]
    if r["tumour"] is not None:
        layers.append((r["tumour"], {"name": "tumour", "multiscale": True, "opacity": 0.5, "metadata": meta,
                                     "colormap": _colors(TUMOUR_RGBA), **base}, "labels"))
    if r["tissue"] is not None:
        layers.append((r["tissue"], {"name": "tissue", "opacity": 0.25, "metadata": meta, "visible": False,
                                     "colormap": _colors(TISSUE_RGBA),
                                     **place(r["tissue_scale"], r["tissue_translate"])}, "labels"))
    return layers
