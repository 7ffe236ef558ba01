"""Keep triton's LLVM away from Mesa's in one process.

napari's canvas on a machine without a GPU driver renders with Mesa's llvmpipe, which
loads libLLVM. Triton (imported by torchvision and timm through torch._dynamo) bundles
another LLVM, and loading it afterwards kills the whole process with a segmentation
fault. napari-histoseg never needs triton (no torch.compile), so in exactly that
situation :func:`guard` makes ``import triton`` fail cleanly, and torch then treats
triton as absent. Set ``HISTOSEG_ALLOW_TRITON=1`` to skip this.
"""

from __future__ import annotations

import os
import sys


def guard() -> bool:
    """Block ``import triton`` if Mesa's LLVM is loaded and triton is not; True if blocked."""
    if "triton" in sys.modules or os.environ.get("HISTOSEG_ALLOW_TRITON") == "1":
        return False
    try:
        with open("/proc/self/maps") as f:
            mesa_llvm = "libLLVM" in f.read()
    except OSError:  # not Linux: no such clash seen
        return False
    if mesa_llvm:
        sys.modules["triton"] = None
    return mesa_llvm
