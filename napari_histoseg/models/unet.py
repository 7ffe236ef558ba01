"""U-Net models of the seed papers, on segmentation-models-pytorch encoders.

* ``unet-mobilenet_v2``: the main paper's model, a U-Net whose encoder is MobileNetV2,
  with dropout (p = 0.3 by default) on the decoder's output before the segmentation head.
* ``unet-resnet50``: the U-Net + ResNet50 paper's model.

Encoders are built without pretrained weights: nothing is ever downloaded. To start
from ImageNet, load an encoder state dict afterwards (see ``train.py``).
"""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch
import torch.nn as nn

from napari_histoseg.models.registry import register


class DropoutUnet(nn.Module):
    """smp ``Unet`` with spatial dropout between the decoder and the segmentation head.

    Parameters
    ----------
    encoder_name : str
        An smp encoder name (``"mobilenet_v2"``, ``"resnet50"``, ...).
    classes : int
        Output channels: 1 for a binary tumour map (sigmoid), C for C classes (softmax).
    dropout : float
        Probability of :class:`torch.nn.Dropout2d` on the decoder output (active in
        training only).
    decoder_channels : tuple of int
        Channels of the five decoder stages.
    """

    #: Grad-CAM's default layer: the second decoder block (128 channels at stride 8), semantic
    #: enough to say why, fine enough to outline tumour nests.
    gradcam_layer = "net.decoder.blocks.1"

    def __init__(
        self,
        encoder_name: str = "mobilenet_v2",
        classes: int = 1,
        dropout: float = 0.3,
        decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    ):
        super().__init__()
        self.net = smp.Unet(
            encoder_name=encoder_name,
            encoder_weights=None,
            classes=classes,
            decoder_channels=tuple(decoder_channels),
        )
        self.dropout = nn.Dropout2d(p=float(dropout)) if dropout > 0 else nn.Identity()

    @property
    def encoder(self) -> nn.Module:
        return self.net.encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = self.net.encoder(x)
        decoded = self.net.decoder(features)
        return self.net.segmentation_head(self.dropout(decoded))


@register("unet-mobilenet_v2")
def unet_mobilenet_v2(classes: int = 1, dropout: float = 0.3, **kwargs) -> nn.Module:
    """The default model: U-Net with a MobileNetV2 encoder (main paper)."""
    return DropoutUnet("mobilenet_v2", classes=classes, dropout=dropout, **kwargs)


@register("unet-resnet50")
def unet_resnet50(classes: int = 1, dropout: float = 0.0, **kwargs) -> nn.Module:
    """U-Net with a ResNet50 encoder (the U-Net + ResNet50 paper)."""
    return DropoutUnet("resnet50", classes=classes, dropout=dropout, **kwargs)
