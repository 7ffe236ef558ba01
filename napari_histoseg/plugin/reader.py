"""npe2 reader contribution: open H&E images and slides as napari image layers.

The manifest points at :func:`get_reader`. Nothing here imports napari: the
reader returns plain ``(data, add_kwargs, "image")`` layer-data tuples.

Layer data
----------
* TIFF / OME-TIFF / SVS: the list of lazy levels with ``multiscale=True``,
  also when there is only one level. napari 0.9 shows a one-level multiscale
  layer correctly (RGB, contrast limits 0-255) and then only fetches the part
  of level 0 in view when zoomed in, whereas a plain layer slices the whole
  plane into memory. (napari still reads the smallest level whole for the
  layer thumbnail, which for a one-level file is level 0.)
* PNG / JPEG: the in-memory RGB uint8 array, ``multiscale=False``.

``scale`` is (mpp, mpp) with ``units`` µm when the pixel size is known,
otherwise (1, 1) in pixels.

A ``*.zarr`` folder written by ``histoseg segment-slides`` (:mod:`napari_histoseg.wsi`)
opens as its result layers (tumour probability, tumour, tissue), on the slide's µm grid.

What is claimed
---------------
Only what this reader opens better than napari's built-in reader (and napari-ome-zarr):
Aperio SVS, pyramidal TIFF / OME-TIFF and very large TIFFs (lazy levels, µm scale), and
the OME-Zarr results of :mod:`napari_histoseg.wsi` (marked ``"histoseg"`` in their
attributes). :func:`get_reader` returns None for a plain TIFF, PNG, JPEG or any other
OME-Zarr, so napari opens those itself. The check reads the TIFF header only.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from napari_histoseg.io.readers import open_image
from napari_histoseg.io.slide import Slide, image_suffix

__all__ = ["get_reader", "read_image_layers", "slide_layer_data", "is_slide_tiff"]

# A single-level TIFF at least this many pixels on a side is claimed too: napari's
# built-in reader would load it into memory whole.
LARGE_TIFF_PX = 10_000


def slide_layer_data(slide: Slide, name: str | None = None, **extra_kwargs) -> tuple:
    """Build a napari image layer-data tuple from an open :class:`Slide`.

    Parameters
    ----------
    slide : Slide
        An open slide; lazy levels keep reading from its file, so do not
        close it while the layer exists.
    name : str, optional
        Layer name; defaults to the file stem (``"scan"`` for
        ``scan.ome.tif``).
    **extra_kwargs
        Merged into the layer's add kwargs (e.g. ``metadata`` entries go into
        ``add_kwargs["metadata"]``).

    Returns
    -------
    layer_data : (data, add_kwargs, "image")
        ``data`` is the list of levels (``multiscale=True``) for lazy slides,
        or the RGB uint8 array for in-memory images. ``add_kwargs`` holds
        ``name``, ``rgb=True``, ``multiscale``, ``scale``, ``units`` (when the
        mpp is known) and ``metadata={"path", "mpp", "level_downsamples",
        "objective_power", "format", "warnings"}``.

    Examples
    --------
    >>> import numpy as np
    >>> data, kwargs, kind = slide_layer_data(Slide.from_array(np.zeros((8, 8, 3), np.uint8)))
    >>> kind, kwargs["rgb"], kwargs["multiscale"], kwargs["scale"]
    ('image', True, False, (1.0, 1.0))
    """
    lazy = not all(isinstance(level, np.ndarray) for level in slide.levels)
    multiscale = lazy or slide.is_multiscale
    data = list(slide.levels) if multiscale else slide.levels[0]
    if name is None:
        name = _stem(slide.path) if slide.path is not None else "image"
    metadata = {
        "path": None if slide.path is None else str(slide.path),
        "mpp": slide.mpp,
        "level_downsamples": slide.level_downsamples,
        "objective_power": slide.metadata.get("objective_power"),
        "format": slide.metadata.get("format"),
        "warnings": list(slide.warnings),
    }
    metadata.update(extra_kwargs.pop("metadata", {}))
    kwargs = {"name": name, "rgb": True, "multiscale": multiscale, "metadata": metadata}
    if slide.mpp:
        kwargs["scale"] = (slide.mpp, slide.mpp)
        kwargs["units"] = ("µm", "µm")
    else:
        kwargs["scale"] = (1.0, 1.0)
    kwargs.update(extra_kwargs)
    return (data, kwargs, "image")


def _stem(path: Path) -> str:
    suffix = image_suffix(path)
    name = Path(path).name
    return name[: -len(suffix)] if suffix else Path(path).stem


def read_image_layers(path) -> list[tuple]:
    """Open `path` (or a list holding one path) as napari layer data.

    Parameters
    ----------
    path : str or Path or list of one of them

    Returns
    -------
    layers : list of one (data, add_kwargs, "image") tuple
        See :func:`slide_layer_data`.

    Raises
    ------
    FileNotFoundError, ImageFormatError
        As :func:`~napari_histoseg.io.open_image`; the message names the file
        and says what is wrong (e.g. a grayscale image).
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            raise ValueError(f"napari-histoseg opens one file at a time, got {len(path)}")
        path = path[0]
    return [slide_layer_data(open_image(path))]


def _result_reader(path):
    """The reader of a whole-slide result (OME-Zarr written by napari_histoseg.wsi), or None."""
    from napari_histoseg.wsi.layers import is_result

    if not is_result(str(path).rstrip("/")):
        return None
    return _read_result


def _read_result(path) -> list[tuple]:
    from napari_histoseg.wsi.layers import result_layer_data

    return result_layer_data(str(path[0] if isinstance(path, (list, tuple)) else path).rstrip("/"))


def is_slide_tiff(path) -> bool:
    """Whether the TIFF at ``path`` is a slide: pyramidal (SubIFDs or reduced-resolution
    pages) or at least :data:`LARGE_TIFF_PX` pixels on a side. Reads the header only;
    False for a file that is missing or not a TIFF.

    >>> is_slide_tiff("missing.tif")
    False
    """
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                return False
            series = tif.series[0]
            if len(series.levels) > 1:
                return True
            page = series.keyframe
            return max(page.imagelength, page.imagewidth) >= LARGE_TIFF_PX
    except Exception:  # noqa: BLE001 - not readable as a TIFF: napari's reader says why
        return False


def get_reader(path):
    """npe2 reader hook: a reader function if `path` is something we open better than napari.

    Parameters
    ----------
    path : str or Path or list of str
        What napari asks about. A list is accepted when it holds one path.

    Returns
    -------
    reader : callable or None
        :func:`read_image_layers` for ``.svs`` and for a pyramidal (or very large)
        ``.tif``/``.tiff``/``.ome.tif(f)``; the result layers for an OME-Zarr written by
        ``histoseg segment-slides``; None otherwise (a plain TIFF, PNG, JPEG, another
        OME-Zarr, anything else), so napari tries its other readers. Only a TIFF's
        header or a Zarr's ``.zattrs`` is read here.

    Examples
    --------
    >>> get_reader("slide.svs") is read_image_layers, get_reader("notes.txt"), get_reader("photo.png")
    (True, None, None)
    """
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            return None
        path = path[0]
    if not isinstance(path, (str, os.PathLike)):
        return None
    if str(path).rstrip("/").endswith(".zarr"):
        return _result_reader(path)
    suffix = image_suffix(path)
    if suffix == ".svs":
        return read_image_layers
    if suffix in (".tif", ".tiff", ".ome.tif", ".ome.tiff") and is_slide_tiff(path):
        return read_image_layers
    return None
