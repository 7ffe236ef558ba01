"""napari dock widgets: thin translators between layers and the core."""

import sys


def _keep_triton_away_from_mesa_llvm():
    """Stop ``import triton`` when Mesa's LLVM is already loaded in this process.

    napari's canvas on a machine without a GPU driver renders with Mesa's llvmpipe,
    which loads libLLVM. Triton (pulled in by torchvision and timm through torch._dynamo)
    bundles another LLVM, and loading it afterwards crashes the whole process with a
    segmentation fault. napari-histoseg never needs triton (no torch.compile), so in that
    one situation its import is made to fail cleanly; torch then treats triton as absent.
    Set HISTOSEG_ALLOW_TRITON=1 to skip this.
    """
    import os

    if "triton" in sys.modules or os.environ.get("HISTOSEG_ALLOW_TRITON") == "1":
        return
    try:
        with open("/proc/self/maps") as f:
            mesa_llvm = "libLLVM" in f.read()
    except OSError:  # not Linux: no such clash seen
        return
    if mesa_llvm:
        sys.modules["triton"] = None


_keep_triton_away_from_mesa_llvm()

from .segment import SegmentWidget  # noqa: E402

__all__ = ["SegmentWidget"]
