"""Open H&E images and slides as a :class:`Slide` with lazy pyramid levels.

PNG and JPEG are read eagerly (they are small). TIFF, pyramidal (OME-)TIFF
and Aperio SVS are read lazily through ``tifffile`` + ``zarr``: reading a
region decodes only the tiles it touches.

No napari or Qt imports here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_histoseg.io.validate import ensure_rgb_uint8

__all__ = ["Slide", "SUPPORTED_SUFFIXES", "image_suffix"]

#: File name endings :func:`open_image` understands (lower case).
SUPPORTED_SUFFIXES = (".svs", ".ome.tif", ".ome.tiff", ".tif", ".tiff", ".png", ".jpg", ".jpeg")
_TIFF_SUFFIXES = {".svs", ".ome.tif", ".ome.tiff", ".tif", ".tiff"}


def image_suffix(path) -> str | None:
    """Return the supported suffix of `path` (lower case), or None.

    Examples
    --------
    >>> image_suffix("scan.OME.TIFF"), image_suffix("notes.txt")
    ('.ome.tiff', None)
    """
    name = Path(str(path)).name.lower()
    return next((s for s in SUPPORTED_SUFFIXES if name.endswith(s)), None)


class Slide:
    """An RGB uint8 image with one or more resolution levels.

    Usually made by :func:`open_image`; :meth:`from_array` wraps an array.

    Parameters
    ----------
    path : str or Path or None
        Where the image came from.
    levels : list of array-like
        Level 0 is the full resolution; each level has shape (H, W, 3),
        dtype uint8 and supports numpy basic slicing (ndarray, zarr array,
        or a lazy wrapper that converts on read).
    mpp : float, optional
        Microns per pixel at level 0, if known.
    metadata : dict, optional
        Side facts, e.g. ``format``, ``objective_power``, ``mpp_source``.
    warnings : list of str, optional
        Conversions applied or to be applied on read (alpha dropped, ...).
    closer : callable, optional
        Called once by :meth:`close` (closes the file).

    Attributes
    ----------
    path, levels, mpp, metadata, warnings
        As given.

    Examples
    --------
    >>> slide = Slide.from_array(np.zeros((600, 400, 3), np.uint8), mpp=0.5)
    >>> slide.read_region(0, 550, 380, 100, 100).shape   # clipped
    (50, 20, 3)
    """

    def __init__(self, path, levels, *, mpp=None, metadata=None, warnings=(), closer=None):
        if not levels:
            raise ValueError("a Slide needs at least one level")
        self.path = None if path is None else Path(path)
        self.levels = list(levels)
        self.mpp = None if mpp is None else float(mpp)
        self.metadata = dict(metadata or {})
        self.warnings = list(warnings)
        self._closer = closer

    @classmethod
    def from_array(cls, array, *, path=None, mpp=None, metadata=None) -> "Slide":
        """Make a one-level Slide from an in-memory image.

        The array goes through :func:`~napari_histoseg.io.validate.ensure_rgb_uint8`
        (RGBA, 16-bit and float are converted, with warnings in
        ``slide.warnings``; grayscale and stacks raise ImageFormatError).
        """
        rgb, warnings = ensure_rgb_uint8(array)
        return cls(path, [rgb], mpp=mpp, metadata=metadata, warnings=warnings)

    # -- geometry ---------------------------------------------------------
    @property
    def level_count(self) -> int:
        """Number of resolution levels."""
        return len(self.levels)

    @property
    def level_shapes(self) -> list[tuple[int, int, int]]:
        """(H, W, 3) of each level, level 0 first."""
        return [tuple(int(s) for s in level.shape) for level in self.levels]

    @property
    def level_downsamples(self) -> list[float]:
        """Downsample factor of each level relative to level 0 (1.0 first).

        The mean of the height and width ratios, as OpenSlide reports it.
        """
        h0, w0 = self.shape[:2]
        return [((h0 / h) + (w0 / w)) / 2 for h, w, _ in self.level_shapes]

    @property
    def shape(self) -> tuple[int, int, int]:
        """Shape (H, W, 3) of level 0."""
        return self.level_shapes[0]

    @property
    def dtype(self) -> np.dtype:
        """dtype of what the levels and :meth:`read_region` return (uint8)."""
        return np.dtype(self.levels[0].dtype)

    @property
    def is_multiscale(self) -> bool:
        """True when there is more than one level."""
        return len(self.levels) > 1

    def best_level_for_downsample(self, downsample: float) -> int:
        """Index of the coarsest level not coarser than `downsample`.

        Examples
        --------
        >>> s = Slide(None, [np.zeros((8, 8, 3), np.uint8), np.zeros((2, 2, 3), np.uint8)])
        >>> s.best_level_for_downsample(2.0), s.best_level_for_downsample(4.0)
        (0, 1)
        """
        ok = [i for i, d in enumerate(self.level_downsamples) if d <= downsample * 1.01]
        return ok[-1] if ok else 0

    # -- reading ----------------------------------------------------------
    def read_region(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Read the rectangle [y, y+h) x [x, x+w) of a level, clipped.

        Parameters
        ----------
        level : int
            Level index (0 = full resolution).
        y, x : int
            Top-left corner in the pixel grid *of that level* (not level 0;
            multiply level-0 coordinates by ``1 / level_downsamples[level]``).
        h, w : int
            Height and width requested, >= 0.

        Returns
        -------
        region : ndarray of uint8, shape (h', w', 3)
            A new array. The rectangle is clipped to the image, so h' <= h and
            w' <= w (0 when it lies entirely outside); it is not padded. Only
            the tiles the rectangle touches are decoded.

        Examples
        --------
        >>> s = Slide.from_array(np.arange(48, dtype=np.uint8).reshape(4, 4, 3))
        >>> s.read_region(0, 1, 1, 2, 2)[..., 0]
        array([[15, 18],
               [27, 30]], dtype=uint8)
        """
        if not 0 <= level < len(self.levels):
            raise IndexError(f"level {level} out of range: this image has {len(self.levels)} level(s)")
        if h < 0 or w < 0:
            raise ValueError(f"region size must be >= 0, got h={h}, w={w}")
        H, W = self.level_shapes[level][:2]
        y0, x0 = min(max(int(y), 0), H), min(max(int(x), 0), W)
        y1, x1 = min(max(int(y) + int(h), 0), H), min(max(int(x) + int(w), 0), W)
        arr = self.levels[level]
        region = np.asarray(arr[y0:y1, x0:x1])
        if isinstance(arr, np.ndarray):
            region = region.copy()
        return region

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """Return a downscaled RGB uint8 copy whose longer side is <= `max_size`.

        Reads the smallest level whose longer side is still >= the thumbnail's
        (never level 0 when a smaller level suffices), band by band, averaging
        blocks and resizing the result. Images smaller than `max_size` are
        returned whole, not enlarged.

        Parameters
        ----------
        max_size : int, optional
            Longest side of the thumbnail in pixels.

        Returns
        -------
        thumb : ndarray of uint8, shape (h, w, 3)
            Same aspect ratio as level 0 (to within a pixel).
        """
        from skimage.transform import resize

        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        h0, w0 = self.shape[:2]
        scale = min(1.0, max_size / max(h0, w0))
        th, tw = max(1, round(h0 * scale)), max(1, round(w0 * scale))
        index = 0
        for i, (h, w, _) in enumerate(self.level_shapes):
            if h >= th and w >= tw:
                index = i
        level = self.levels[index]
        H, W = self.level_shapes[index][:2]
        f = max(1, min(H // th, W // tw))  # integer block averaging first
        chunk_h = (getattr(level, "chunks", None) or (256,))[0] or 256
        band = max(f, (max(chunk_h, 256) // f) * f)
        rows = []
        for y in range(0, H, band):
            block = np.asarray(level[y : y + band])
            if f > 1:
                block = _block_mean(block, f)
            rows.append(block)
        small = np.concatenate(rows, axis=0)
        if small.shape[:2] == (th, tw):
            return small.astype(np.uint8, copy=False)
        out = resize(small, (th, tw), order=1, anti_aliasing=True, preserve_range=True)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)

    # -- lifetime ---------------------------------------------------------
    def close(self) -> None:
        """Close the underlying file. Lazy levels cannot be read afterwards."""
        closer, self._closer = self._closer, None
        if closer is not None:
            closer()

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        mpp = "unknown" if self.mpp is None else f"{self.mpp:g}"
        return (
            f"<Slide {self.path.name if self.path else '(array)'} shape={self.shape} "
            f"levels={len(self.levels)} mpp={mpp}>"
        )


def _block_mean(block: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f blocks; edge blocks are padded by edge replication."""
    h, w = block.shape[:2]
    ph, pw = (-h) % f, (-w) % f
    if ph or pw:
        block = np.pad(block, ((0, ph), (0, pw), (0, 0)), mode="edge")
    H, W = block.shape[:2]
    return block.reshape(H // f, f, W // f, f, 3).mean(axis=(1, 3), dtype=np.float32)
