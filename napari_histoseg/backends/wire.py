"""Arrays on the wire, in both directions: never pickle.

* ``application/octet-stream``: raw C-order bytes, with ``X-Shape: 512,512,3`` and
  ``X-Dtype: uint8`` (or ``float16``) headers. The default: no encoding cost.
* ``image/png``: an RGB image (smaller on a slow network, costs encoding time).
* ``application/x-npy`` / ``application/x-npz``: NumPy files, read with ``allow_pickle=False``;
  an NPZ from :func:`pack` also holds a JSON ``info`` (options going out, a result's scalars coming back).
"""

from __future__ import annotations

import io
import math
import zlib

import numpy as np

RAW = "application/octet-stream"
PNG = "image/png"
NPY = "application/x-npy"
NPZ = "application/x-npz"
DTYPES = {"uint8", "float16", "float32", "bool"}
MAX_DIMS = 4
INFO_KEY = "__info__"
MAX_INFO_BYTES = 1 << 20


#: Largest number of arrays in one NPZ body.
MAX_ARRAYS = 64
#: Decoded bytes one body may expand to when the caller gives no budget (a client reading a server's answer).
DEFAULT_MAX_BYTES = 4 << 30
_KINDS = "biuf"   # bool, signed and unsigned integers, floats: the only dtypes read from NPY/NPZ


class WireError(ValueError):
    """A body that does not hold the array its headers promise."""


class TooLarge(WireError):
    """A body that would decode to more pixels or bytes than allowed (nothing was allocated)."""


def parse_shape(text: str | None) -> tuple[int, ...]:
    try:
        shape = tuple(int(v) for v in str(text).split(","))
    except ValueError:
        raise WireError(f"X-Shape must be comma-separated integers, not {text!r}") from None
    if not 1 <= len(shape) <= MAX_DIMS or any(v < 0 for v in shape):
        raise WireError(f"X-Shape {text!r} is not a shape of 1 to {MAX_DIMS} non-negative sizes")
    return shape


def pixels(shape) -> int:
    """Pixels of an image-like shape: every dimension but a last one of 1-4 channels
    (``(N, h, w, 3)`` tiles: ``N * h * w``); 0 for a 1-D array (bytes, not an image)."""
    shape = tuple(int(v) for v in shape)
    if len(shape) < 2:
        return 0
    dims = shape[:-1] if len(shape) >= 3 and shape[-1] <= 4 else shape
    return math.prod(dims)


def check_size(shape, dtype, what: str, max_pixels: int | None, max_bytes: int | None) -> int:
    """The bytes an array of ``shape`` and ``dtype`` takes; :class:`TooLarge` over either budget."""
    shape = tuple(int(v) for v in shape)
    if len(shape) > MAX_DIMS:
        raise WireError(f"{what} has {len(shape)} dimensions; at most {MAX_DIMS} are accepted")
    px, nbytes = pixels(shape), math.prod(shape) * np.dtype(dtype).itemsize
    if max_pixels and px > max_pixels:
        raise TooLarge(f"{what} of shape {shape} is {px / 1e6:,.1f} megapixels, over this server's limit of "
                       f"{max_pixels / 1e6:,.1f} megapixels per request; send a region or a lower pyramid level")
    if max_bytes and nbytes > max_bytes:
        raise TooLarge(f"{what} of shape {shape} ({np.dtype(dtype).name}) would take {nbytes / 2**20:,.1f} MB, "
                       f"over the limit of {max_bytes / 2**20:,.1f} MB for one request")
    return nbytes


def encode(array: np.ndarray, dtype: str | None = None) -> tuple[bytes, dict]:
    """``(body, headers)`` for a raw array (cast to ``dtype`` first if given)."""
    a = np.ascontiguousarray(array if dtype is None else np.asarray(array).astype(dtype))
    return a.tobytes(), {"Content-Type": RAW, "X-Shape": ",".join(map(str, a.shape)), "X-Dtype": a.dtype.name}


def decode(body: bytes, content_type: str | None, shape: str | None = None, dtype: str | None = None, *,
           max_pixels: int | None = None, max_bytes: int | None = None):
    """The array (or, for NPZ, the dict of arrays) in ``body``.

    Nothing is believed before it is checked: the size each header (X-Shape, the PNG's, each
    NPY's) claims is checked against ``max_pixels`` (see :func:`pixels`) and ``max_bytes``
    (all arrays together) before anything is allocated or decompressed, and an array must be
    exactly as long as its header says. :class:`TooLarge` or :class:`WireError` otherwise.
    """
    kind = (content_type or RAW).split(";")[0].strip().lower()
    budget = [DEFAULT_MAX_BYTES if max_bytes is None else max_bytes]
    if kind == RAW:
        if dtype not in DTYPES:
            raise WireError(f"X-Dtype must be one of {sorted(DTYPES)}, not {dtype!r}")
        dims = parse_shape(shape)
        expected = check_size(dims, dtype, "the array", max_pixels, None)
        if len(body) != expected:
            raise WireError(f"body has {len(body)} bytes; X-Shape {shape} of {dtype} needs {expected}")
        return np.frombuffer(body, dtype=dtype).reshape(dims).copy()  # writable, for torch.from_numpy
    if kind == PNG:
        return _read_png(body, max_pixels, budget[0])
    if kind in (NPY, NPZ):
        f = io.BytesIO(body)
        if body[:4] == b"PK\x03\x04" or (kind == NPZ and body[:2] == b"PK"):
            return _read_npz(f, max_pixels, budget)
        array = _read_npy(f, "the NPY array", max_pixels, budget)
        if f.read(1):
            raise WireError("the NPY body has bytes after its array")
        return array
    raise WireError(f"unsupported Content-Type {content_type!r}; send {RAW}, {PNG}, {NPY} or {NPZ}")


