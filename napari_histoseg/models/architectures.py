"""Import every network builder once, so the registry knows them all.

Kept apart from ``napari_histoseg.models`` so that importing the package (for its metadata,
checkpoint paths or the ``BUNDLED`` name) does not import torch, torchvision and smp: they
load when a network is built, listed or its checkpoint read.
"""

from napari_histoseg.core.triton_guard import guard as _guard

_guard()  # before smp/timm/torchvision: see napari_histoseg.core.triton_guard

from napari_histoseg.models import (  # noqa: E402, F401  (each registers its architectures)
    classifier,  # benign/malignant classifier
    lightmuseg,
    maskrcnn,  # nuclei: Mask R-CNN
    unet,
)
