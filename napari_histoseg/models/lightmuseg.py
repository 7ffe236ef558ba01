"""LightMuSeg: a light MobileNetV2 U-shaped network with multi-scale skip fusion.

Architecture (as the LightMuSeg paper describes it):

* **Encoder**: smp's MobileNetV2 (features at strides 2, 4, 8, 16, 32 with 16, 24, 32,
  96, 1280 channels); built without weights, load ImageNet weights into ``.encoder``.
* **MSFFM** (Multi-Scale Feature Fusion Module) on each of the four skips: parallel
  1×1, 3×3 and 5×5 convolutions, concatenated, fused by a 1×1 convolution, then
  squeeze-and-excitation channel attention, then spatial attention (a 7×7 convolution
  over the channel-wise mean and max, sigmoid). Shape in = shape out.
* **FRFM** (Feature Refinement and Fusion Module), one per decoder stage: the deeper
  feature is upsampled ×2 to the skip's size; skip and upsampled feature are
  concatenated, globally average-pooled, and a two-layer MLP (reduction 4, sigmoid)
  gives one weight per channel, which reweights both inputs; the reweighted features
  are concatenated and a 1×1 convolution brings them back to the stage's channels
  (followed here by one 3×3 convolution + BN + ReLU to refine after the upsampling).
* A final ×2 upsampling and a 3×3 head give the logits at the input resolution.

Variants (``variant``): ``"v1"`` freezes the encoder (no gradients, its batch-norm
statistics fixed: the encoder stays in eval mode), ``"v2"`` fine-tunes it, ``"v3"`` is V2
with deep supervision: in training mode ``forward`` returns ``[main, side_1, ...,
side_4]``, the side outputs being 1×1-convolution logits of the four decoder stages at
their own resolutions (strides 16, 8, 4, 2); in eval mode it returns the main output only.
Registered as ``lightmuseg`` (``variant`` argument) and as ``lightmuseg-v1``, ``-v2``,
``-v3``.

Not an smp ``SegmentationModel`` subclass: that base class's ``forward`` returns one
mask, and V3 must return side outputs in training; the encoder is smp's all the same.
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn
import torch.nn.functional as F

from napari_histoseg.models.registry import register


def conv_bn_relu(cin: int, cout: int, k: int = 3) -> nn.Sequential:
    """Convolution (same padding, no bias) + BatchNorm + ReLU."""
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class SqueezeExcitation(nn.Module):
    """Channel attention: global average pool, C -> C/r -> C MLP, sigmoid, rescale."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(channels // reduction, 4)
        self.fc = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, x):
        w = self.fc(x.mean(dim=(2, 3)))
        return x * w[:, :, None, None]


class SpatialAttention(nn.Module):
    """Spatial attention: 7×7 convolution over channel mean and max, sigmoid, rescale."""

    def __init__(self, kernel: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2)

    def forward(self, x):
        s = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(s))


class MSFFM(nn.Module):
    """Multi-Scale Feature Fusion Module; (N, C, H, W) -> (N, C, H, W).

    Parameters
    ----------
    channels : int
        Channels of the skip feature (kept).
    branch_channels : int or None
        Channels of each of the 1×1, 3×3 and 5×5 branches (default: ``channels``).
    reduction : int
        Squeeze-and-excitation reduction.
    """

    def __init__(self, channels: int, branch_channels: int | None = None, reduction: int = 4):
        super().__init__()
        b = branch_channels or channels
        self.branches = nn.ModuleList([conv_bn_relu(channels, b, k) for k in (1, 3, 5)])
        self.fuse = conv_bn_relu(3 * b, channels, 1)
        self.se = SqueezeExcitation(channels, reduction)
        self.sa = SpatialAttention(7)

    def forward(self, x):
        y = self.fuse(torch.cat([br(x) for br in self.branches], dim=1))
        return self.sa(self.se(y))


class FRFM(nn.Module):
    """Feature Refinement and Fusion Module.

    ``forward(skip (N, Cs, H, W), deep (N, Cd, H/2, W/2)) -> (N, out, H, W)``.
    """

    def __init__(self, skip_channels: int, deep_channels: int, out_channels: int, reduction: int = 4):
        super().__init__()
        c = skip_channels + deep_channels
        hidden = max(c // reduction, 4)
        self.mlp = nn.Sequential(nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, c), nn.Sigmoid())
        self.project = conv_bn_relu(c, out_channels, 1)
        self.refine = conv_bn_relu(out_channels, out_channels, 3)

    def forward(self, skip, deep):
        up = F.interpolate(deep, size=skip.shape[-2:], mode="bilinear", align_corners=False)
        cat = torch.cat([skip, up], dim=1)
        w = self.mlp(cat.mean(dim=(2, 3)))[:, :, None, None]
        fused = cat * w  # reweights both inputs (their channels lie side by side in cat)
        return self.refine(self.project(fused))


