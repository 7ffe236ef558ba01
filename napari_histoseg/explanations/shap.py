"""SHAP attributions of a segmentation target: captum's ``GradientShap``.

GradientShap (expected gradients) estimates Shapley values as
``E[(x - b) * dT/dx (b + a (x - b))]`` over baselines ``b`` and ``a ~ U(0, 1)``, so the
attributions of a pixel's three channels, summed, say how much that pixel moves the
target ``T`` (the tumour logit summed over the target pixels) from its value on the
baseline, and all of them together add up to about ``T(x) - E[T(b)]``.

The baseline decides what "absent" means. Black or white would make every stained
pixel matter because it is stained. Here the default is the same tile blurred with a
wide Gaussian (:func:`stain_baseline`): the local stain colour and brightness stay, the
structure (nuclei, glands, fibres) goes, so a red pixel is one whose tissue structure
raises the tumour score and a blue pixel one whose structure lowers it.
KernelShap over superpixels was the fallback; GradientShap is usable on these
networks and costs ``samples`` backward passes per tile instead of hundreds of forwards.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from captum.attr import GradientShap
from scipy.ndimage import gaussian_filter

from napari_histoseg.explanations.methods import ExplainError

BASELINES = ("blur", "white", "blur+white")
GLASS = 240  # the brightness of empty glass in H&E scans


def stain_baseline(tile: np.ndarray, kind: str = "blur", sigma: float = 24.0) -> np.ndarray:
    """Baseline image(s) for ``tile``, uint8 (B, h, w, 3).

    Parameters
    ----------
    tile : ndarray, uint8 (h, w, 3)
        The RGB tile.
    kind : {"blur", "white", "blur+white"}
        ``"blur"``: the tile under a Gaussian of ``sigma`` px per channel (reflected at
        the edges): same stain and brightness, no structure. ``"white"``: empty glass
        (RGB 240). ``"blur+white"``: both (GradientShap samples between them).
    sigma : float
        Blur width in pixels (default 24: wider than a nucleus and than most gland
        lumina at 0.5 um/px).
    """
    if kind not in BASELINES:
        raise ExplainError(f"unknown SHAP baseline {kind!r}; use one of {BASELINES}")
    out = []
    if "blur" in kind:
        blurred = gaussian_filter(tile.astype(np.float32), sigma=(sigma, sigma, 0), mode="reflect", truncate=3.0)
        out.append(np.clip(np.rint(blurred), 0, 255).astype(np.uint8))
    if "white" in kind:
        out.append(np.full_like(tile, GLASS))
    return np.stack(out)


class GradShap:
    """Per-tile GradientShap for the tiled driver (see :func:`napari_histoseg.explanations.explain`).

    Parameters
    ----------
    model : LoadedModel
        A torch model that names its target (``explain_target``): a segmenter or a classifier.
    channel : int
        Output channel of the tumour class.
    samples : int
        Interpolation samples per tile (each one forward and one backward pass).
    batch_size : int
        Samples per pass (memory against speed).
    baseline, blur_sigma : str, float
        See :func:`stain_baseline`.
    stdevs : float
        Gaussian noise added to the samples, in normalised input units (0: none).
    seed : int
        Seed of the sampling; tile ``i`` uses ``seed + i``.
    """

    combine, depth, always = "sum", 1, False  # see explain.tiled

    def __init__(self, model, channel=0, samples=8, batch_size=4, baseline="blur", blur_sigma=24.0,
                 stdevs=0.0, seed=0):
        if baseline not in BASELINES:
            raise ExplainError(f"unknown SHAP baseline {baseline!r}; use one of {BASELINES}")
        self.model, self.channel = model, int(channel)
        self.samples, self.batch_size = int(samples), max(1, int(batch_size))
        self.baseline, self.sigma, self.stdevs, self.seed = baseline, float(blur_sigma), float(stdevs), int(seed)
        #: context (px) read around a tile to blur it as part of the whole image
        self.margin = int(math.ceil(3 * self.sigma)) if "blur" in baseline else 0

    def __call__(self, tile: np.ndarray, weights: np.ndarray, use_prediction: bool, index: int = 0,
                 surround: np.ndarray | None = None) -> np.ndarray:
        """Signed attribution, float32 (h, w), summed over RGB, in logit units.

        ``surround`` is the tile with :attr:`margin` px of the image around it; the
        blurred baseline is taken from it, so it matches the blurred whole image.
        """
        model, ch = self.model, self.channel
        x = model.to_tensor(tile[None])
        w = torch.from_numpy(weights).to(model.device)
        # The target as the model defines it (explain_target: a segmenter's masked pixel sum,
        # a classifier's tile logit), linearised at this tile: its gradient with respect to
        # the logits, so every interpolated sample is scored on the same pixels.
        with torch.enable_grad():
            with torch.no_grad():
                base_logits = model.logits(x).float()
            base_logits.requires_grad_(True)
            t = model.explain_target(base_logits, ch, w, use_prediction).sum()
            coef = torch.autograd.grad(t, base_logits)[0].detach() if t.requires_grad else None
        if coef is None or not bool(coef.any()):
            return np.zeros(tile.shape[:2], np.float32)
        h, w_ = tile.shape[:2]
        if surround is not None and self.margin:
            m = self.margin
            base = stain_baseline(surround, self.baseline, self.sigma)[:, m:m + h, m:m + w_]
        else:
            base = stain_baseline(tile, self.baseline, self.sigma)
        base = model.to_tensor(np.ascontiguousarray(base))

        def forward(z):
            return (model.logits(z).float() * coef).flatten(1).sum(1)

        gs = GradientShap(forward)
        total = torch.zeros_like(x)
        devices = [model.device.index or 0] if model.device.type == "cuda" else []
        np_state = np.random.get_state()  # captum draws the interpolation points from numpy's global RNG
        try:
            with torch.random.fork_rng(devices=devices), torch.enable_grad():
                torch.manual_seed(self.seed + index)
                np.random.seed((self.seed + index) % 2**32)
                left = self.samples
                while left > 0:
                    k = min(self.batch_size, left)
                    total += gs.attribute(x, baselines=base, n_samples=k, stdevs=self.stdevs).detach() * k
                    left -= k
        finally:
            np.random.set_state(np_state)
        return (total[0].sum(0) / self.samples).float().cpu().numpy()
