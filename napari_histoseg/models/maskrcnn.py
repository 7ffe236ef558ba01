"""Mask R-CNN for nuclei (instances), on torchvision's detection models.

* ``maskrcnn-mobilenet_v2``: a feature pyramid (FPN) over the stride-4, 8, 16 and 32
  stages of torchvision's MobileNetV2 ``features`` (the layout of
  ``../shared/weights/mobilenet_v2_imagenet.safetensors``), with a lighter box and mask
  head than torchvision's default (FPN and heads of ``channels`` wide).
* ``maskrcnn-resnet50``: torchvision's ``maskrcnn_resnet50_fpn`` (the paper's option).

Both are built with ``weights=None`` and ``weights_backbone=None``: nothing is ever
downloaded. Anchors are sized for nuclei (about 4-20 µm across: 15-80 px at 0.25 µm/px),
one size per pyramid level from 8 to 128 px, and the detector keeps up to
``detections`` nuclei per image.

The detector never resizes its input (:class:`NoResizeTransform`): the caller brings
the image to the model's mpp (see :mod:`napari_histoseg.nuclei.infer`). Images go in as
float RGB in [0, 1]; ``image_mean``/``image_std`` of 0.5 scale them to [-1, 1], what the
ImageNet MobileNetV2 weights expect.

Example
-------
>>> from napari_histoseg.models import build_model
>>> net = build_model("maskrcnn-mobilenet_v2")          # doctest: +SKIP
>>> net.eval(); out = net([torch.rand(3, 256, 256)])    # doctest: +SKIP
"""

from __future__ import annotations

from collections import OrderedDict

import torch.nn as nn
from torchvision.models import mobilenet_v2
from torchvision.models.detection import MaskRCNN, maskrcnn_resnet50_fpn
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from napari_histoseg.models.registry import register

# MobileNetV2 ``features`` blocks that end each stride: 4, 8, 16, 32.
_MNV2_RETURN = {"3": "0", "6": "1", "13": "2", "18": "3"}
_MNV2_CHANNELS = [24, 32, 96, 1280]
ANCHOR_SIZES = ((8,), (16,), (32,), (64,), (128,))


class NoResizeTransform(GeneralizedRCNNTransform):
    """torchvision's detection transform without its resize (normalise and batch only)."""

    def resize(self, image, target=None):
        return image, target


def _detector_kwargs(detections: int) -> dict:
    return dict(
        rpn_pre_nms_top_n_train=3000, rpn_post_nms_top_n_train=2000,
        rpn_pre_nms_top_n_test=1000, rpn_post_nms_top_n_test=1000,
        rpn_batch_size_per_image=256,
        box_batch_size_per_image=512,
        box_detections_per_img=int(detections),
        box_nms_thresh=0.4,
        box_score_thresh=0.05,
    )


def _no_resize(model: nn.Module, mean, std) -> nn.Module:
    model.transform = NoResizeTransform(min_size=256, max_size=100000, image_mean=list(mean),
                                        image_std=list(std), size_divisible=32)
    return model


class MobileNetV2Trunk(nn.Module):
    """MobileNetV2 ``features`` (torchvision layout) returning the stride-4..32 maps."""

    def __init__(self):
        super().__init__()
        self.features = mobilenet_v2(weights=None).features

    def forward(self, x):
        out = OrderedDict()
        for i, block in enumerate(self.features):
            x = block(x)
            key = _MNV2_RETURN.get(str(i))
            if key is not None:
                out[key] = x
        return out


class _Trunk(BackboneWithFPN):
    """``BackboneWithFPN`` whose body is :class:`MobileNetV2Trunk` (keys ``body.features.*``)."""

    def __init__(self, channels: int):
        nn.Module.__init__(self)
        from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

        self.body = MobileNetV2Trunk()
        self.fpn = FeaturePyramidNetwork(_MNV2_CHANNELS, channels, extra_blocks=LastLevelMaxPool())
        self.out_channels = channels


@register("maskrcnn-mobilenet_v2")
def maskrcnn_mobilenet_v2(classes: int = 2, channels: int = 128, representation: int = 256,
                          detections: int = 600) -> nn.Module:
    """Mask R-CNN with an FPN on MobileNetV2, sized for nuclei.

    Parameters
    ----------
    classes : int
        Detector classes including background (2: background and nucleus).
    channels : int
        Width of the feature pyramid and of the four mask-head convolutions.
    representation : int
        Width of the box head's two fully connected layers.
    detections : int
        Most nuclei kept per image (per tile in tiled inference).
    """
    backbone = _Trunk(channels)
    anchors = AnchorGenerator(ANCHOR_SIZES, ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES))
    names = ["0", "1", "2", "3"]
    box_roi = MultiScaleRoIAlign(names, output_size=7, sampling_ratio=2)
    mask_roi = MultiScaleRoIAlign(names, output_size=14, sampling_ratio=2)
    box_head = TwoMLPHead(channels * 7 * 7, representation)

    model = MaskRCNN(
        backbone, num_classes=None, rpn_anchor_generator=anchors,
        box_roi_pool=box_roi, box_head=box_head,
        box_predictor=FastRCNNPredictor(representation, classes),
        mask_roi_pool=mask_roi, mask_head=MaskRCNNHeads(channels, (channels,) * 4, 1),
        mask_predictor=MaskRCNNPredictor(channels, channels, classes),
        **_detector_kwargs(detections),
    )
    return _no_resize(model, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


@register("maskrcnn-resnet50")
def maskrcnn_resnet50(classes: int = 2, detections: int = 600) -> nn.Module:
    """torchvision's ``maskrcnn_resnet50_fpn`` with nucleus anchors (no pretrained weights).

    Its input is scaled with the ImageNet mean and std, as torchvision's ResNet50 expects.
    """
    model = maskrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=classes,
                                  rpn_anchor_generator=AnchorGenerator(
                                      ANCHOR_SIZES, ((0.5, 1.0, 2.0),) * len(ANCHOR_SIZES)),
                                  trainable_backbone_layers=5, **_detector_kwargs(detections))
    return _no_resize(model, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def load_mobilenet_v2_features(model: nn.Module, path: str) -> int:
    """Load ``features.*`` ImageNet weights into a ``maskrcnn-mobilenet_v2``; returns the count."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    body = model.backbone.body
    missing, unexpected = body.load_state_dict(
        {k: v for k, v in state.items() if k.startswith("features.")}, strict=False)
    if missing:
        raise ValueError(f"{path}: {len(missing)} MobileNetV2 tensors missing (e.g. {missing[0]})")
    return len(state) - len(unexpected)


def is_instance_model(model: nn.Module) -> bool:
    """True for a Mask R-CNN built here (its forward takes a list of images)."""
    return isinstance(model, MaskRCNN)


__all__ = ["maskrcnn_mobilenet_v2", "maskrcnn_resnet50", "load_mobilenet_v2_features",
           "is_instance_model", "NoResizeTransform"]
