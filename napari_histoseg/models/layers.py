"""A network's blocks and their output strides, found by one small forward pass.

Grad-CAM needs a layer with an image-shaped output. An architecture names its default
with a class attribute ``gradcam_layer`` (a dotted path: ``DropoutUnet.gradcam_layer =
"net.decoder.blocks.1"``); for any other network the default is the last block at the
network's coarsest stride (the classic Grad-CAM choice: the end of the feature extractor).
:func:`spatial_blocks` lists the candidates for a dropdown.
"""

from __future__ import annotations

import torch
import torch.nn as nn

_SKIP = (nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.Identity, nn.modules.dropout._DropoutNd, nn.Sigmoid)


def blocks(module: nn.Module) -> list[str]:
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


def probe(module: nn.Module, device="cpu", size: int = 64) -> list[tuple[str, int, int]]:
    """Run a small input through ``module`` and list (name, channels, stride) of every
    block whose output is a 4-D tensor, in the order they ran."""
    seen: list[tuple[str, int, int]] = []
    handles = []

    def hook(name):
        def fn(mod, inp, out):
            if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] > 0:
                seen.append((name, int(out.shape[1]), max(1, size // int(out.shape[-1]))))
        return fn

    for name in blocks(module):
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


def stage_ends(probed: list[tuple[str, int, int]]) -> list[tuple[str, int, int]]:
    """Of consecutive blocks of one container at one stride, keep the last (a stage's output)."""
    out = []
    for i, (name, c, s) in enumerate(probed):
        nxt = probed[i + 1] if i + 1 < len(probed) else None
        parent = name.rsplit(".", 1)[0]
        if nxt is None or nxt[2] != s or nxt[0].rsplit(".", 1)[0] != parent:
            out.append((name, c, s))
    return out


def default_layer(module: nn.Module, device="cpu") -> str:
    """Name of the default Grad-CAM layer of ``module``.

    The architecture's own ``gradcam_layer`` where it names one that exists, else the last
    block at the coarsest stride. :class:`ValueError` for a network without a spatial block.
    """
    name = getattr(type(module), "gradcam_layer", None)
    if name is not None:
        try:
            module.get_submodule(name)
            return name
        except AttributeError:
            pass
    probed = probe(module, device)
    if not probed:
        raise ValueError(f"{type(module).__name__} has no layer with a spatial output for Grad-CAM")
    coarsest = max(s for _, _, s in probed)
    return [n for n, _, s in probed if s == coarsest][-1]


def spatial_blocks(module: nn.Module, device="cpu", size: int = 64) -> list[tuple[str, int, int]]:
    """``(name, channels, stride)`` of the blocks with an image-shaped output, one per stage,
    in execution order with the default layer first."""
    layers = stage_ends(probe(module, device, size=size))
    default = default_layer(module, device)
    layers.sort(key=lambda item: item[0] != default)
    return layers
