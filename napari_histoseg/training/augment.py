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

:meth:`AugmentConfig.heavy` (what the tumour model trains with) adds what another scanner or
lab does to a slide: a stronger stain jitter *with the stain vectors moved*
(:func:`~napari_histoseg.colour.stain.perturb_stains`), Macenko normalisation to the reference
(so the inference-time option is nothing the model has not seen), gamma, saturation, Gaussian
blur (focus) and JPEG compression (:func:`realistic`). :func:`background_patch` draws glass and
fat (every pixel not tumour) for a task's negatives.

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
    stain_vector_sigma: float = 0.0   # > 0: perturb_stains instead of hed_perturb
    normalise_prob: float = 0.0       # Macenko-normalise to the reference target
    gamma: tuple = (1.0, 1.0)
    saturation: float = 0.0           # blend with grey by U(-s, s)
    blur_prob: float = 0.0
    blur_sigma: tuple = (0.4, 1.6)
    jpeg_prob: float = 0.0
    jpeg_quality: tuple = (30, 90)

    @classmethod
    def heavy(cls) -> "AugmentConfig":
        """Realistic stain and scanner variation (the tumour model's default)."""
        return cls(scale=(0.85, 1.18), hed_sigma=0.3, hed_bias=0.08, hed_prob=0.9, stain_vector_sigma=0.12,
                   normalise_prob=0.15, brightness=0.08, contrast=0.2, gamma=(0.7, 1.4), saturation=0.3,
                   blur_prob=0.25, jpeg_prob=0.3)


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


def _normalise(image: np.ndarray) -> np.ndarray:
    from napari_histoseg.colour.normalise import MacenkoNormaliser

    try:  # to the built-in reference target, the inference-time option's default
        return MacenkoNormaliser().fit(image).transform(image)
    except ValueError:  # too little tissue for a stain estimate: leave the patch as it is
        return image


def colour(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """The stain part: normalisation (sometimes), then HED jitter (with moved stain vectors
    when ``stain_vector_sigma`` > 0)."""
    if cfg.normalise_prob > 0 and rng.random() < cfg.normalise_prob:
        image = _normalise(image)
    if cfg.hed_sigma > 0 and rng.random() < cfg.hed_prob:
        if cfg.stain_vector_sigma > 0:
            from napari_histoseg.colour.stain import perturb_stains

            image = perturb_stains(image, rng, cfg.hed_sigma, cfg.hed_bias, cfg.stain_vector_sigma)
        else:
            image = hed_perturb(image, rng, cfg.hed_sigma, cfg.hed_bias)
    return image


def realistic(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Gamma, saturation, blur and JPEG, each only when its setting is on; uint8 in and out."""
    x = None
    if cfg.gamma != (1.0, 1.0) and rng.random() < 0.5:
        g = np.exp(rng.uniform(np.log(cfg.gamma[0]), np.log(cfg.gamma[1])))
        x = 255.0 * (image.astype(np.float32) / 255.0) ** g
    if cfg.saturation > 0 and rng.random() < 0.5:
        x = image.astype(np.float32) if x is None else x
        grey = x.mean(-1, keepdims=True)
        x = grey + (x - grey) * (1 + rng.uniform(-cfg.saturation, cfg.saturation))
    if x is not None:
        image = np.clip(x + 0.5, 0, 255).astype(np.uint8)
    if cfg.blur_prob > 0 and rng.random() < cfg.blur_prob:
        from scipy.ndimage import gaussian_filter

        s = rng.uniform(*cfg.blur_sigma)
        image = gaussian_filter(image, (s, s, 0), mode="reflect")
    if cfg.jpeg_prob > 0 and rng.random() < cfg.jpeg_prob:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="JPEG", quality=int(rng.integers(*cfg.jpeg_quality)))
        image = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    return np.ascontiguousarray(image)


def augment_colour(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """Every photometric augmentation of ``cfg`` (stain, intensity, gamma, blur, JPEG)."""
    return realistic(intensity(colour(image, rng, cfg), rng, cfg), rng, cfg)


def background_patch(size: int, rng: np.random.Generator) -> np.ndarray:
    """A synthetic ``size`` x ``size`` patch of what is never tumour: bare glass (near white,
    a tint, sensor noise, dust) or fat (empty white cells behind thin pink membranes)."""
    from scipy.ndimage import gaussian_filter

    tint = rng.uniform(225, 252, size=3)
    img = np.broadcast_to(tint, (size, size, 3)).astype(np.float32).copy()
    img += rng.normal(0, rng.uniform(0.5, 4), size=img.shape)
    if rng.random() < 0.6:  # fat: Voronoi cell walls of adipocytes 15-60 px across
        n = int(rng.integers(6, 40))
        pts = rng.uniform(0, size, size=(n, 2))
        yy, xx = np.mgrid[:size, :size]
        d = np.sort(np.stack([np.hypot(yy - p[0], xx - p[1]) for p in pts]), axis=0)
        wall = (d[1] - d[0]) < rng.uniform(1.0, 3.0)
        membrane = np.array([rng.uniform(170, 225), rng.uniform(110, 180), rng.uniform(160, 215)])
        img[wall] = membrane + rng.normal(0, 6, size=(int(wall.sum()), 3))
        img = gaussian_filter(img, (0.7, 0.7, 0))
    for _ in range(int(rng.integers(0, 4))):  # dust and debris
        y, x, r = rng.integers(0, size), rng.integers(0, size), rng.uniform(1, 5)
        yy, xx = np.ogrid[:size, :size]
        img[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] *= rng.uniform(0.5, 0.9)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def random_patch(image, mask, size: int, rng: np.random.Generator, cfg: AugmentConfig | None = None,
                 ignore_index: int = 255):
    """One augmented training patch ``(uint8 (size, size, 3), uint8 (size, size))`` of a
    tile of any size (smaller tiles padded, the mask with ``ignore_index``)."""
    cfg = cfg or AugmentConfig()
    img, m = random_window(image, mask, size, rng, cfg, ignore_index)
    img, m = geometric(img, m, rng, cfg)
    img = colour(img, rng, cfg)
    img = intensity(img, rng, cfg)
    return realistic(img, rng, cfg), m
