"""Gradient attributions that are cheap enough for a whole view: input x gradient against
the blurred baseline, and HiResCAM.

* **inputxgrad**: ``sum_rgb (x - b) * dT/dx`` with ``b`` the tile under the SHAP baseline's
  Gaussian blur (:func:`~napari_histoseg.explanations.shap.stain_baseline`): the first-order
  estimate of how much the target ``T`` falls when a pixel's structure is blurred away
  (one forward and one backward pass per tile, GradientShap with a single sample at
  ``a = 1``). Smoothed with a small Gaussian (``smooth`` px) so that neighbouring pixels
  of one nucleus rank together. Signed: positive raises the tumour score.
* **hirescam** (Draelos & Carin 2020): ``ReLU(sum_k dT/dA_k * A_k)`` per location of a
  layer, instead of Grad-CAM's channel-mean gradient, so the map shows the locations that
  actually drive the target; captum's ``LayerGradientXActivation``.

Both ask the model for their target (:meth:`~napari_histoseg.models.loaded.LoadedModel.explain_target`),
so they are right for a segmenter and a classifier alike.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from captum.attr import LayerAttribution, LayerGradientXActivation
from scipy.ndimage import gaussian_filter

from napari_histoseg.explanations.gradcam import GradCam
from napari_histoseg.explanations.shap import stain_baseline


class InputXGrad:
    """Per-tile ``(x - blur(x)) * gradient`` for the tiled driver (``combine == "sum"``)."""

    combine, depth, always = "sum", 1, False  # see explain.tiled

    def __init__(self, model, channel: int = 0, blur_sigma: float = 24.0, smooth: float = 2.0):
        self.model, self.channel = model, int(channel)
        self.sigma, self.smooth = float(blur_sigma), float(smooth)
        self.margin = int(math.ceil(3 * self.sigma))

    def __call__(self, tile, weights, use_prediction, index=0, surround=None):
        model, ch = self.model, self.channel
        h, w_ = tile.shape[:2]
        if surround is not None and self.margin:
            m = self.margin
            base = stain_baseline(surround, "blur", self.sigma)[:, m:m + h, m:m + w_]
        else:
            base = stain_baseline(tile, "blur", self.sigma)
        x = model.to_tensor(tile[None]).requires_grad_(True)
        b = model.to_tensor(np.ascontiguousarray(base[:1]))
        w = torch.from_numpy(weights).to(model.device)
        with torch.enable_grad():
            target = model.explain_target(model.logits(x).float(), ch, w, use_prediction).sum()
            if not target.requires_grad:
                return np.zeros((h, w_), np.float32)
            (grad,) = torch.autograd.grad(target, x)
        heat = ((x.detach() - b) * grad)[0].sum(0).float().cpu().numpy()
        if self.smooth > 0:
            heat = gaussian_filter(heat, self.smooth, mode="reflect")
        return heat.astype(np.float32)


class HiResCam(GradCam):
    """Per-tile HiResCAM: gradient x activation summed over channels, ReLU'd, upsampled."""

    def __call__(self, tile, weights, use_prediction, index=0):
        forward, x = self.target(tile, weights, use_prediction)
        with torch.enable_grad():
            cam = LayerGradientXActivation(forward, self.layer).attribute(x)
        if isinstance(cam, tuple):
            cam = cam[0]
        cam = cam.detach().float().sum(1, keepdim=True).clamp_min(0)
        cam = LayerAttribution.interpolate(cam, tuple(tile.shape[:2]), interpolate_mode="bilinear")
        return cam[0, 0].clamp_min(0).cpu().numpy().astype(np.float32)
