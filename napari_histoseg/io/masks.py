"""Reading and writing masks and regions (PNG or TIFF) for the command line.

Masks are read with their header checked against the pixel budget first
(:func:`napari_histoseg.io.bounded.read_plane`), and written whole or not at all
(:func:`napari_histoseg.io.atomic.atomic_path`). :func:`check_mask` refuses what cannot be a
mask of class codes (float, values over 255, stacks, colour images, undeclared codes).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_histoseg.io.atomic import atomic_path
from napari_histoseg.io.bounded import read_plane
from napari_histoseg.io.checks import InputError

__all__ = ["write_mask", "read_mask", "read_region", "check_mask", "MASK_SUFFIXES"]

MASK_SUFFIXES = (".png", ".tif", ".tiff")


def write_mask(path: Path, mask):
    """uint8 class codes (0 not tumour, 1 tumour) as PNG or compressed TIFF, written to a
    temporary name and renamed into place (never half a file)."""
    path = Path(path)
    if path.suffix.lower() not in MASK_SUFFIXES:
        raise InputError(f"cannot write {path.name}: use .png, .tif or .tiff")
    with atomic_path(path) as tmp:
        if path.suffix.lower() in {".tif", ".tiff"}:
            import tifffile

            tifffile.imwrite(tmp, mask, compression="zlib")
        else:
            from skimage.io import imsave

            imsave(tmp, mask, check_contrast=False)
    return path


def read_mask(path, what: str = "mask"):
    """A mask image (PNG, TIFF) as a 2-D array of its codes.

    A grey mask saved as RGB(A) (all colour channels equal) gives its first channel; a colour
    image, a stack of planes or a file that is not an image is refused with a message, and a
    header over the pixel budget before anything is decoded.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    m = read_plane(path, what)
    if m.ndim == 3 and m.shape[-1] in (2, 3, 4):
        colour = m[..., :3] if m.shape[-1] >= 3 else m[..., :1]
        if not (colour == colour[..., :1]).all():
            raise InputError(f"{what} {path.name} is a colour image ({m.shape[1]} x {m.shape[0]} px, "
                             f"{m.shape[-1]} channels); a mask holds one class code per pixel")
        m = m[..., 0]
    if m.ndim != 2:
        raise InputError(f"{what} {path.name} has shape {m.shape}: a mask is one 2-D plane of class codes "
                         "(a stack or volume cannot be one)")
    return m


def check_mask(mask, what: str = "mask", *, codes=None) -> np.ndarray:
    """``mask`` as uint8 class codes, refused unless it is a 2-D integer (or bool) array with
    values 0..255 and, when ``codes`` is given, only those codes."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise InputError(f"{what} has shape {m.shape}; a mask is one 2-D plane of class codes")
    if m.dtype == bool:
        m = m.astype(np.uint8)
    if m.dtype.kind not in "ui":
        raise InputError(f"{what} holds {m.dtype} values; a mask holds integer class codes "
                         "(0 not tumour, 1 tumour, 255 unknown)")
    if m.size and (int(m.min()) < 0 or int(m.max()) > 255):
        raise InputError(f"{what} holds values {int(m.min())}..{int(m.max())} ({m.dtype}); class codes are 0..255")
    m = m.astype(np.uint8, copy=False)
    if codes is not None:
        found = np.flatnonzero(np.bincount(m.ravel(), minlength=256))
        bad = sorted(set(found.tolist()) - {int(c) for c in codes})
        if bad:
            allowed = ", ".join(str(c) for c in sorted(codes))
            raise InputError(f"{what} holds codes {bad[:10]} that are not class codes here (allowed: {allowed})")
    return m


def read_region(path, shape=None):
    """``--region MASK``: True where the mask is non-zero; InputError if its size is not ``shape``."""
    region = read_mask(path, "--region") > 0
    if shape is not None and region.shape != tuple(shape[:2]):
        raise InputError(f"--region {path} is {region.shape[1]} x {region.shape[0]} px, the image "
                         f"{shape[1]} x {shape[0]} px")
    return region
