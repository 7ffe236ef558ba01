"""Choosing where tensors live (cuda, then mps, then cpu) and at what precision.

Nothing here imports torch until a device is resolved: :func:`available_devices` (what a widget
offers) and :func:`cpu_has_bf16` read the machine without it, so opening a widget does not
load torch's few hundred megabytes.
"""

from __future__ import annotations

import functools
import os
import platform
import shutil
import sys


def resolve_device(device="auto"):
    """Turn ``"auto"`` (or None) into the best available ``torch.device``, and check the others.

    ``"auto"`` picks cuda where a GPU is visible, then Apple's mps, then cpu. Asking
    for a device that is not available raises ``ValueError`` with the reason, rather
    than failing deep inside torch.
    """
    import torch

    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was asked for, but torch sees no CUDA GPU here")
    if dev.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError("device 'mps' was asked for, but it is not available here")
    return dev


def _gpu_visible() -> bool:
    """An NVIDIA driver on this machine (without importing torch)."""
    return os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None


def available_devices() -> list[str]:
    """Device choices to offer a user: ``auto`` first, then what this machine has.

    Where torch is already imported it is asked; otherwise the machine is read without it
    (an NVIDIA driver for cuda, Apple silicon for mps), and :func:`resolve_device` says so
    clearly if torch then cannot use the device (a CPU-only torch build on a GPU machine).
    """
    out = ["auto", "cpu"]
    torch = sys.modules.get("torch")
    if torch is not None:
        if torch.cuda.is_available():
            out.append("cuda")
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            out.append("mps")
        return out
    if _gpu_visible():
        out.append("cuda")
    if sys.platform == "darwin" and platform.machine() == "arm64":
        out.append("mps")
    return out


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_has_bf16() -> bool:
    """Whether this x86 CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16), where
    PyTorch's bf16 convolutions run about twice as fast as fp32 (BENCHMARKS.md › Inference).

    ``HISTOSEG_CPU_BF16=0`` or ``1`` overrides the detection. Other CPUs (ARM, or x86 without
    those instructions, where bf16 is emulated and slower) answer False.
    """
    forced = os.environ.get("HISTOSEG_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    return _x86_bf16()


@functools.lru_cache(maxsize=1)
def _x86_bf16() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def cpu_has_vnni() -> bool:
    """Whether this x86 CPU has int8 dot-product instructions (AVX512-VNNI or AVX-VNNI), where
    ONNX Runtime's int8 convolutions run fastest. ``HISTOSEG_CPU_VNNI=0`` or ``1`` overrides."""
    forced = os.environ.get("HISTOSEG_CPU_VNNI")
    if forced in ("0", "1"):
        return forced == "1"
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    return bool(_cpu_flags() & {"avx512_vnni", "avx_vnni"})


def torch_precision(device="auto", bf16_checked: bool = True) -> tuple[str, str]:
    """The precision PyTorch inference runs in by default on ``device``, and why: bfloat16 on a
    CPU that computes it in hardware (about twice float32's speed there) when the model was
    checked in it (``bf16_checked``), else float32; on a GPU the model's own default (float16
    on cuda where it supports it). ``HISTOSEG_CPU_BF16=0`` keeps a CPU in float32."""
    dev = resolve_device(device)
    if dev.type != "cpu":
        return "default", f"PyTorch on {dev.type}" + (" (float16)" if dev.type == "cuda" else "")
    if not cpu_has_bf16():
        return "fp32", "PyTorch float32 (this CPU has no bfloat16 instructions)"
    if not bf16_checked:
        return "fp32", "PyTorch float32 (this model has not been checked in bfloat16)"
    return "bf16", "PyTorch bfloat16 (this CPU computes it in hardware: AVX512-BF16/AMX)"
