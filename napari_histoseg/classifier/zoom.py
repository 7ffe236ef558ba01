"""Higher magnifications simulated from lower ones (training and evaluation), no torch at import.

A microscope field at ``k`` times the magnification shows ``1 / k`` of the width and height
of the lower-power field, spread over the same camera: :func:`simulate_field` cuts that
part out of a lower-power image, enlarges it ``k`` times (bilinear) and blurs it with a
Gaussian of ``blur * k`` output pixels, since the enlarged field carries no detail finer
than the source pixels and a real high-power image is itself oversampled (the optics
resolve about 0.4 µm; a 400X BreakHis pixel is 0.05 µm). So a 400X field is a quarter of
the width and height of a 100X field, 4x larger, softened; 200X is a half, 2x larger.

:func:`simulated_fields` gives the fields evaluation uses: one centred on each quadrant of
the image (the four quadrants themselves at 2x), so every test image gives the same four
fields every time.
"""

from __future__ import annotations

import numpy as np

#: Gaussian sigma of the simulated optics, in source pixels (times the zoom in output pixels).
BLUR = 0.35


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur of a uint8 RGB image (per channel), uint8 out."""
    if sigma <= 0.05:
        return image
    from scipy.ndimage import gaussian_filter

    out = gaussian_filter(image.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect")
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def enlarge(image: np.ndarray, zoom: float, sigma: float) -> np.ndarray:
    """``image`` resized by ``zoom`` (bilinear), then blurred by ``sigma`` output pixels."""
    from napari_histoseg.core.resize import resize

    return blur(resize(np.ascontiguousarray(image), float(zoom)), sigma)


def field_box(shape, zoom: float, centre=(0.5, 0.5)) -> tuple[int, int, int, int]:
    """``(y, x, h, w)`` of the high-power field centred at ``centre`` (fractions of the image)."""
    h, w = int(shape[0]), int(shape[1])
    fh, fw = max(1, int(round(h / zoom))), max(1, int(round(w / zoom)))
    y = int(round(centre[0] * h - fh / 2))
    x = int(round(centre[1] * w - fw / 2))
    return min(max(0, y), h - fh), min(max(0, x), w - fw), fh, fw


def simulate_field(image: np.ndarray, zoom: float, centre=(0.5, 0.5), blur_px: float = BLUR) -> np.ndarray:
    """The field at ``zoom`` times the image's magnification, centred at ``centre``, at the
    image's pixel count (a 700 x 460 100X image gives a 700 x 460 400X field for zoom 4)."""
    if zoom < 1:
        raise ValueError(f"zoom must be at least 1 (a higher magnification), got {zoom}")
    y, x, fh, fw = field_box(image.shape, zoom, centre)
    return enlarge(image[y:y + fh, x:x + fw], zoom, blur_px * zoom)


QUADRANTS = ((0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75))


def simulated_fields(image: np.ndarray, zoom: float, blur_px: float = BLUR) -> list[np.ndarray]:
    """Four fields at ``zoom`` (one centred on each quadrant); ``[image]`` for zoom 1."""
    if abs(zoom - 1) < 1e-6:
        return [image]
    return [simulate_field(image, zoom, c, blur_px) for c in QUADRANTS]
