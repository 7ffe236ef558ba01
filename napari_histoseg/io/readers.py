"""File readers behind :func:`napari_histoseg.io.open_image` (internal).

``read_tiff``: TIFF, pyramidal/OME-TIFF, Aperio SVS through tifffile's zarr
store (lazy, tile by tile). ``read_pillow``: PNG/JPEG through Pillow (eager).
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np

from napari_histoseg.io.checks import check_pixels
from napari_histoseg.io.lazy import LazyRGBLevel
from napari_histoseg.io.metadata import aperio_metadata, dpi_mpp, ome_mpp, resolution_mpp
from napari_histoseg.io.slide import _TIFF_SUFFIXES, SUPPORTED_SUFFIXES, Slide, image_suffix
from napari_histoseg.io.validate import ImageFormatError, check_lazy_rgb, ensure_rgb_uint8, integer_in_range

# Float slides: the smallest level is read to find the value range when it
# has at most this many pixels; otherwise [0, 1] is assumed.
_FLOAT_PROBE_PIXELS = 2**22


def _prefixed(path: Path, exc: ImageFormatError) -> ImageFormatError:
    return ImageFormatError(f"'{path}': {exc}")


def _layout(axes: str, shape: tuple) -> tuple[bool, tuple]:
    """Return (channel_first, channels-last view shape) for a series."""
    if len(axes) == 3 and axes[1:] == "YX" and axes[0] in "SC":
        c, h, w = shape
        return True, (h, w, c)
    return False, tuple(shape)


def _float_range(levels_zarr, warnings) -> tuple[float, float]:
    smallest = levels_zarr[-1]
    if int(np.prod(smallest.shape)) <= 4 * _FLOAT_PROBE_PIXELS:
        values = np.asarray(smallest[...])
        if not np.isfinite(values).all():
            raise ImageFormatError("a float image containing NaN or infinite values cannot be an H&E "
                                   "image; save the scan as 8-bit RGB")
        amin, amax = float(values.min()), float(values.max())
        if amin < 0 or amax > 255:
            raise ImageFormatError(f"a float image with values in [{amin:g}, {amax:g}]: expected [0, 1] "
                                   "or [0, 255]; save the scan as 8-bit RGB")
        in_range = (0.0, 1.0) if amax <= 1.0 else (0.0, 255.0)
        warnings.append(f"float values taken as [{in_range[0]:g}, {in_range[1]:g}] (max {amax:g})")
        return in_range
    warnings.append("float slide too large to probe: values assumed in [0, 1]; regions holding NaN, "
                    "infinite or negative values are refused when read")
    return (0.0, 1.0)


def read_tiff(path: Path, suffix: str) -> Slide:
    """Open a TIFF/OME-TIFF/SVS lazily; see :func:`open_image`."""
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
    except Exception as exc:  # TiffFileError, OSError, struct.error, ValueError ...
        raise ImageFormatError(
            f"Cannot read '{path}' as a TIFF/SVS file ({type(exc).__name__}: {exc}). "
            "Is it really a TIFF?"
        ) from exc
    try:
        return _slide_from_tiff(tif, path, suffix)
    except ImageFormatError:
        tif.close()
        raise
    except Exception as exc:
        tif.close()
        raise ImageFormatError(
            f"Cannot read '{path}' ({type(exc).__name__}: {exc})"
        ) from exc


def _slide_from_tiff(tif, path: Path, suffix: str) -> Slide:
    import zarr

    if not tif.series:
        raise ImageFormatError(f"'{path}' contains no image")
    series = tif.series[0]
    channel_first, view_shape = _layout(series.axes, tuple(series.shape))
    try:
        warnings = check_lazy_rgb(SimpleNamespace(shape=view_shape, dtype=series.dtype))
    except ImageFormatError as exc:
        raise _prefixed(path, exc) from None

    stores, raw_levels = [], []
    for i in range(len(series.levels)):
        store = series.aszarr(level=i)
        stores.append(store)
        raw_levels.append(zarr.open(store, mode="r"))

    dtype = np.dtype(series.dtype)
    in_range = None
    if dtype.kind in "ui" and dtype != np.uint8:
        bits = int(getattr(series.keyframe, "bitspersample", dtype.itemsize * 8))
        if dtype.kind == "u" and 8 <= bits < dtype.itemsize * 8:
            in_range = (0, 2**bits - 1)
            warnings.append(f"{bits}-bit samples in {dtype}: rescaled from [0, {2**bits - 1}]")
        else:
            in_range, note = integer_in_range(dtype)
            warnings.append(note)
    elif dtype.kind == "f":
        try:
            in_range = _float_range(raw_levels, warnings)
        except ImageFormatError as exc:
            raise _prefixed(path, exc) from None

    plain = dtype == np.uint8 and not channel_first and view_shape[-1] == 3
    levels = [  # also plain RGB uint8: a damaged tile then says so instead of a codec's traceback
        LazyRGBLevel(z, channel_first=channel_first, in_range=None if plain else in_range)
        for z in raw_levels
    ]

    fmt = "svs" if tif.is_svs else "ome-tiff" if tif.is_ome else "tiff"
    meta = {"format": fmt, "objective_power": None, "mpp_source": None, "series": series.name}
    mpp = None
    if tif.is_svs:
        aperio = aperio_metadata(tif.pages[0].description)
        mpp, meta["objective_power"] = aperio["mpp"], aperio["objective_power"]
        meta["mpp_source"] = "aperio" if mpp else None
        meta["associated_images"] = [s.name for s in tif.series[1:]]
    if mpp is None and tif.is_ome:
        mpp = ome_mpp(tif.ome_metadata or "", 0)
        meta["mpp_source"] = "ome" if mpp else None
    if mpp is None:
        mpp = resolution_mpp(series.keyframe)
        meta["mpp_source"] = "tiff-resolution" if mpp else None

    def closer():
        for store in stores:
            try:
                store.close()
            except Exception:  # pragma: no cover - best effort
                pass
        tif.close()

    return Slide(path, levels, mpp=mpp, metadata=meta, warnings=warnings, closer=closer)


def read_pillow(path: Path, suffix: str) -> Slide:
    """Read a PNG/JPEG eagerly with Pillow; see :func:`open_image`."""
    from PIL import Image, UnidentifiedImageError

    kind = "PNG" if suffix == ".png" else "JPEG"
    warnings: list[str] = []
    try:
        with Image.open(path) as im:
            w, h = im.size   # the header, checked before anything is decoded
            check_pixels((h, w), f"'{path}'", hint="save large scans as tiled (pyramidal) TIFF or SVS, "
                                                   "which are read lazily, region by region")
            im.load()  # decode now so that truncation errors surface here
            fmt, dpi = im.format, im.info.get("dpi")
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                warnings.append(f"converted a {im.mode} image to RGB")
                im = im.convert("RGB")
            array = np.asarray(im)
    except Image.DecompressionBombError as exc:
        raise ImageFormatError(
            f"'{path}' is too large to read whole ({exc}); save large scans as "
            "tiled (pyramidal) TIFF or SVS, which are read lazily."
        ) from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise ImageFormatError(
            f"Cannot read '{path}' as a {kind} image ({type(exc).__name__}: {exc}). "
            "The file may be truncated or not an image."
        ) from exc
    try:
        rgb, more = ensure_rgb_uint8(array)
    except ImageFormatError as exc:
        raise _prefixed(path, exc) from None
    meta = {"format": (fmt or kind).lower(), "objective_power": None, "mpp_source": None}
    mpp = dpi_mpp(dpi) if dpi else None
    if mpp:
        meta["mpp_source"] = "dpi"
    return Slide(path, [rgb], mpp=mpp, metadata=meta, warnings=warnings + more)


def open_image(path) -> Slide:
    """Open an H&E image or whole-slide image.

    Parameters
    ----------
    path : str or Path
        A ``.svs``, ``.tif``/``.tiff`` (also pyramidal and OME-TIFF),
        ``.png``, ``.jpg`` or ``.jpeg`` file.

    Returns
    -------
    slide : Slide
        PNG/JPEG: one in-memory level. TIFF/SVS: lazy levels of the main
        image series (SVS thumbnail, label and macro images are not levels).
        Use as a context manager or call ``close()`` to release the file.

    Raises
    ------
    FileNotFoundError
        If `path` does not exist.
    ImageFormatError
        If the file type is not supported, the file cannot be decoded, or the
        image is not RGB(A) (grayscale, stacks, many channels).

    Examples
    --------
    >>> from napari_histoseg.plugin.samples import sample_path
    >>> with open_image(sample_path("cmu_small_region.svs")) as slide:
    ...     slide.shape, slide.mpp, slide.read_region(0, 0, 0, 64, 64).shape
    ((2967, 2220, 3), 0.499, (64, 64, 3))
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No such image file: '{path}'")
    if path.is_dir():
        raise ImageFormatError(f"'{path}' is a folder, not an image file")
    suffix = image_suffix(path)
    if suffix is None:
        raise ImageFormatError(
            f"Cannot open '{path}': unsupported file type '{path.suffix or path.name}'. "
            f"Supported: {', '.join(SUPPORTED_SUFFIXES)}."
        )
    if suffix in _TIFF_SUFFIXES:
        return read_tiff(path, suffix)
    return read_pillow(path, suffix)