def _read_png(body: bytes, max_pixels, max_bytes) -> np.ndarray:
    import struct

    from PIL import Image

    if body[:8] == b"\x89PNG\r\n\x1a\n" and body[12:16] == b"IHDR":   # the size, before any decoder runs
        w, h = struct.unpack(">II", body[16:24])
        check_size((h, w, 3), np.uint8, "the PNG image", max_pixels, max_bytes)
    try:
        with Image.open(io.BytesIO(body), formats=["PNG"]) as im:
            w, h = im.size                         # from the header: nothing decoded yet
            check_size((h, w, 3), np.uint8, "the PNG image", max_pixels, max_bytes)
            return np.asarray(im.convert("RGB"))
    except TooLarge:
        raise
    except Image.UnidentifiedImageError:
        raise WireError("the body is not a PNG image") from None
    except Image.DecompressionBombError as e:
        raise TooLarge(f"the PNG image is too large to decode ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise WireError(f"not a readable PNG ({type(e).__name__}: {str(e)[:120]})") from None


def _read_npy(f, what: str, max_pixels, budget: list) -> np.ndarray:
    """One array from the NPY stream ``f``: header checked, then exactly its bytes read."""
    from numpy.lib import format as npf

    try:
        version = npf.read_magic(f)
        read_header = npf.read_array_header_1_0 if version == (1, 0) else npf.read_array_header_2_0
        shape, fortran, dtype = read_header(f)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as e:
        raise WireError(f"{what} has no readable NPY header ({str(e)[:120]})") from None
    if dtype.hasobject or dtype.kind not in _KINDS or dtype.fields is not None or dtype.subdtype is not None:
        raise WireError(f"{what} is of type {dtype}; send booleans, integers or floats (never objects or pickles)")
    nbytes = check_size(shape, dtype, what, max_pixels, budget[0])
    budget[0] -= nbytes
    out = np.empty(math.prod(shape), dtype)
    view, got = memoryview(out).cast("B"), 0
    try:
        while got < nbytes:
            n = f.readinto(view[got:])
            if not n:
                break
            got += n
    except (OSError, EOFError, zlib.error) as e:
        raise WireError(f"{what} could not be read ({str(e)[:120]})") from None
    if got != nbytes:
        raise WireError(f"{what} holds {got} bytes; its header's shape {tuple(shape)} of {dtype} needs {nbytes}")
    return out.reshape(shape[::-1]).T if fortran else out.reshape(shape)


def _read_npz(f, max_pixels, budget: list) -> dict:
    import zipfile

    try:
        with zipfile.ZipFile(f) as zf:
            members = [i for i in zf.infolist() if not i.is_dir()]
            if len(members) > MAX_ARRAYS:
                raise WireError(f"the NPZ body holds {len(members)} files; at most {MAX_ARRAYS} are accepted")
            arrays = {}
            for info in members:
                if not info.filename.endswith(".npy"):
                    raise WireError(f"the NPZ body holds {info.filename[:80]!r}, which is not an .npy array")
                what = f"array {info.filename[:-4][:80]!r}"
                with zf.open(info) as member:
                    arrays[info.filename[:-4]] = _read_npy(member, what, max_pixels, budget)
                    if member.read(1):
                        raise WireError(f"{what} has bytes after its array")
            return arrays
    except WireError:
        raise
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, RuntimeError, NotImplementedError, ValueError) as e:
        raise WireError(f"not a readable NPZ body ({type(e).__name__}: {str(e)[:120]})") from None


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


def unpack(body: bytes, content_type: str | None = NPZ, **budgets) -> tuple[dict, dict]:
    """``(arrays, info)`` of a :func:`pack` body; any other array body is ``({"image": array}, {})``.
    ``budgets``: ``max_pixels`` / ``max_bytes`` of :func:`decode`."""
    import json

    data = decode(body, content_type, **budgets)
    if not isinstance(data, dict):
        return {"image": data}, {}
    raw = data.pop(INFO_KEY, None)
    if raw is not None and raw.nbytes > MAX_INFO_BYTES:
        raise WireError(f"the {INFO_KEY} part is {raw.nbytes} bytes; at most {MAX_INFO_BYTES} are accepted")
    try:
        info = json.loads(bytes(raw).decode()) if raw is not None else {}
    except (ValueError, RecursionError) as e:
        raise WireError(f"the {INFO_KEY} part is not JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(info, dict):
        raise WireError(f"the {INFO_KEY} part must be a JSON object")
    return data, info


def bundled_ref(task: str = "segmentation") -> str:
    """The server's reference of ``task``'s bundled model: ``"bundled"`` for tumour segmentation
    (as it always was), ``"bundled-<task>"`` for the others."""
    return "bundled" if task == "segmentation" else f"bundled-{task}"


def zip_dataset(folder) -> bytes:
    """A training-data folder as zip bytes (``dataset.json``, images, masks; not ``models/``)."""
    import zipfile
    from pathlib import Path

    folder = Path(folder)
    if not (folder / "dataset.json").is_file():
        raise ValueError(f"{folder} has no dataset.json (choose a folder written by Export)")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            rel = path.relative_to(folder)
            if path.is_file() and not path.is_symlink() and rel.parts[0] != "models":
                zf.write(path, rel.as_posix())
    return buf.getvalue()
