"""Arrays on the wire, in both directions: never pickle.

* ``application/octet-stream``: raw C-order bytes, with ``X-Shape: 512,512,3`` and
  ``X-Dtype: uint8`` (or ``float16``) headers. The default: no encoding cost.
* ``image/png``: an RGB image (smaller on a slow network, costs encoding time).
* ``application/x-npy`` / ``application/x-npz``: NumPy files, read with ``allow_pickle=False``;
  an NPZ from :func:`pack` also holds a JSON ``info`` (options going out, a result's scalars coming back).
"""

from __future__ import annotations

import io

import numpy as np

RAW = "application/octet-stream"
PNG = "image/png"
NPY = "application/x-npy"
NPZ = "application/x-npz"
DTYPES = {"uint8", "float16", "float32", "bool"}
MAX_DIMS = 4
INFO_KEY = "__info__"


class WireError(ValueError):
    """A body that does not hold the array its headers promise."""


def parse_shape(text: str | None) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise WireError(f"X-Shape must be comma-separated integers, not {text!r}") from None
    if not 1 <= len(shape) <= MAX_DIMS or any(v < 0 for v in shape):
        raise WireError(f"X-Shape {text!r} is not a shape of 1 to {MAX_DIMS} non-negative sizes")
    return shape


def encode(array: np.ndarray, dtype: str | None = None) -> tuple[bytes, dict]:
    """``(body, headers)`` for a raw array (cast to ``dtype`` first if given)."""
    a = np.ascontiguousarray(array if dtype is None else np.asarray(array).astype(dtype))
    return a.tobytes(), {"Content-Type": RAW, "X-Shape": ",".join(map(str, a.shape)), "X-Dtype": a.dtype.name}


def decode(body: bytes, content_type: str | None, shape: str | None = None, dtype: str | None = None):
    """The array (or, for NPZ, the dict of arrays) in ``body``."""
    kind = (content_type or RAW).split(";")[0].strip().lower()
    if kind == RAW:
        if dtype not in DTYPES:
            raise WireError(f"X-Dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        dims = parse_shape(shape)
        expected = int(np.prod(dims)) * np.dtype(dtype).itemsize
        if len(body) != expected:
            raise WireError(f"body has {len(body)} bytes; X-Shape {shape} of {dtype} needs {expected}")
        return np.frombuffer(body, dtype=dtype).reshape(dims).copy()  # writable, for torch.from_numpy
    if kind == PNG:
        from PIL import Image

        try:
            with Image.open(io.BytesIO(body)) as im:
                if im.format != "PNG":
                    raise WireError(f"the body is {im.format}, not PNG")
                return np.asarray(im.convert("RGB"))
        except (OSError, SyntaxError) as e:
            raise WireError(f"not a readable PNG ({e})") from None
    if kind in (NPY, NPZ):
        try:
            data = np.load(io.BytesIO(body), allow_pickle=False)
        except (ValueError, OSError, EOFError) as e:
            raise WireError(f"not a readable {kind} body without pickles ({e})") from None
        if isinstance(data, np.lib.npyio.NpzFile):
            with data:
                return {k: data[k] for k in data.files}
        return data
    raise WireError(f"unsupported Content-Type {content_type!r}; send {RAW}, {PNG}, {NPY} or {NPZ}")


def npz(**arrays) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{k: np.ascontiguousarray(v) for k, v in arrays.items() if v is not None})
    return buf.getvalue()


def png(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def pack(arrays: dict, info: dict | None = None) -> bytes:
    """Arrays and a JSON-able ``info`` dict in one NPZ body (``info`` as UTF-8 bytes under ``__info__``)."""
    import json

    body = {k: v for k, v in arrays.items() if v is not None}
    body[INFO_KEY] = np.frombuffer(json.dumps(info or {}).encode(), np.uint8)
    return npz(**body)


def unpack(body: bytes, content_type: str | None = NPZ) -> tuple[dict, dict]:
    """``(arrays, info)`` of a :func:`pack` body; any other array body is ``({"image": array}, {})``."""
    import json

    data = decode(body, content_type)
    if not isinstance(data, dict):
        return {"image": data}, {}
    raw = data.pop(INFO_KEY, None)
    try:
        info = json.loads(bytes(raw).decode()) if raw is not None else {}
    except ValueError as e:
        raise WireError(f"the {INFO_KEY} part is not JSON ({e})") from None
    if not isinstance(info, dict):
        raise WireError(f"the {INFO_KEY} part must be a JSON object")
    return data, info


def bundled_ref(task: str = "segmentation") -> str:
    """The server's reference of ``task``'s bundled model: ``"bundled"`` for tumour segmentation
    (as it always was), ``"bundled-<task>"`` for the others."""
    return "bundled" if task == "segmentation" else f"bundled-{task}"
