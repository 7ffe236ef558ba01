"""SHA-256 of files and arrays (provenance of exported tiles and uploaded models)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

_hash_cache: dict = {}


def file_sha256(path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks of ``chunk`` bytes.

    The result is cached per (path, size, mtime), so a large slide is hashed once per
    process however many times its tiles are exported.
    """
    path = Path(path).resolve()
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _hash_cache:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(chunk), b""):
                h.update(block)
        _hash_cache[key] = h.hexdigest()
    return _hash_cache[key]


def array_sha256(a) -> str:
    h = hashlib.sha256(str(np.shape(a)).encode())
    h.update(np.ascontiguousarray(np.asarray(a)).data)
    return h.hexdigest()

