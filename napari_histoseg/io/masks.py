"""Reading and writing masks and regions (PNG or TIFF) for the command line."""

from __future__ import annotations

from pathlib import Path


def write_mask(path: Path, mask):
    """uint8 class codes (0 not tumour, 1 tumour) as PNG or compressed TIFF."""
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in {".tif", ".tiff"}:
        tifffile.imwrite(path, mask, compression="zlib")
    elif path.suffix.lower() == ".png":
        from skimage.io import imsave

        imsave(path, mask, check_contrast=False)
    else:
        raise SystemExit(f"histoseg: cannot write {path.name}: use .png, .tif or .tiff")


def read_mask(path):
    """A mask image (PNG, TIFF, ...) as a 2-D array of its codes (first channel of RGB)."""
    import numpy as np

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        m = tifffile.imread(path)
    else:
        from skimage.io import imread

        m = imread(str(path))
    m = np.asarray(m)
    return m[..., 0] if m.ndim == 3 else m


def read_region(path, shape=None):
    """``--region MASK``: True where the mask is non-zero; ValueError if its size is not ``shape``."""
    region = read_mask(path) > 0
    if shape is not None and region.shape != tuple(shape[:2]):
        raise ValueError(f"--region {path} is {region.shape[1]} x {region.shape[0]} px, the image "
                         f"{shape[1]} x {shape[0]} px")
    return region
