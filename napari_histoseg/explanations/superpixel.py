"""Superpixel SHAP: Kernel SHAP (Lundberg & Lee 2017) over SLIC regions of the view.

The view is cut into about ``regions`` SLIC superpixels (scikit-image), regions of similar
colour that follow gland and nest outlines. A *coalition* keeps some regions and replaces the
others by the SHAP baseline (the view under a wide Gaussian blur,
:func:`~napari_histoseg.explanations.shap.stain_baseline`: same stain, no structure). The model
scores each coalition (the tumour logit summed over the target pixels of the intact view, the
same target as Grad-CAM and GradientShap), and the Shapley value of every region is the
solution of Kernel SHAP's weighted regression, with the constraint that the values add up to
``score(view) - score(blurred view)``.

Coalition sizes are drawn from the Shapley kernel's distribution (so the regression weights
are uniform) and in complementary pairs (a coalition and its complement), which halves the
variance for the same number of passes. Every coalition is one forward pass of the whole view
(or of the view shrunk by ``scale``), batched: the cost is ``samples + 2`` forward passes,
about (samples + 2) / 3 times Grad-CAM's one forward and backward pass per tile; see
:mod:`.cost` for the estimate the widget shows before it runs.

The map gives each pixel its region's value divided by the region's area (the value per
pixel), so a small region that matters is as red as a large one; signed: positive regions
push the target towards tumour.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_histoseg.explanations.methods import ExplainError
from napari_histoseg.explanations.shap import stain_baseline

#: the most pixels of one coalition image the model is given at once (the view after ``scale``)
MAX_EVAL_PIXELS = 1536 * 1536


def superpixels(rgb: np.ndarray, regions: int, compactness: float = 20.0) -> np.ndarray:
    """SLIC labels 0..M-1 (int32, the image's shape) of about ``regions`` superpixels.

    SLIC runs on a copy at most 256 px on its longer side, smoothed by 2 px (the labels are
    then enlarged nearest-neighbour): superpixels of a view are tens of px wide, so the detail
    lost is below their size, and it takes milliseconds instead of seconds. Where SLIC finds
    no structure at all, the view is cut into a grid of squares.
    """
    from skimage.segmentation import slic
    from skimage.transform import resize

    h, w = rgb.shape[:2]
    f = max(1, int(np.ceil(max(h, w) / 256)))
    small = rgb[::f, ::f] if f > 1 else rgb
    labels = slic(small, n_segments=int(regions), compactness=compactness, sigma=2.0, start_label=0,
                  channel_axis=-1)
    if labels.max() < 1:  # no structure to follow (a flat or noise image): a grid of squares
        side = max(1, int(round(np.sqrt(regions))))
        yy, xx = np.mgrid[:small.shape[0], :small.shape[1]]
        labels = (yy * side // small.shape[0]) * side + xx * side // small.shape[1]
    if f > 1:
        labels = resize(labels, (h, w), order=0, preserve_range=True, anti_aliasing=False).astype(np.int64)
    _, labels = np.unique(labels, return_inverse=True)
    return labels.reshape(h, w).astype(np.int32)


def coalitions(m: int, samples: int, rng: np.random.Generator) -> np.ndarray:
    """``samples`` boolean coalitions (rows, over ``m`` regions) in complementary pairs, their
    sizes drawn from the Shapley kernel's distribution p(k) ~ (m - 1) / (k (m - k))."""
    k = np.arange(1, m)
    p = (m - 1) / (k * (m - k))
    p = p / p.sum()
    half = (samples + 1) // 2
    rows = np.zeros((half, m), bool)
    for i, size in enumerate(rng.choice(k, size=half, p=p)):
        rows[i, rng.choice(m, size=size, replace=False)] = True
    return np.concatenate([rows, ~rows])[:samples]


def shapley_values(z: np.ndarray, y: np.ndarray, f_empty: float, f_full: float) -> np.ndarray:
    """Kernel SHAP's regression: ``phi`` (m,) with ``sum(phi) == f_full - f_empty`` that best
    fits ``y = f_empty + z @ phi`` over the sampled coalitions (uniform weights: the sizes were
    drawn from the kernel). Least squares with the last value eliminated; minimum-norm where
    there are fewer coalitions than regions."""
    z = z.astype(np.float64)
    m = z.shape[1]
    total = f_full - f_empty
    if m == 1:
        return np.array([total])
    a = z[:, :-1] - z[:, -1:]
    b = (y - f_empty) - z[:, -1] * total
    phi, *_ = np.linalg.lstsq(a, b, rcond=None)
    return np.append(phi, total - phi.sum())


def _pad32(img: np.ndarray) -> np.ndarray:
    h, w = img.shape[-3:-1]
    ph, pw = -h % 32, -w % 32
    if not (ph or pw):
        return img
    pad = [(0, 0)] * (img.ndim - 3) + [(0, ph), (0, pw), (0, 0)]
    return np.pad(img, pad, mode="symmetric")


def _shrink(a: np.ndarray, scale: int, order: int) -> np.ndarray:
    """``a`` (h, w[, c]) reduced by ``scale``: block means (images) or every ``scale``-th pixel (labels)."""
    if scale == 1:
        return a
    if order == 0:
        return a[scale // 2::scale, scale // 2::scale]
    from skimage.transform import downscale_local_mean

    factors = (scale, scale) + (1,) * (a.ndim - 2)
    return np.clip(np.rint(downscale_local_mean(a.astype(np.float32), factors)), 0, 255).astype(a.dtype)


class SuperpixelShap:
    """Kernel SHAP over SLIC superpixels of one view (the explanation's context window).

    Parameters
    ----------
    model : Segmenter
        A torch segmenter (its ``logits`` and ``explain_target``).
    channel : int
        Output channel of the tumour class.
    samples : int
        Coalitions scored (forward passes, besides the intact and the blurred view).
    regions : int
        About how many SLIC superpixels the view is cut into.
    scale : int
        The coalitions are scored on the view shrunk by this factor (1: full resolution,
        faithful to the model as it segments; 2: four times cheaper, the model seeing the
        tissue at half its magnification).
    blur_sigma : float
        Baseline blur (px, at full resolution).
    batch_size : int
        Coalition images per forward pass.
    seed : int
        Seed of the coalitions.
    """

    def __init__(self, model, channel=0, samples=64, regions=48, scale=1, blur_sigma=24.0, batch_size=4, seed=0):
        if int(samples) < 2:
            raise ExplainError(f"superpixel SHAP needs at least 2 samples (coalitions), got {samples}")
        self.model, self.channel = model, int(channel)
        self.samples, self.regions, self.scale = int(samples), max(2, int(regions)), max(1, int(scale))
        self.sigma, self.batch_size, self.seed = float(blur_sigma), max(1, int(batch_size)), int(seed)

    def passes(self) -> int:
        """Forward passes of the view this explanation costs."""
        return self.samples + 2

    def _scores(self, images: np.ndarray, weights: torch.Tensor) -> np.ndarray:
        model = self.model
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.batch_size):
                x = model.to_tensor(_pad32(images[i:i + self.batch_size]))
                logits = model.logits(x).float()[..., :weights.shape[0], :weights.shape[1]]
                out.append(model.explain_target(logits, self.channel, weights, False).cpu().numpy())
        return np.concatenate(out).astype(np.float64)

    def run(self, rgb: np.ndarray, target: np.ndarray, use_prediction: bool):
        """Generator over one view: yields ``(done, total)`` coalition batches, returns the
        float32 map (the view's shape): each pixel its region's Shapley value per pixel."""
        h, w = rgb.shape[:2]
        s = self.scale
        if (h // s) * (w // s) > MAX_EVAL_PIXELS:
            raise ExplainError(
                f"superpixel SHAP scores the whole view at once, and {w} x {h} px is too large "
                f"(at most {MAX_EVAL_PIXELS} px after scale {s}); explain the visible area of a zoomed-in "
                "view, or a region, or use method 'shap' (GradientShap), which runs tile by tile")
        labels = superpixels(rgb, self.regions)
        m = int(labels.max()) + 1
        base = stain_baseline(rgb, "blur", self.sigma)[0]
        small_rgb, small_base = _shrink(rgb, s, 1), _shrink(base, s, 1)
        small_labels = _shrink(labels, s, 0)[:small_rgb.shape[0], :small_rgb.shape[1]]
        sh, sw = small_labels.shape
        small_rgb, small_base = small_rgb[:sh, :sw], small_base[:sh, :sw]
        tgt = _shrink(target.astype(np.uint8), s, 0)[:sh, :sw].astype(np.float32)
        weights = torch.from_numpy(tgt).to(self.model.device)
        if use_prediction:
            with torch.no_grad():
                logits = self.model.logits(self.model.to_tensor(_pad32(small_rgb[None]))).float()[..., :sh, :sw]
            from napari_histoseg.models.segmenter import predicted_mask

            weights = weights * predicted_mask(logits, self.channel)[0]
        if not bool(weights.any()):
            return np.zeros((h, w), np.float32)
        rng = np.random.default_rng(self.seed)
        z = coalitions(m, self.samples, rng)
        n_batches = -(-len(z) // self.batch_size) + 1
        yield 0, n_batches
        f_full, f_empty = self._scores(np.stack([small_rgb, small_base]), weights)
        yield 1, n_batches
        y = np.empty(len(z))
        for b, i in enumerate(range(0, len(z), self.batch_size)):
            keep = z[i:i + self.batch_size][:, small_labels]  # (B, sh, sw) bool
            images = np.where(keep[..., None], small_rgb[None], small_base[None])
            y[i:i + len(keep)] = self._scores(images, weights)
            yield b + 2, n_batches
        phi = shapley_values(z, y, f_empty, f_full)
        area = np.bincount(labels.ravel(), minlength=m).astype(np.float64)
        return (phi / np.maximum(area, 1))[labels].astype(np.float32)
