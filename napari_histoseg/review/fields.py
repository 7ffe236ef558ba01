"""The segmentation under review and its grid of fields.

A :class:`ReviewSource` holds the model's tumour probability (a pyramid, level 0 first:
uint8 with 255 = 1.0 as ``segment-slides`` writes it, or float 0-1 as a Segment run
gives it), the tumour mask (the model's, possibly refined; ``probability >= 0.5`` where
there is none) and, optionally, the tissue mask (coarser pixels allowed). Coordinates are
pixels of the probability's level 0 (the *map*); :attr:`ReviewSource.scale` and
``translate`` place them in the viewer's world.

:func:`make_fields` cuts the map into square fields of ``size`` px (edge fields are
smaller), keeps those with enough tissue and measures each one on a coarse level of the
pyramid (at least ~32 px per field edge), so ranking a whole slide reads only a
thumbnail-sized array.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from napari_histoseg.explanations.maps import BOUNDARY_PX, boundary_proximity, either

__all__ = ["Field", "ReviewSource", "make_fields", "binary_entropy"]

REVIEW_DIR = "histoseg-review"


@dataclass
class Field:
    """One field of the grid: ``y, x, h, w`` in map pixels, and what was measured on it."""

    index: int
    y: int
    x: int
    h: int
    w: int
    tissue: float = 1.0          # tissue fraction of the field
    tumour_px: float = 0.0       # tumour area of the mask, map px
    entropy: float = 0.0         # mean predictive entropy (bits per px, 0-1)
    disagreement: float = 0.0    # fraction of px where the mask differs from probability >= 0.5
    uncertainty: float = 0.0     # mean of "entropy or near the predicted outline" (0-1), see ranking
    score: float = 0.0           # what the ranking sorted by (higher first)

    def to_dict(self) -> dict:
        return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in asdict(self).items()}

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.y, self.y + self.h), slice(self.x, self.x + self.w)


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Predictive entropy of a two-class probability, in bits (0 sure, 1 at p = 0.5)."""
    p = np.clip(np.asarray(p, np.float32), 1e-6, 1 - 1e-6)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


