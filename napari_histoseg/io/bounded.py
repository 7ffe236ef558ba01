"""Reading files whose headers are not believed: sizes checked before anything is decoded.

* :func:`image_shape`: (height, width) of a PNG/JPEG/TIFF from its header alone (the largest
  level of a pyramid), without decoding pixels.
* :func:`read_plane`: a 2-D (or (H, W, C)) array of a PNG/TIFF mask, seeds or region image,
  refused with :class:`~napari_histoseg.io.checks.InputError` when its header is over the
  pixel budget, and with :class:`~napari_histoseg.io.validate.ImageFormatError` when it is not
  an image (a text file, a truncated TIFF).
* :func:`load_npy` / :func:`load_npz`: NumPy arrays from a file or bytes with the declared shape
  checked against a budget *before* any data is read or decompressed, no pickles, and exactly
  the declared number of bytes read (an NPZ of 1.5 MB cannot inflate to 1.5 GB unasked).
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from napari_histoseg.io.checks import InputError, check_pixels, max_pixels
from napari_histoseg.io.validate import ImageFormatError

__all__ = ["image_shape", "read_plane", "load_npy", "load_npz", "MAX_NPZ_MEMBERS"]

_TIFF = (".tif", ".tiff", ".svs")
MAX_NPZ_MEMBERS = 64


def image_shape(path) -> tuple[int, int]:
    """``(height, width)`` that the header of the image at ``path`` declares (level 0).

    Raises FileNotFoundError, or :class:`ImageFormatError` when the file is not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    if path.suffix.lower() in _TIFF:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise ImageFormatError(f"'{path}' contains no image")
                series = tif.series[0]
                axes, shape = series.axes, tuple(series.shape)
        except ImageFormatError:
            raise
        except Exception as exc:  # TiffFileError, struct.error, OSError, ValueError ...
            raise ImageFormatError(f"Cannot read '{path}' as a TIFF file ({type(exc).__name__}: {exc})") from None
        if "Y" in axes and "X" in axes:
            return int(shape[axes.index("Y")]), int(shape[axes.index("X")])
        return int(shape[0]), int(shape[1] if len(shape) > 1 else 1)
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            w, h = im.size
    except Image.DecompressionBombError as exc:
        raise InputError(f"'{path}' is too large to read whole ({exc})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageFormatError(f"Cannot read '{path}' as an image ({type(exc).__name__}: {exc})") from None
    return int(h), int(w)


def read_plane(path, what: str = "the mask", *, budget: int | None = None) -> np.ndarray:
    """The pixels of a mask-like image (PNG/TIFF), the header checked against the pixel budget
    first. Returns the array as stored (2-D, or (H, W, C) for colour files)."""
    path = Path(path)
    h, w = image_shape(path)
    check_pixels((h, w), f"{what} {path.name}", budget=budget,
                 hint="save it at a lower pyramid level or crop it to the region")
    try:
        if path.suffix.lower() in _TIFF:
            import tifffile

            return np.asarray(tifffile.imread(path))
        from PIL import Image

        old = Image.MAX_IMAGE_PIXELS
        with Image.open(path) as im:   # our budget, checked above, replaces Pillow's bomb limit
            Image.MAX_IMAGE_PIXELS = None
            try:
                im.load()
            finally:
                Image.MAX_IMAGE_PIXELS = old
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode not in ("1", "L", "LA", "RGB", "RGBA", "I", "I;16", "I;16B", "F"):
                im = im.convert("RGB")
            return np.asarray(im)
    except (InputError, MemoryError):
        raise
    except Exception as exc:  # truncated zlib/deflate data, a broken PNG chunk ...
        raise ImageFormatError(f"Cannot decode '{path}' ({type(exc).__name__}: {exc}); "
                               "the file may be truncated") from None


def _npy_header(fp, what: str):
    fmt = np.lib.format
    try:
        version = fmt.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = fmt.read_array_header_1_0(fp)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = fmt.read_array_header_2_0(fp)
        else:  # pragma: no cover - read_magic refuses others
            raise ValueError(f"version {version}")
    except (ValueError, EOFError, SyntaxError, TypeError) as exc:
        raise InputError(f"{what} is not a NumPy .npy array ({exc})") from None
    if dtype.hasobject or dtype.itemsize == 0:
        raise InputError(f"{what} holds Python objects ({dtype}); only numeric arrays are read")
    return tuple(int(s) for s in shape), bool(fortran), dtype


def load_npy(source, what: str = "the array", *, max_items: int | None = None) -> np.ndarray:
    """A ``.npy`` array from a path, bytes or a binary file, refused before reading when its
    header declares more than ``max_items`` values (default: 4 x the pixel budget) or objects."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        fp = io.BytesIO(source)
    elif isinstance(source, (str, Path)):
        with open(source, "rb") as f:
            return load_npy(f, what, max_items=max_items)
    else:
        fp = source
    shape, fortran, dtype = _npy_header(fp, what)
    count = int(np.prod(shape, dtype=object)) if shape else 1
    limit = max_items if max_items is not None else 4 * max_pixels()
    if count > limit:
        raise InputError(f"{what} declares shape {shape} ({count:,} values), over the limit of "
                         f"{limit:,}; send a smaller array or a region")
    nbytes = count * dtype.itemsize
    data = fp.read(nbytes)
    if len(data) != nbytes:
        raise InputError(f"{what} is truncated: its header declares {nbytes:,} bytes, the file holds {len(data):,}")
    array = np.frombuffer(data, dtype=dtype, count=count)
    return array.reshape(shape[::-1]).T if fortran else array.reshape(shape)


def load_npz(source, what: str = "the archive", *, max_items: int | None = None) -> dict:
    """The arrays of an ``.npz`` (path, bytes or binary file) as ``{name: array}``; every member
    checked by :func:`load_npy` and the total number of values kept under ``max_items``."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        source = io.BytesIO(source)
    limit = max_items if max_items is not None else 4 * max_pixels()
    try:
        zf = zipfile.ZipFile(source)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise InputError(f"{what} is not an .npz archive ({exc})") from None
    out = {}
    with zf:
        members = zf.infolist()
        if len(members) > MAX_NPZ_MEMBERS:
            raise InputError(f"{what} holds {len(members)} arrays, more than {MAX_NPZ_MEMBERS}")
        left = limit
        for info in members:
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            try:
                with zf.open(info) as member:
                    arr = load_npy(member, f"{what}: {name!r}", max_items=left)
            except (zipfile.BadZipFile, OSError, EOFError, RuntimeError, NotImplementedError) as exc:
                raise InputError(f"{what}: {name!r} cannot be read ({exc})") from None
            left -= arr.size
            out[name] = arr
    return out
