"""Segmentation architectures, their registry, and safetensors checkpoints."""

from .._triton_guard import guard as _guard

_guard()  # before smp/timm/torchvision: see napari_histoseg._triton_guard

from . import lightmuseg, unet  # noqa: F401  (register the architectures)
from . import maskrcnn  # noqa: F401  (nuclei: Mask R-CNN, issue 11)
from . import classifier  # noqa: F401  (benign/malignant classifier, issue 12)
from .checkpoint import (
    CheckpointError,
    ModelMeta,
    load_checkpoint,
    read_meta,
    save_checkpoint,
)
from .registry import build_model, list_architectures, register

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
