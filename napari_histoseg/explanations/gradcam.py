"""Grad-CAM of a segmentation target (Vinogradova et al. 2020), on captum's ``LayerGradCam``.

For a layer with activations ``A_k`` (k = channels), Grad-CAM weights every channel by
the mean gradient of the target over the layer, ``a_k = mean(dT / dA_k)``, and maps
``ReLU(sum_k a_k A_k)``, upsampled bilinearly to the tile
(``LayerAttribution.interpolate``). For segmentation the target ``T`` is a sum of the
tumour logit over pixels: the predicted mask, a drawn region or the whole view. For a
classifier the target is the tile's logit of ``channel``, and the caller restricts the
blended map to the region (see ``classifier.infer``). The model says which
(:meth:`~napari_histoseg.models.loaded.LoadedModel.explain_target`), and which layer is
its default (:meth:`~napari_histoseg.models.loaded.LoadedModel.gradcam_layer`).

The map is only as sharp as the layer: a layer at stride s gives blobs of about s px.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from captum.attr import LayerAttribution, LayerGradCam

from napari_histoseg.explanations.methods import ExplainError
from napari_histoseg.models import layers


def default_layer(module: nn.Module, device="cpu") -> str:
    """Name of the default Grad-CAM layer of ``module`` (see
    :func:`napari_histoseg.models.layers.default_layer`; a loaded model answers
    :meth:`~napari_histoseg.models.loaded.LoadedModel.gradcam_layer`).

    For the U-Nets of this project it is the second decoder block
    (``net.decoder.blocks.1``, 128 channels at stride 8): it has seen the whole encoder
    (the bottleneck's context) and the stride-8 skip, so it is semantic enough to say
    *why* and fine enough (8 px) to outline tumour nests; the bottleneck (stride 32) is
    blocky, and the last decoder blocks mostly repeat the output mask. Other
    architectures name their own, else the last layer at the network's coarsest stride
    (the classic Grad-CAM choice: the end of the feature extractor).
    """
    try:
        return layers.default_layer(module, device)
    except ValueError as e:
        raise ExplainError(str(e)) from None


def candidate_layers(model, size: int = 64) -> list[tuple[str, int, int]]:
    """Layers Grad-CAM can use, as ``(name, channels, stride)`` in execution order.

    Lists the network's blocks whose output is an image-shaped tensor (encoder
    stages, decoder blocks, convolutions), the default first. For a dropdown.
    """
    try:
        return layers.spatial_blocks(model.module, model.device, size=size)
    except ValueError as e:
        raise ExplainError(str(e)) from None


def resolve_layer(model, layer) -> nn.Module:
    """The submodule of ``model.module`` named by ``layer`` (a dotted path), a module itself,
    or the model's default (:meth:`~napari_histoseg.models.loaded.LoadedModel.gradcam_layer`)."""
    if isinstance(layer, nn.Module):
        return layer
    module = model.module
    try:
        name = layer if layer else model.gradcam_layer()
    except ValueError as e:
        raise ExplainError(str(e)) from None
    try:
        return module.get_submodule(str(name))
    except AttributeError:
        names = [n for n, _, _ in layers.probe(module, model.device)]
        hint = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ExplainError(f"{type(module).__name__} has no layer {name!r}; layers include {hint}") from None


class GradCam:
    """Per-tile Grad-CAM for the tiled driver (see :func:`napari_histoseg.explanations.explain`).

    Parameters
    ----------
    model : LoadedModel
        A torch model that :mod:`napari_histoseg.explanations` can explain (a Segmenter or a
        Classifier): it names its target (:meth:`~napari_histoseg.models.loaded.LoadedModel.explain_target`)
        and its default layer.
    layer : str, torch.nn.Module or None
        The layer (dotted path) or None for :func:`default_layer`.
    channel : int
        Output channel of the tumour class.
    """

    combine, depth, margin, always = "blend", 1, 0, False  # see explain.tiled

    def __init__(self, model, layer=None, channel: int = 0):
        self.model = model
        self.channel = int(channel)
        self.layer = resolve_layer(model, layer)

    def target(self, tile: np.ndarray, weights: np.ndarray, use_prediction: bool):
        """``(forward, x)``: the explained target ``sum(logit * weights)`` as a function of the
        model's input, and ``tile`` as that input."""
        model, ch = self.model, self.channel
        w = torch.from_numpy(weights).to(model.device)

        def forward(x):
            return model.explain_target(model.logits(x).float(), ch, w, use_prediction)

        return forward, model.to_tensor(tile[None])

    def __call__(self, tile: np.ndarray, weights: np.ndarray, use_prediction: bool, index: int = 0) -> np.ndarray:
        """Raw (not normalised) Grad-CAM, float32 (h, w), of the target ``sum(logit * weights)``."""
        forward, x = self.target(tile, weights, use_prediction)
        with torch.enable_grad():
            cam = LayerGradCam(forward, self.layer).attribute(x, relu_attributions=True)
        if isinstance(cam, tuple):
            cam = cam[0]
        cam = LayerAttribution.interpolate(cam.detach().float(), tuple(tile.shape[:2]), interpolate_mode="bilinear")
        return cam[0, 0].clamp_min(0).cpu().numpy().astype(np.float32)
