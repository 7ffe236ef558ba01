"""The checkpoints that ship with the package: the one table of them.

``BUNDLED_CHECKPOINTS`` maps a task (the ``task`` of :class:`~napari_histoseg.models.checkpoint.ModelMeta`)
to its file in ``napari_histoseg/weights``; :func:`bundled_path` is how everything else finds one.
``BUNDLED`` is the model reference (``"bundled"``) that backends, the server and widgets use for
the bundled tumour model.
"""

from __future__ import annotations

from pathlib import Path

from napari_histoseg.models.checkpoint import CheckpointError

WEIGHTS = Path(__file__).resolve().parent.parent / "weights"

BUNDLED_CHECKPOINTS: dict[str, Path] = {
    "segmentation": WEIGHTS / "default.safetensors",
    "instances": WEIGHTS / "nuclei.safetensors",
    "classification": WEIGHTS / "classifier.safetensors",
}

# What to do instead when this install lacks the file, by task.
_INSTEAD = {
    "segmentation": "pass the path of a .safetensors segmentation checkpoint instead",
    "instances": "pass a nucleus checkpoint, or train one with `histoseg train --task instances`",
    "classification": "pass the path of a classification checkpoint instead",
}

BUNDLED = "bundled"

#: The bundled tumour segmentation model (the package's default model).
DEFAULT_MODEL = BUNDLED_CHECKPOINTS["segmentation"]


def bundled_path(task: str = "segmentation") -> Path:
    """Path of the bundled checkpoint of ``task``; :class:`CheckpointError` if this install lacks it.

    >>> bundled_path("instances").name
    'nuclei.safetensors'
    """
    try:
        path = BUNDLED_CHECKPOINTS[task]
    except KeyError:
        raise CheckpointError(
            f"no bundled model for task {task!r}; bundled: {', '.join(BUNDLED_CHECKPOINTS)}"
        ) from None
    if not path.is_file():
        raise CheckpointError(
            f"the bundled {task} model ({path.name}) is not in this install; {_INSTEAD[task]}"
        )
    return path


def is_bundled(path) -> bool:
    """Whether ``path`` is one of the bundled checkpoints."""
    try:
        return Path(path).resolve() in {p.resolve() for p in BUNDLED_CHECKPOINTS.values()}
    except (OSError, TypeError):
        return False


def bundled_model_path() -> Path:
    """Path of the bundled tumour segmentation model (``bundled_path("segmentation")``)."""
    return bundled_path("segmentation")
