"""Registry of segmentation architectures.

Each architecture is a builder function registered under a stable name; checkpoints
record that name and the builder's keyword arguments, so a checkpoint can always be
rebuilt exactly (see :mod:`napari_histoseg.models.checkpoint`).

Example
-------
>>> from napari_histoseg.models import build_model, list_architectures
>>> "unet-mobilenet_v2" in list_architectures()
True
>>> net = build_model("unet-mobilenet_v2", classes=1)
"""

from __future__ import annotations

from typing import Callable, Dict

import torch.nn as nn

_REGISTRY: Dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator that registers ``builder(**kwargs) -> nn.Module`` under ``name``."""

    def wrap(builder: Callable[..., nn.Module]):
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = builder
        return builder

    return wrap


def list_architectures() -> list[str]:
    """Names of all registered architectures, sorted."""
    return sorted(_REGISTRY)


def build_model(arch: str, **kwargs) -> nn.Module:
    """Build an untrained network of architecture ``arch``.

    Parameters
    ----------
    arch : str
        A name from :func:`list_architectures`, e.g. ``"unet-mobilenet_v2"``.
    **kwargs
        Passed to the architecture's builder (``classes``, ``dropout``, ...).

    Raises
    ------
    KeyError
        If ``arch`` is not registered; the message lists the known names.
    """
    try:
        builder = _REGISTRY[arch]
    except KeyError:
        raise KeyError(
            f"unknown architecture {arch!r}; known: {', '.join(list_architectures())}"
        ) from None
    return builder(**kwargs)
