"""Image classifier on the MobileNetV2 encoder (benign / malignant).

``classifier-mobilenet_v2``: torchvision's ``mobilenet_v2(weights=None).features`` (the
tensor layout of ``../shared/weights/mobilenet_v2_imagenet.safetensors``, whose keys are
``features.*``), global average pooling, dropout and one linear layer giving one logit
per class. Inputs are RGB scaled to [-1, 1] (``ModelMeta.mean``/``std`` = 127.5), as the
ImageNet encoder was trained.

The network accepts any input size of at least 32 px: global pooling averages the
feature map, so a larger tile simply averages more positions.

Example
-------
>>> from napari_histoseg.models import build_model
>>> net = build_model("classifier-mobilenet_v2", classes=2)
>>> net(torch.zeros(1, 3, 224, 224)).shape
torch.Size([1, 2])
"""

from __future__ import annotations

import torch
import torch.nn as nn
from torchvision.models import mobilenet_v2

from napari_histoseg.models.registry import register


class MobileNetClassifier(nn.Module):
    """MobileNetV2 features + global average pooling + dropout + linear head.

    Parameters
    ----------
    classes : int
        Number of output logits (2 for benign/malignant; softmax over them).
    dropout : float
        Dropout probability before the linear head (training only).
    """

    #: Grad-CAM's default layer: the last convolution of the features (stride 32).
    gradcam_layer = "features.18"

    def __init__(self, classes: int = 2, dropout: float = 0.2):
        super().__init__()
        self.features = mobilenet_v2(weights=None).features  # 1280 channels, stride 32
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(p=float(dropout))
        self.head = nn.Linear(1280, int(classes))

    @property
    def encoder(self) -> nn.Module:
        return self.features

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last feature map (N, 1280, H/32, W/32)."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(f))


@register("classifier-mobilenet_v2")
def classifier_mobilenet_v2(classes: int = 2, dropout: float = 0.2) -> nn.Module:
    """Benign/malignant classifier: MobileNetV2 encoder with a pooled linear head."""
    return MobileNetClassifier(classes=classes, dropout=dropout)
