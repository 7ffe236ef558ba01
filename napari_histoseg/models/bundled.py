"""The checkpoints that ship with the package."""

from __future__ import annotations

from pathlib import Path

from napari_histoseg.models.checkpoint import CheckpointError

DEFAULT_MODEL = Path(__file__).resolve().parent.parent / "weights" / "default.safetensors"


def bundled_model_path() -> Path:
    """Path of the bundled default model; :class:`CheckpointError` if this install lacks it."""
    if not DEFAULT_MODEL.is_file():
        raise CheckpointError(
            f"the bundled default model ({DEFAULT_MODEL.name}) is not in this install; "
            "pass the path of a .safetensors checkpoint instead"
        )
    return DEFAULT_MODEL


BUNDLED = "bundled"
