"""Grad-CAM of a segmentation target (Vinogradova et al. 2020), on captum's ``LayerGradCam``.

For a layer with activations ``A_k`` (k = channels), Grad-CAM weights every channel by
the mean gradient of the target over the layer, ``a_k = mean(dT / dA_k)``, and maps
``ReLU(sum_k a_k A_k)``, upsampled bilinearly to the tile
(``LayerAttribution.interpolate``). For segmentation the target ``T`` is a sum of the
tumour logit over pixels: the predicted mask, a drawn region or the whole view. For a
classifier (logits of shape (N, C)) the target is the tile's logit of ``channel``, and
the caller restricts the blended map to the region (see ``classifier.infer``).

The map is only as sharp as the layer: a layer at stride s gives blobs of about s px.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn
from captum.attr import LayerAttribution, LayerGradCam

from napari_histoseg.explanations.methods import ExplainError

#: Default Grad-CAM layer by architecture class. See :func:`default_layer`.
DEFAULT_LAYERS = {
    "DropoutUnet": "net.decoder.blocks.1",
    "LightMuSeg": "frfm.1",
    "MobileNetClassifier": "features.18",  # the classifier's last convolution (stride 32)
}

_SKIP = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Identity, nn.modules.dropout._DropoutNd, nn.Sigmoid)


def _blocks(module: nn.Module) -> list[str]:
    """Names of the network's blocks: items of a Sequential or a ModuleList (encoder
    stages, decoder blocks, layers of a plain stack), not the insides of a block already
    listed, and no BatchNorm, activation or dropout."""
    kept: list[str] = []
    for name, mod in module.named_modules():
        if not name or isinstance(mod, _SKIP) or any(name.startswith(k + ".") for k in kept):
            continue
        parent = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
        if isinstance(parent, (nn.Sequential, nn.ModuleList)):
            kept.append(name)
    return kept


def _stage_ends(probed: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Of consecutive blocks of one container at one stride, keep the last (a stage's output)."""
    out = []
    for i, (name, c, s) in enumerate(probed):
        nxt = probed[i + 1] if i + 1 < len(probed) else None
        parent = name.rsplit(".", 1)[0]
        if nxt is None or nxt[2] != s or nxt[0].rsplit(".", 1)[0] != parent:
            out.append((name, c, s))
    return out


def _probe(module: nn.Module, device, size: int = 64) -> list[tuple[str, int, int]]:
    """Run a small input through ``module`` and list (name, channels, stride) of every
    submodule whose output is a 4-D tensor, in the order they ran."""
    seen: list[tuple[str, int, int]] = []
    handles = []

    def hook(name):
        def fn(mod, inp, out):
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 0:
                seen.append((name, int(out.shape[1]), max(1, size // int(out.shape[-1]))))
        return fn

    for name in _blocks(module):
        handles.append(module.get_submodule(name).register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            module(torch.zeros(1, 3, size, size, device=device))
    finally:
        for h in handles:
            h.remove()
    order, out = {}, []
    for name, c, s in seen:  # a module that ran twice keeps its first place
        if name not in order:
            order[name] = len(out)
            out.append((name, c, s))
    return out


def default_layer(module: nn.Module, device="cpu") -> str:
    """Name of the default Grad-CAM layer of ``module``.

    For the U-Nets of this project it is the second decoder block
    (``net.decoder.blocks.1``, 128 channels at stride 8): it has seen the whole encoder
    (the bottleneck's context) and the stride-8 skip, so it is semantic enough to say
    *why* and fine enough (8 px) to outline tumour nests; the bottleneck (stride 32) is
    blocky, and the last decoder blocks mostly repeat the output mask. Other
    architectures take :data:`DEFAULT_LAYERS`, else the last layer at the network's
    coarsest stride (the classic Grad-CAM choice: the end of the feature extractor).
    """
    name = DEFAULT_LAYERS.get(type(module).__name__)
    if name is not None:
        try:
            module.get_submodule(name)
            return name
        except AttributeError:
            pass
    probed = _probe(module, device)
    if not probed:
        raise ExplainError(f"{type(module).__name__} has no layer with a spatial output for Grad-CAM")
    coarsest = max(s for _, _, s in probed)
    return [n for n, _, s in probed if s == coarsest][-1]


def candidate_layers(model, size: int = 64) -> list[tuple[str, int, int]]:
    """Layers Grad-CAM can use, as ``(name, channels, stride)`` in execution order.

    Lists the network's blocks whose output is an image-shaped tensor (encoder
    stages, decoder blocks, convolutions), the default first. For a dropdown.
    """
    module = model.module
    device = next(module.parameters()).device
    layers = _stage_ends(_probe(module, device, size=size))
    default = default_layer(module, device)
    layers.sort(key=lambda item: item[0] != default)
    return layers


def resolve_layer(module: nn.Module, layer) -> nn.Module:
    """The submodule named by ``layer`` (a dotted path), a module itself, or the default."""
    if isinstance(layer, nn.Module):
        return layer
    device = next(module.parameters()).device
    name = layer if layer else default_layer(module, device)
    try:
        return module.get_submodule(str(name))
    except AttributeError:
        names = [n for n, _, _ in _probe(module, device)]
        hint = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
        raise ExplainError(f"{type(module).__name__} has no layer {name!r}; layers include {hint}") from None


def target_mask_from_logits(logits: torch.Tensor, channel: int) -> torch.Tensor:
    """Boolean (N, h, w) of the pixels predicted as ``channel`` (p >= 0.5 or argmax)."""
    if logits.shape[1] == 1:
        return logits[:, 0] >= 0
    return logits.argmax(1) == channel


class GradCam:
    """Per-tile Grad-CAM for the tiled driver (see :func:`napari_histoseg.explanations.explain`).

    Parameters
    ----------
    model : Segmenter
        A torch segmenter.
    layer : str, torch.nn.Module or None
        The layer (dotted path) or None for :func:`default_layer`.
    channel : int
        Output channel of the tumour class.
    """

    combine, depth, margin, always = "blend", 1, 0, False  # see explain.tiled

    def __init__(self, model, layer=None, channel: int = 0):
        self.model = model
        self.channel = int(channel)
        self.layer = resolve_layer(model.module, layer)

    def __call__(self, tile: np.ndarray, weights: np.ndarray, use_prediction: bool, index: int = 0) -> np.ndarray:
        """Raw (not normalised) Grad-CAM, float32 (h, w), of the target ``sum(logit * weights)``."""
        model, ch = self.model, self.channel
        w = torch.from_numpy(weights).to(model.device)

        def forward(x):
            logits = model.logits(x).float()
            if logits.ndim == 2:  # a classifier: the target is the class logit of the tile
                return logits[:, ch]
            mask = w
            if use_prediction:
                mask = w * target_mask_from_logits(logits.detach(), ch)
            return (logits[:, ch] * mask).sum(dim=(1, 2))

        x = model.to_tensor(tile[None])
        with torch.enable_grad():
            cam = LayerGradCam(forward, self.layer).attribute(x, relu_attributions=True)
        if isinstance(cam, tuple):
            cam = cam[0]
        cam = LayerAttribution.interpolate(cam.detach().float(), tuple(tile.shape[:2]), interpolate_mode="bilinear")
        return cam[0, 0].clamp_min(0).cpu().numpy().astype(np.float32)
