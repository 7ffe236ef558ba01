"""Segmentation architectures, their registry, and safetensors checkpoints.

The names below load on first use (PEP 562), so ``import napari_histoseg.models`` or one of
its light modules (``bundled``, ``checkpoint``'s metadata) does not import torch; the
architectures register themselves when the registry is first asked
(:mod:`napari_histoseg.models.architectures`).
"""

from __future__ import annotations

_NAMES = {
    "CheckpointError": "checkpoint",
    "ModelMeta": "checkpoint",
    "load_checkpoint": "checkpoint",
    "read_meta": "checkpoint",
    "save_checkpoint": "checkpoint",
    "build_model": "registry",
    "list_architectures": "registry",
    "register": "registry",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if _NAMES[name] == "registry":
        from napari_histoseg.models import architectures, registry  # noqa: F401  (architectures: registers them)

        value = getattr(registry, name)
    else:
        from napari_histoseg.models import checkpoint

        value = getattr(checkpoint, name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
