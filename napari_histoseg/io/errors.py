"""Which exceptions are the input's fault, and their one-line message (for the CLI, the
server and the widgets): :func:`user_error`.

A refusal of bad input (:class:`~napari_histoseg.io.checks.InputError`, ``ImageFormatError``,
``DatasetError``, ``CheckpointError``, a ``ValueError`` raised by napari-histoseg's own code)
and the environment's errors (missing files, full or read-only disks, refused connections, a
missing optional package, too little memory) get a message; anything else is a bug and keeps
its traceback.
"""

from __future__ import annotations

from pathlib import Path

from napari_histoseg.io.checks import InputError
from napari_histoseg.io.validate import ImageFormatError

__all__ = ["user_error"]


def _raised_here(exc: BaseException) -> bool:
    """True when ``exc`` was raised by napari-histoseg's own code (a deliberate refusal of bad
    input), not deep inside a library (a bug to show with its traceback)."""
    tb = exc.__traceback__
    last = None
    while tb is not None:
        last = tb
        tb = tb.tb_next
    return last is not None and Path(last.tb_frame.f_code.co_filename).resolve().is_relative_to(
        Path(__file__).resolve().parent.parent)


def user_error(exc: BaseException) -> str | None:
    """The one-line message for an error caused by the input or the environment, or None for
    an error that is a bug (shown with its traceback)."""
    from napari_histoseg.io.dataset import DatasetError  # skimage: only when something failed

    if isinstance(exc, (InputError, ImageFormatError, DatasetError)):
        return str(exc)
    if type(exc).__name__ in ("CheckpointError", "ExportError", "ClassifierInputError"):
        return str(exc)
    if isinstance(exc, ModuleNotFoundError) and exc.name and exc.name.split(".")[0] in _OPTIONAL:
        return f"this needs the optional package {exc.name.split('.')[0]} ({_OPTIONAL[exc.name.split('.')[0]]})"
    if isinstance(exc, MemoryError):
        return "not enough memory for this input; read a region or a lower pyramid level, or use smaller tiles"
    if isinstance(exc, OSError):   # missing files, full or read-only disks, refused connections
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or exc}{where}" if exc.strerror else str(exc)
    if isinstance(exc, ValueError) and _raised_here(exc):
        return str(exc)
    return None


_OPTIONAL = {"onnxruntime": "pip install onnxruntime", "openslide": "pip install openslide-python",
             "distributed": "pip install distributed", "fastapi": "pip install 'napari-histoseg[server]'",
             "uvicorn": "pip install 'napari-histoseg[server]'", "shap": "pip install shap",
             "captum": "pip install captum"}