class LightMuSeg(nn.Module):
    """LightMuSeg network (see the module docstring).

    Parameters
    ----------
    classes : int
        Output channels (1 = binary tumour map).
    variant : {"v1", "v2", "v3"}
        Frozen encoder, fine-tuned encoder, fine-tuned encoder + deep supervision.
    decoder_channels : tuple of 4 ints
        Channels of the decoder stages at strides 16, 8, 4, 2.
    """

    #: Grad-CAM's default layer: the decoder stage at stride 8.
    gradcam_layer = "frfm.1"

    def __init__(self, classes: int = 1, variant: str = "v2", decoder_channels=(96, 64, 32, 16)):
        super().__init__()
        variant = variant.lower()
        if variant not in ("v1", "v2", "v3"):
            raise ValueError(f"LightMuSeg variant must be v1, v2 or v3, got {variant!r}")
        self.variant = variant
        self.encoder = smp.encoders.get_encoder("mobilenet_v2", in_channels=3, depth=5, weights=None)
        enc = self.encoder.out_channels  # [3, 16, 24, 32, 96, 1280]
        skips = enc[1:5][::-1]  # 96, 32, 24, 16 (strides 16, 8, 4, 2)
        self.msffm = nn.ModuleList([MSFFM(c) for c in skips])
        self.center = conv_bn_relu(enc[5], decoder_channels[0] * 2, 1)
        deep = [decoder_channels[0] * 2, *decoder_channels[:-1]]
        self.frfm = nn.ModuleList([FRFM(s, d, o) for s, d, o in zip(skips, deep, decoder_channels)])
        self.head = nn.Sequential(conv_bn_relu(decoder_channels[-1], decoder_channels[-1], 3),
                                  nn.Conv2d(decoder_channels[-1], classes, 1))
        self.side_heads = (nn.ModuleList([nn.Conv2d(c, classes, 1) for c in decoder_channels])
                           if variant == "v3" else None)
        if variant == "v1":
            for p in self.encoder.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True):
        """Like ``nn.Module.train``, but V1's frozen encoder always stays in eval mode."""
        super().train(mode)
        if self.variant == "v1":
            self.encoder.eval()
        return self

    def forward(self, x):
        feats = self.encoder(x)
        skips = feats[1:5][::-1]
        y = self.center(feats[5])
        stages = []
        for msffm, frfm, skip in zip(self.msffm, self.frfm, skips):
            y = frfm(msffm(skip), y)
            stages.append(y)
        y = F.interpolate(y, size=x.shape[-2:], mode="bilinear", align_corners=False)
        out = self.head(y)
        if self.side_heads is not None and self.training:
            return [out] + [h(s) for h, s in zip(self.side_heads, stages)]
        return out


@register("lightmuseg")
def lightmuseg(classes: int = 1, variant: str = "v2", **kwargs) -> nn.Module:
    """LightMuSeg with ``variant`` "v1" (frozen encoder), "v2" or "v3" (deep supervision)."""
    return LightMuSeg(classes=classes, variant=variant, **kwargs)


@register("lightmuseg-v1")
def lightmuseg_v1(classes: int = 1, **kwargs) -> nn.Module:
    """LightMuSeg V1: frozen MobileNetV2 encoder."""
    return LightMuSeg(classes=classes, variant="v1", **kwargs)


@register("lightmuseg-v2")
def lightmuseg_v2(classes: int = 1, **kwargs) -> nn.Module:
    """LightMuSeg V2: fine-tuned MobileNetV2 encoder."""
    return LightMuSeg(classes=classes, variant="v2", **kwargs)


@register("lightmuseg-v3")
def lightmuseg_v3(classes: int = 1, **kwargs) -> nn.Module:
    """LightMuSeg V3: V2 with deep supervision on the decoder's side outputs."""
    return LightMuSeg(classes=classes, variant="v3", **kwargs)
