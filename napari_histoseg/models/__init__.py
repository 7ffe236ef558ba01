"""Segmentation architectures, their registry, and safetensors checkpoints."""

from napari_histoseg.core.triton_guard import guard as _guard

_guard()  # before smp/timm/torchvision: see napari_histoseg.core.triton_guard

from napari_histoseg.models import (  # noqa: F401  (register the architectures)
    classifier,  # noqa: F401  (benign/malignant classifier)
    lightmuseg,
    maskrcnn,  # noqa: F401  (nuclei: Mask R-CNN)
    unet,
)
from napari_histoseg.models.checkpoint import (
    CheckpointError,
    ModelMeta,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from napari_histoseg.models.registry import build_model, list_architectures, register

__all__ = [
    "CheckpointError",
    "ModelMeta",
    "build_model",
    "list_architectures",
    "load_checkpoint",
    "read_meta",
    "register",
    "save_checkpoint",
]
