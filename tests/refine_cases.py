"""Images, seeds and priors shared by the refinement tests (tests/test_refine_*.py)."""

from __future__ import annotations

import numpy as np

PINK, PURPLE = (232, 190, 215), (110, 50, 140)


def disk_image(size=512, radius=150, noise=8.0, seed=0):
    """Pale pink with a purple disk 300 px wide in the middle, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    inside = (yy - size / 2) ** 2 + (xx - size / 2) ** 2 <= radius ** 2
    img = np.where(inside[..., None], PURPLE, PINK).astype(np.float32)
    img = np.clip(img + rng.normal(0, noise, img.shape), 0, 255).astype(np.uint8)
    return img, inside


def click(shape, y, x, label, r=5):
    s = np.zeros(shape, np.uint8)
    s[max(0, y - r):y + r + 1, max(0, x - r):x + r + 1] = label
    return s


def real_crop():
    """A 384 x 384 crop of the bundled breast carcinoma sample and a smooth prior."""
    from scipy import ndimage

    from napari_histoseg.plugin.samples import breast_carcinoma

    img = np.asarray(breast_carcinoma()[0][0])[300:684, 300:684, :3].copy()
    dark = 255.0 - img.mean(-1)
    prior = ndimage.gaussian_filter(dark, 12)
    prior = ((prior - prior.min()) / (np.ptp(prior) + 1e-6)).astype(np.float32)
    return img, prior


def texture_pair(size=256, seed=0):
    """Two touching halves of one mean colour: left dense dark dots on pale pink (like
    lymphocytes), right smooth pink-purple of the same mean colour."""
    rng = np.random.default_rng(seed)
    dots = rng.random((size, size)) < 0.25
    from scipy import ndimage

    dots = ndimage.binary_dilation(dots & (rng.random((size, size)) < 0.3), iterations=1)
    left = np.where(dots[..., None], PURPLE, PINK).astype(np.float32)
    img = np.empty((size, size, 3), np.float32)
    img[:, : size // 2] = left[:, : size // 2]
    img[:, size // 2:] = left[:, : size // 2].reshape(-1, 3).mean(0)
    img = np.clip(img + rng.normal(0, 4, img.shape), 0, 255).astype(np.uint8)
    return img


def ndimage_dilate(mask, n):
    from scipy import ndimage

    return ndimage.binary_dilation(mask, iterations=n)


def square_half_wrong(seed=0):
    """Pink tissue with a purple block (x 250..400); the model's confident tumour square
    (x 100..400) covers the block and, wrongly, as much pink beside it."""
    rng = np.random.default_rng(seed)
    img = np.full((512, 512, 3), PINK, np.float32)
    img[100:400, 250:400] = PURPLE
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    prior = np.full((512, 512), 0.05, np.float32)
    prior[100:400, 100:400] = 0.95
    return img, prior