@dataclass
class ReviewSource:
    """A segmentation to review. Build it with :meth:`from_result` or :meth:`from_arrays`."""

    probability: list
    mask: list | None = None
    tissue: object | None = None
    tissue_scale: float = 1.0              # map px per tissue px
    review_dir: Path | None = None         # where the reviewers' JSON files go
    name: str = "segmentation"
    path: Path | None = None               # the result (OME-Zarr) or image the review belongs to
    scale: tuple = (1.0, 1.0)              # world units per map px
    translate: tuple = (0.0, 0.0)          # world position of map px (0, 0)'s centre
    units: str | None = None
    attrs: dict = field(default_factory=dict)

    @classmethod
    def from_result(cls, path) -> "ReviewSource":
        """The OME-Zarr that ``histoseg segment-slides`` wrote; reviews go into
        ``NAME.ome.zarr/histoseg-review/``."""
        from napari_histoseg.wsi.omezarr import read_result

        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist")
        r = read_result(path)
        if r["tumour"] is None:
            raise ValueError(f"{path} has no labels/tumour: is it a finished segment-slides result?")
        ts = 1.0
        if r["tissue"] is not None:
            ts = float(r["tissue_scale"][0]) / float(r["scale"][0])
        name = path.name[:-len(".ome.zarr")] if path.name.endswith(".ome.zarr") else path.stem
        return cls(probability=list(r["probability"]), mask=list(r["tumour"]), tissue=r["tissue"],
                   tissue_scale=ts, review_dir=path / REVIEW_DIR, name=name, path=path,
                   scale=tuple(r["scale"]), translate=tuple(r["translate"]), units=r["units"], attrs=r["attrs"])

    @classmethod
    def from_arrays(cls, probability, mask=None, tissue=None, *, image_path=None, review_dir=None,
                    name=None, scale=(1.0, 1.0), translate=(0.0, 0.0), units=None) -> "ReviewSource":
        """Arrays of a Segment run: ``probability`` (H, W) float 0-1 or uint8 255 = 1.0 (or a
        list of pyramid levels), ``mask`` (H, W) 0/1, ``tissue`` (any size covering the
        map). Reviews go into ``review_dir``, by default ``IMAGE.histoseg-review/`` beside
        ``image_path``; one of the two is needed."""
        levels = list(probability) if isinstance(probability, (list, tuple)) else [probability]
        shape = np.shape(levels[0])
        if len(shape) != 2:
            raise ValueError(f"the probability must be one 2-D map (H, W), got shape {shape}")
        masks = None
        if mask is not None:
            masks = list(mask) if isinstance(mask, (list, tuple)) else [mask]
            if np.shape(masks[0]) != shape:
                raise ValueError(f"the mask is {np.shape(masks[0])} but the probability is {shape}")
            if len(masks) != len(levels):
                masks = masks[:1]
                levels = levels[:1]
        ts = 1.0
        if tissue is not None:
            ts = shape[0] / np.shape(tissue)[0]
        if review_dir is None:
            if image_path is None:
                raise ValueError("say where the review is kept: the image's path or a review folder")
            p = Path(image_path)
            review_dir = p.parent / f"{p.name}.{REVIEW_DIR}"
        return cls(probability=levels, mask=masks, tissue=tissue, tissue_scale=ts, review_dir=Path(review_dir),
                   name=name or (Path(image_path).stem if image_path else Path(review_dir).name),
                   path=None if image_path is None else Path(image_path), scale=tuple(scale),
                   translate=tuple(translate), units=units)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(int(s) for s in np.shape(self.probability[0])[:2])

    def probability_at(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Probability 0-1 (float32) of a window of ``level`` (pixels of that level)."""
        a = np.asarray(self.probability[level][y:y + h, x:x + w])
        return a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)

    def mask_at(self, level: int, y: int, x: int, h: int, w: int) -> np.ndarray:
        """The tumour mask (uint8 0/1) of a window of ``level``."""
        if self.mask is None:
            return (self.probability_at(level, y, x, h, w) >= 0.5).astype(np.uint8)
        return (np.asarray(self.mask[level][y:y + h, x:x + w]) == 1).astype(np.uint8)

    def probability_of(self, f: Field) -> np.ndarray:
        return self.probability_at(0, f.y, f.x, f.h, f.w)

    def mask_of(self, f: Field) -> np.ndarray:
        return self.mask_at(0, f.y, f.x, f.h, f.w)

    def measure_level(self, size: int) -> int:
        """The coarsest level with at least ~32 px per field edge."""
        k = 0
        while k + 1 < len(self.probability) and (size >> (k + 1)) >= 32:
            k += 1
        return k


def make_fields(source: ReviewSource, size: int = 512, min_tissue: float = 0.05) -> list[Field]:
    """The fields of ``source`` in raster order (top row first), measured.

    Fields with a tissue fraction under ``min_tissue`` are left out (all are kept
    without a tissue mask). ``index`` is ``row * columns + column`` of the full grid, so it
    names the same field however many are kept.
    """
    size = int(size)
    if size < 16:
        raise ValueError(f"a field must be at least 16 px wide, not {size}")
    H, W = source.shape
    k = source.measure_level(size)
    d = 2 ** k
    prob = source.probability_at(k, 0, 0, *np.shape(source.probability[k])[:2])
    mask = source.mask_at(k, 0, 0, *prob.shape)
    ent = binary_entropy(prob)
    unc = either(ent, boundary_proximity(prob >= 0.5, reach=BOUNDARY_PX / d))
    disagree = mask != (prob >= 0.5)
    tissue = None if source.tissue is None else np.asarray(source.tissue) != 0
    ny, nx = math.ceil(H / size), math.ceil(W / size)
    out = []
    for iy in range(ny):
        for ix in range(nx):
            y, x = iy * size, ix * size
            h, w = min(size, H - y), min(size, W - x)
            frac = 1.0
            if tissue is not None:
                ts = source.tissue_scale
                t = tissue[int(y / ts):max(int(y / ts) + 1, math.ceil((y + h) / ts)),
                           int(x / ts):max(int(x / ts) + 1, math.ceil((x + w) / ts))]
                frac = float(t.mean()) if t.size else 0.0
                if frac < min_tissue:
                    continue
            sl = (slice(y // d, max(y // d + 1, math.ceil((y + h) / d))),
                  slice(x // d, max(x // d + 1, math.ceil((x + w) / d))))
            n = ent[sl].size or 1
            out.append(Field(index=iy * nx + ix, y=y, x=x, h=h, w=w, tissue=frac,
                             tumour_px=float(mask[sl].sum()) * d * d, entropy=float(ent[sl].sum() / n),
                             disagreement=float(disagree[sl].sum() / n), uncertainty=float(unc[sl].sum() / n)))
    return out
