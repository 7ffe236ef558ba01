"""A lazy RGB uint8 view of a lazily read image level (internal).

Every TIFF level is read through it: it drops alpha, moves a channel-first axis
last and rescales 16-bit/float data to uint8, region by region, only for what is
indexed, and turns a tile that cannot be decoded (truncated or corrupt data) into
an ImageFormatError.
"""

from __future__ import annotations

import numpy as np

from napari_histoseg.io.checks import check_pixels
from napari_histoseg.io.validate import ImageFormatError, to_uint8


def _expand_key(key, ndim: int = 3) -> tuple:
    """Turn a numpy basic index into a tuple of exactly `ndim` items."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is None for k in key):
        raise IndexError("newaxis (None) is not supported by lazy levels")
    n_ellipsis = sum(k is Ellipsis for k in key)
    if n_ellipsis > 1:
        raise IndexError("an index can only have a single ellipsis ('...')")
    if n_ellipsis:
        i = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = (slice(None),) * (ndim - len(key) + 1)
        key = key[:i] + fill + key[i + 1 :]
    if len(key) > ndim:
        raise IndexError(f"too many indices for a {ndim}-D level")
    return key + (slice(None),) * (ndim - len(key))


class LazyRGBLevel:
    """Read-only array-like of shape (H, W, 3), dtype uint8, over `source`.

    Parameters
    ----------
    source : array-like
        Lazy array (e.g. zarr) of shape (H, W, C) or, with
        ``channel_first=True``, (C, H, W); C is 3 or 4 (alpha is dropped).
    channel_first : bool, optional
        Whether the channel axis of `source` comes first.
    in_range : (float, float), optional
        Input range mapped to [0, 255]; None when `source` is uint8.

    Examples
    --------
    >>> import zarr
    >>> z = zarr.full((4, 6, 6), 4095, dtype="uint16")
    >>> level = LazyRGBLevel(z, channel_first=True, in_range=(0, 4095))
    >>> level.shape, level[1:3, 2, 0]
    ((6, 6, 3), array([255, 255], dtype=uint8))
    """

    def __init__(self, source, *, channel_first: bool = False, in_range=None):
        self.source = source
        self.channel_first = bool(channel_first)
        self.in_range = in_range
        if self.channel_first:
            _, h, w = source.shape
        else:
            h, w, _ = source.shape
        self.shape = (int(h), int(w), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        chunks = getattr(source, "chunks", None)
        if chunks is not None and len(chunks) == 3:
            chunks = chunks[1:] if self.channel_first else chunks[:2]
            self.chunks = (int(chunks[0]), int(chunks[1]), 3)
        else:
            self.chunks = None

    @property
    def size(self) -> int:
        return self.shape[0] * self.shape[1] * 3

    @property
    def nbytes(self) -> int:
        return self.size

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key) -> np.ndarray:
        ky, kx, kc = _expand_key(key)
        n = [len(range(*k.indices(size))) if isinstance(k, slice) else 1
             for k, size in zip((ky, kx), self.shape[:2])]
        if n[0] * n[1] > 1 << 24:   # large reads only: the header's size is not believed blindly
            check_pixels(n, "the region read", hint="read a smaller region or a lower pyramid level")
        try:
            if self.channel_first:
                raw = np.asarray(self.source[slice(0, 3), ky, kx])
                raw = np.moveaxis(raw, 0, -1)
            else:
                raw = np.asarray(self.source[ky, kx, slice(0, 3)])
        except (IndexError, TypeError, MemoryError):
            raise
        except Exception as exc:  # a tile's compressed data is truncated or corrupt
            raise ImageFormatError(f"a tile of the image file is damaged and cannot be decoded "
                                   f"({type(exc).__name__}: {exc})") from None
        if self.in_range is not None:
            if raw.dtype.kind == "f" and raw.size and not (np.isfinite(raw).all() and raw.min() >= 0):
                raise ImageFormatError("this float image holds NaN, infinite or negative values here; "
                                       "it cannot be read as H&E (save the scan as 8-bit RGB)")
            raw = to_uint8(raw, self.in_range)
        elif raw.dtype != np.uint8:  # pragma: no cover - guarded by caller
            raw = raw.astype(np.uint8)
        return raw if kc == slice(None) else raw[..., kc]

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype)

    def __repr__(self) -> str:
        return (
            f"<LazyRGBLevel shape={self.shape} dtype=uint8 over "
            f"{type(self.source).__name__} shape={tuple(self.source.shape)} "
            f"dtype={self.source.dtype}>"
        )
