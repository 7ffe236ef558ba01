"""Check that an image is RGB uint8 H&E, and convert what can be converted.

napari-histoseg works on RGB uint8 images. This module turns the common
near-misses (RGBA, 16-bit, float) into RGB uint8 with a warning string, and
refuses with :class:`ImageFormatError` what cannot be an H&E image (grayscale,
two channels, many channels, stacks, empty arrays).

No napari or Qt imports here.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "ImageFormatError",
    "ensure_rgb_uint8",
    "check_lazy_rgb",
    "to_uint8",
]

_NEED = "napari-histoseg needs an RGB H&E image (height, width, 3)"


class ImageFormatError(ValueError):
    """The file or array is not an image napari-histoseg can use.

    Raised for unreadable or unsupported files and for arrays that are not
    RGB(A) images (grayscale, two channels, more than four channels, stacks,
    empty arrays). The message says what was found and what is needed.
    """


def _describe_shape_problem(shape: tuple) -> str | None:
    """Return an error message if `shape` is not (H, W, 3|4), else None."""
    ndim = len(shape)
    if any(s == 0 for s in shape) or ndim == 0:
        return f"{_NEED}; got an empty array of shape {tuple(shape)}."
    if ndim == 1:
        return f"{_NEED}; got a 1-D array of shape {tuple(shape)}."
    if ndim == 2:
        return (
            f"{_NEED}; got a single-channel (grayscale) image of shape "
            f"{tuple(shape)}. Save the scan as RGB colour."
        )
    if ndim == 3:
        c = shape[-1]
        if c in (3, 4):
            return None
        if c == 1:
            return (
                f"{_NEED}; got a single-channel (grayscale) image of shape "
                f"{tuple(shape)}. Save the scan as RGB colour."
            )
        if shape[0] in (3, 4):
            return (
                f"{_NEED}; got shape {tuple(shape)}, which looks channel-first "
                f"(channels, height, width) or a stack of {shape[0]} planes. "
                "If it is channel-first RGB, move the channel axis last, e.g. "
                "np.moveaxis(image, 0, -1)."
            )
        if c == 2:
            return (
                f"{_NEED}; got a two-channel image of shape {tuple(shape)} "
                "(grayscale with alpha?)."
            )
        if 4 < c <= 16:
            return (
                f"{_NEED}; got {c} channels in shape {tuple(shape)} "
                "(a multichannel/fluorescence image?)."
            )
        return (
            f"{_NEED}; got a 3-D stack of shape {tuple(shape)}. Open a single "
            "RGB plane instead."
        )
    return (
        f"{_NEED}; got a {ndim}-D array of shape {tuple(shape)} (a stack, "
        "time series or multichannel volume). Open a single RGB plane instead."
    )


def _check_dtype(dtype) -> None:
    dtype = np.dtype(dtype)
    if dtype == bool or dtype.kind not in "uif":  # noqa: E721 (a numpy dtype, not a type)
        raise ImageFormatError(
            f"{_NEED} of integers or floats; got dtype {dtype}."
        )


def to_uint8(array, in_range: tuple[float, float]) -> np.ndarray:
    """Rescale `array` linearly from `in_range` to uint8 [0, 255].

    Values outside `in_range` are clipped. Deterministic (does not look at
    the data), so tiles of one slide converted separately agree.

    Parameters
    ----------
    array : array_like
        Numeric array of any shape.
    in_range : (float, float)
        Input values mapped to 0 and 255.

    Returns
    -------
    out : ndarray of uint8
        New array of the same shape.

    Examples
    --------
    >>> to_uint8(np.array([0, 2048, 4095], dtype=np.uint16), (0, 4095))
    array([  0, 128, 255], dtype=uint8)
    """
    lo, hi = float(in_range[0]), float(in_range[1])
    a = np.asarray(array)
    if a.dtype == np.uint8 and (lo, hi) == (0.0, 255.0):
        return a.copy()
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = (a.astype(np.float32) - lo) * scale
    np.clip(out, 0, 255, out=out)
    return np.rint(out, out=out).astype(np.uint8)


def integer_in_range(dtype, data_max=None, data_min=None):
    """Choose the input range for rescaling integer data to 8 bit.

    Parameters
    ----------
    dtype : numpy dtype
        Integer dtype of the data.
    data_max, data_min : int, optional
        Observed extremes, if known. When the data clearly uses fewer bits
        than the dtype (max below 1/16 of the dtype's maximum), the range of
        the bit depth actually used is returned (e.g. 12 bits -> 4095).

    Returns
    -------
    in_range : (int, int)
    note : str
        Human-readable explanation for a warning.
    """
    info = np.iinfo(dtype)
    lo = 0 if (data_min is None or data_min >= 0 or info.min == 0) else info.min
    hi = info.max
    note = f"rescaled from the {dtype} range [{lo}, {hi}]"
    if data_max is not None and lo == 0 and data_max < (info.max + 1) // 16:
        nbits = max(8, int(data_max).bit_length())
        hi = 2**nbits - 1
        note = (
            f"the values use only {nbits} of {info.bits} bits "
            f"(max {int(data_max)}); rescaled from [0, {hi}]"
        )
    return (lo, hi), note


def ensure_rgb_uint8(array) -> tuple[np.ndarray, list[str]]:
    """Return `array` as an RGB uint8 image, with warnings for conversions.

    Parameters
    ----------
    array : array_like, shape (H, W, 3) or (H, W, 4)
        An RGB or RGBA image of any integer or float dtype.

    Returns
    -------
    rgb : ndarray of uint8, shape (H, W, 3)
        The image. When `array` already is an RGB uint8 ndarray it is
        returned as is (not copied); otherwise a new array. The input is
        never modified.
    warnings : list of str
        One message per conversion done (alpha dropped, bit depth reduced,
        float converted); empty when nothing was changed.

    Raises
    ------
    ImageFormatError
        For grayscale (2-D or one channel), two channels, more than four
        channels, 3-D or higher stacks, empty arrays, non-numeric dtypes,
        NaN/inf floats, and floats outside [0, 1] and [0, 255].

    Notes
    -----
    Integer data other than uint8 are rescaled by the dtype's range, or by
    the bit depth the data actually use when that is clearly less (12-bit
    data in a uint16 container are rescaled from [0, 4095]). Floats with
    maximum <= 1 are taken as [0, 1], otherwise as [0, 255].

    Examples
    --------
    >>> rgba = np.zeros((4, 5, 4), dtype=np.uint8)
    >>> rgb, warnings = ensure_rgb_uint8(rgba)
    >>> rgb.shape, warnings[0].startswith("dropped the alpha")
    ((4, 5, 3), True)
    """
    a = np.asarray(array)
    problem = _describe_shape_problem(a.shape)
    if problem:
        raise ImageFormatError(problem)
    _check_dtype(a.dtype)
    warnings: list[str] = []
    if a.shape[-1] == 4:
        a = a[..., :3]
        warnings.append("dropped the alpha channel of an RGBA image")
    if a.dtype == np.uint8:
        return a, warnings
    if a.dtype.kind in "ui":
        (lo, hi), note = integer_in_range(a.dtype, int(a.max()), int(a.min()))
        warnings.append(f"converted a {a.dtype} image to 8 bit: {note}")
        return to_uint8(a, (lo, hi)), warnings
    # float
    if not np.all(np.isfinite(a)):
        raise ImageFormatError(
            f"{_NEED}; got a float image containing NaN or infinite values."
        )
    amin, amax = float(a.min()), float(a.max())
    if amin < 0 or amax > 255:
        raise ImageFormatError(
            f"{_NEED}; got a float image with values in [{amin:g}, {amax:g}], "
            "expected [0, 1] or [0, 255]."
        )
    in_range = (0.0, 1.0) if amax <= 1.0 else (0.0, 255.0)
    warnings.append(
        f"converted a {a.dtype} image with values in [{amin:g}, {amax:g}] to "
        f"uint8 (taken as [{in_range[0]:g}, {in_range[1]:g}])"
    )
    return to_uint8(a, in_range), warnings


def check_lazy_rgb(level) -> list[str]:
    """Validate the shape and dtype of a lazy image level without reading it.

    Parameters
    ----------
    level : array-like
        Any object with ``shape`` and ``dtype`` (zarr array, dask array,
        memmap), channels last.

    Returns
    -------
    warnings : list of str
        Conversions that reading will need (alpha to drop, bit depth to
        reduce, float to convert); empty for RGB uint8.

    Raises
    ------
    ImageFormatError
        When the shape cannot be an RGB(A) image or the dtype is not numeric.

    Examples
    --------
    >>> import zarr
    >>> z = zarr.zeros((100, 80, 3), dtype="uint16")
    >>> check_lazy_rgb(z)
    ['16-bit image (uint16): regions are rescaled to 8 bit when read']
    """
    shape = tuple(level.shape)
    problem = _describe_shape_problem(shape)
    if problem:
        raise ImageFormatError(problem)
    _check_dtype(level.dtype)
    dtype = np.dtype(level.dtype)
    warnings = []
    if shape[-1] == 4:
        warnings.append("RGBA image: the alpha channel is dropped when read")
    if dtype.kind in "ui" and dtype != np.uint8:
        warnings.append(
            f"{dtype.itemsize * 8}-bit image ({dtype}): regions are rescaled to "
            "8 bit when read"
        )
    elif dtype.kind == "f":
        warnings.append(f"float image ({dtype}): regions are converted to uint8 when read")
    return warnings
