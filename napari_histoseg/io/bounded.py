"""Reading files whose headers are not believed: sizes checked before anything is decoded.

* :func:`image_shape`: (height, width) of a PNG/JPEG/TIFF from its header alone (the largest
  level of a pyramid), without decoding pixels.
* :func:`read_plane`: a 2-D (or (H, W, C)) array of a PNG/TIFF mask, seeds or region image,
  refused with :class:`~napari_histoseg.io.checks.InputError` when its header is over the
  pixel budget, and with :class:`~napari_histoseg.io.validate.ImageFormatError` when it is not
  an image (a text file, a truncated TIFF).

NumPy ``.npy``/``.npz`` bodies are read, with the same distrust of their headers, by
:func:`napari_histoseg.backends.wire.decode` (the only place the project reads them).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_histoseg.io.checks import InputError, check_pixels
from napari_histoseg.io.validate import ImageFormatError

__all__ = ["image_shape", "read_plane"]

_TIFF = (".tif", ".tiff", ".svs")


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
