"""Training augmentation of H&E tiles, as the main paper lists it.

Per training patch, drawn with a seeded :class:`numpy.random.Generator`:

* a window of the tile is cut out and resized to the patch size; its side is the patch
  size divided by a scale factor in [0.9, 1.1] (scale jitter) and shrunk by a random
  crop of up to 10 % (``max_crop``); the two are done in one resize, so the image is
  interpolated once (bilinear; the mask nearest-neighbour, so class codes stay codes);
* rotation by a multiple of 90° and horizontal/vertical flips;
* brightness and contrast: ``x * c + b`` with c in [0.85, 1.15] and b in ±0.1 of the range;
* stain perturbation in HED space (Tellez et al. 2018): :func:`skimage.color.rgb2hed`,
  every stain channel scaled by U(1-σ, 1+σ) and shifted by U(-σ', σ'), back with
  :func:`skimage.color.hed2rgb`.

torchvision's v2 transforms cover flips, rotations and colour jitter but not HED stain
perturbation, and mixing them with the mask would mean tensor round trips per patch; the
whole pipeline here is a few numpy lines, so it stays in numpy (and runs on uint8 arrays
of any size).

Example
-------
>>> rng = np.random.default_rng(0)
>>> img = np.zeros((512, 512, 3), np.uint8); mask = np.zeros((512, 512), np.uint8)
>>> x, y = random_patch(img, mask, 256, rng)
>>> x.shape, y.shape
((256, 256, 3), (256, 256))
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from skimage.color import hed2rgb, rgb2hed


@dataclass
class AugmentConfig:
    """Ranges of the random augmentations (set a range to its identity to switch it off)."""

    scale: tuple = (0.9, 1.1)
    max_crop: float = 0.10
    rot90: bool = True
    flips: bool = True
    brightness: float = 0.10
    contrast: float = 0.15
    hed_sigma: float = 0.05
    hed_bias: float = 0.01
    hed_prob: float = 0.8


def _resize(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize a uint8 image (bilinear) and mask (nearest) to ``size`` x ``size``."""
    if image.shape[0] == size and image.shape[1] == size:
        return image, mask
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=False)
    img = t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    m = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
    m = F.interpolate(m, size=(size, size), mode="nearest")[0, 0].to(torch.uint8).numpy()
    return img, m


def random_window(image, mask, size: int, rng: np.random.Generator, cfg: AugmentConfig,
                  ignore_index: int = 255):
    """Cut a randomly placed, scale-jittered and cropped window, resized to ``size``.

    The window side is ``size / s * (1 - c)`` with s ~ U(cfg.scale), c ~ U(0, max_crop),
    clipped to the tile. A tile smaller than ``size`` (an edge tile, a small export) is
    padded first: the image by mirroring, the mask with ``ignore_index``, so the padding
    counts for nothing in the loss.
    """
    h, w = mask.shape
    if h < size or w < size:
        ph, pw = max(0, size - h), max(0, size - w)
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="symmetric")
        mask = np.pad(mask, ((0, ph), (0, pw)), mode="constant", constant_values=ignore_index)
        h, w = mask.shape
    s = rng.uniform(*cfg.scale)
    c = rng.uniform(0.0, cfg.max_crop)
    side = int(round(size / s * (1.0 - c)))
    side = max(8, min(side, h, w))
    y = int(rng.integers(0, h - side + 1))
    x = int(rng.integers(0, w - side + 1))
    return _resize(image[y : y + side, x : x + side], mask[y : y + side, x : x + side], size)


def geometric(image, mask, rng: np.random.Generator, cfg: AugmentConfig):
    """Random rotation by k·90° and flips, applied identically to image and mask."""
    if cfg.rot90:
        k = int(rng.integers(0, 4))
        image, mask = np.rot90(image, k), np.rot90(mask, k)
    if cfg.flips:
        if rng.random() < 0.5:
            image, mask = image[:, ::-1], mask[:, ::-1]
        if rng.random() < 0.5:
            image, mask = image[::-1], mask[::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(mask)


def hed_perturb(image: np.ndarray, rng: np.random.Generator, sigma=0.05, bias=0.01) -> np.ndarray:
    """Random stain perturbation in HED space (uint8 RGB in, uint8 RGB out).

    Each of the haematoxylin, eosin and DAB channels of :func:`rgb2hed` is multiplied
    by U(1 - sigma, 1 + sigma) and shifted by U(-bias, bias) (in HED optical-density
    units, where H&E tissue is typically 0-0.2).
    """
    hed = rgb2hed(image)
    a = rng.uniform(1 - sigma, 1 + sigma, size=3)
    b = rng.uniform(-bias, bias, size=3)
    rgb = hed2rgb(hed * a + b)
    return (np.clip(rgb, 0, 1) * 255 + 0.5).astype(np.uint8)


def intensity(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Random contrast (about the image mean) and brightness, uint8 in and out."""
    if cfg.brightness <= 0 and cfg.contrast <= 0:
        return image
    x = image.astype(np.float32)
    c = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
    b = rng.uniform(-cfg.brightness, cfg.brightness) * 255
    mean = x.mean()
    x = (x - mean) * c + mean + b
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def random_patch(image, mask, size: int, rng: np.random.Generator, cfg: AugmentConfig | None = None,
                 ignore_index: int = 255):
    """One augmented training patch ``(uint8 (size, size, 3), uint8 (size, size))`` of a
    tile of any size (smaller tiles padded, the mask with ``ignore_index``)."""
    cfg = cfg or AugmentConfig()
    img, m = random_window(image, mask, size, rng, cfg, ignore_index)
    img, m = geometric(img, m, rng, cfg)
    if cfg.hed_sigma > 0 and rng.random() < cfg.hed_prob:
        img = hed_perturb(img, rng, cfg.hed_sigma, cfg.hed_bias)
    img = intensity(img, rng, cfg)
    return img, m
