"""Output files written whole or not at all.

Every file napari-histoseg writes goes to a temporary name beside its destination (same
folder, so the rename is atomic on one file system, same suffix, so writers that choose the
format by suffix still work) and is renamed over the destination with :func:`os.replace` only
once it is complete. A crash, a full disk or an exception leaves the earlier file (or no file)
and never half of one; the temporary file is removed.

>>> with atomic_path("out/mask.png") as tmp:            # doctest: +SKIP
...     imsave(tmp, mask)
>>> atomic_write_text("out/report.csv", text)           # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from pathlib import Path

from napari_histoseg.io.checks import InputError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "TMP_MARK", "output_folder"]

TMP_MARK = ".histoseg-tmp-"


def output_folder(path) -> Path:
    """Create the folder ``path`` will be written in; an :class:`InputError` naming the problem
    when a part of it is a file, or it cannot be created."""
    path = Path(path)
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"cannot write {path}: {_first_file(parent)} is a file, not a folder") from None
    except NotADirectoryError:
        raise InputError(f"cannot write {path}: {_first_file(parent)} is a file, not a folder") from None
    except PermissionError:
        raise InputError(f"cannot write {path}: no permission to create {parent}") from None
    if path.is_dir():
        raise InputError(f"cannot write {path}: it is a folder")
    return parent


def _first_file(folder: Path) -> Path:
    for p in [*reversed(folder.parents), folder]:
        if p.exists() and not p.is_dir():
            return p
    return folder


def _tmp_for(path: Path) -> Path:
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith((".ome.tif", ".ome.tiff")) else path.suffix
    stem = path.name[: len(path.name) - len(suffix)] if suffix else path.name
    return path.with_name(f".{stem}{TMP_MARK}{uuid.uuid4().hex[:8]}{suffix}")


@contextlib.contextmanager
def atomic_path(path, *, fsync: bool = False):
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``.

    The folder is created. On any exception the temporary file is removed and ``path`` is
    left as it was. With ``fsync`` the data is flushed to disk before the rename.
    """
    path = Path(path)
    output_folder(path)
    tmp = _tmp_for(path)
    try:
        yield tmp
        if not tmp.exists():
            raise OSError(errno.ENOENT, "the writer wrote nothing", str(path))
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def atomic_write_bytes(path, data: bytes, *, fsync: bool = False) -> Path:
    """Write ``data`` to ``path`` whole or not at all."""
    path = Path(path)
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
    return path


def atomic_write_text(path, text: str, *, encoding: str = "utf-8", fsync: bool = False) -> Path:
    """Write ``text`` to ``path`` whole or not at all."""
    return atomic_write_bytes(path, text.encode(encoding), fsync=fsync)
