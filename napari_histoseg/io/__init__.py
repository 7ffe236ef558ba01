"""Image and slide I/O: PNG/JPEG, TIFF, pyramidal OME-TIFF and Aperio SVS.

Everything here is plain Python on numpy/tifffile/zarr; no napari or Qt.

>>> from napari_histoseg.io import open_image
>>> with open_image("slide.svs") as slide:            # doctest: +SKIP
...     tile = slide.read_region(0, 1000, 2000, 512, 512)
...     overview = slide.thumbnail(1024)
"""

from napari_histoseg.io.metadata import MPP_RANGE
from napari_histoseg.io.readers import open_image
from napari_histoseg.io.slide import SUPPORTED_SUFFIXES, Slide, image_suffix
from napari_histoseg.io.validate import ImageFormatError, check_lazy_rgb, ensure_rgb_uint8, to_uint8

__all__ = [
    "open_image",
    "Slide",
    "SUPPORTED_SUFFIXES",
    "image_suffix",
    "ImageFormatError",
    "ensure_rgb_uint8",
    "check_lazy_rgb",
    "to_uint8",
    "MPP_RANGE",
]
