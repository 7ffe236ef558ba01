"""Stream a whole slide through the model block by block, on Dask, into an OME-Zarr.

The map (on the model's pixel grid, see :mod:`.scale`) is cut into square blocks, one Dask
task each, as :func:`dask.array.map_overlap` would cut it: a task reads its block plus
``overlap`` px of context on every side straight from the slide's zarr store (tifffile's
``aszarr``; only the TIFF tiles it touches are decoded), covers that window with the
tiled engine's blended tiles (:func:`~napari_histoseg.core.windows.plan_tiles`,
``blend_window``), runs only the tiles that touch tissue, and writes its block of the
probability and the tumour mask at every pyramid level of the OME-Zarr (:mod:`.omezarr`).
Blocks without tissue are not scheduled at all (they read as 0). Nothing the size of the
slide is ever in memory, so peak memory does not grow with the slide.

Each finished block leaves a marker; a run started again on the same output skips them.
The same tasks run on Dask's threaded scheduler in this process (default) or on a
``dask.distributed`` cluster; each process loads the model once (:func:`cached_model`).
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np

from napari_histoseg.core.tissue import slide_tissue
from napari_histoseg.core.windows import auto_batch, plan_tiles
from napari_histoseg.wsi import omezarr
from napari_histoseg.wsi.scale import ResampledLevel, choose_scale

__all__ = ["SlideJob", "Block", "SlideResult", "prepare", "segment_block", "iter_segment_slide",
           "segment_slide", "cached_model"]

_MODELS: dict = {}
_SLIDES: dict = {}
_LOCK = threading.Lock()


@dataclass
class SlideJob:
    """Everything a block task needs (plain values, so it pickles to cluster workers)."""

    slide: str
    out: str
    model: str                  # "bundled" or a checkpoint path
    level: int
    factor: float
    shape: tuple                # the map's (H, W) in model pixels
    downsample: float           # level-0 px per model px
    tile: int
    overlap: int
    threshold: float
    tissue_downsample: float    # level-0 px per tissue-mask px
    device: str = "cpu"
    engine: str = "torch"
    torch_threads: Optional[int] = None
    batch_size: Optional[int] = None


@dataclass
class Block:
    by: int
    bx: int
    y0: int
    x0: int
    h: int
    w: int
    tissue: Optional[np.ndarray] = None   # the tissue mask under the block's context window
    tissue_origin: tuple = (0, 0)         # its top-left in tissue-mask px
    tiles: int = 0                        # tiles the block's window needs


@dataclass
class SlideResult:
    """What a run of one slide found (also the row of the cohort report)."""

    slide: str
    out: str
    shape: tuple
    mpp: Optional[float]
    level: int
    factor: float
    blocks: int
    blocks_with_tissue: int
    blocks_run: int             # in this run (the rest were finished before, or have no tissue)
    tiles: int                  # tiles the whole map would need
    tiles_run: int              # tiles that touched tissue and went through the model
    tumour_px: int
    tissue_px: int
    seconds: float
    warnings: list = field(default_factory=list)

    @property
    def tiles_skipped_fraction(self) -> float:
        return 1.0 - self.tiles_run / max(self.tiles, 1)

    @property
    def tumour_mm2(self) -> Optional[float]:
        return None if not self.mpp else self.tumour_px * self.mpp ** 2 / 1e6

    @property
    def tissue_mm2(self) -> Optional[float]:
        return None if not self.mpp else self.tissue_px * self.mpp ** 2 / 1e6

    @property
    def tumour_fraction_of_tissue(self) -> Optional[float]:
        return None if not self.tissue_px else self.tumour_px / self.tissue_px


def cached_model(ref: str, device: str = "cpu", engine: str = "torch", torch_threads=None):
    """The model for ``ref`` in this process, loaded on first use (once per worker)."""
    key = (str(ref), device, engine)
    with _LOCK:
        if key not in _MODELS:
            import torch

            from napari_histoseg.models.segmenter import load_segmenter as load_model

            if torch_threads:
                torch.set_num_threads(int(torch_threads))
            _MODELS[key] = load_model(None if ref == "bundled" else ref, device=device, engine=engine)
        return _MODELS[key]


def _cached_slide(path: str):
    from napari_histoseg.io import open_image

    with _LOCK:
        key = (path, os.path.getmtime(path))
        if key not in _SLIDES:
            while len(_SLIDES) >= 2:   # a cohort goes slide by slide: keep the last two open
                _SLIDES.pop(next(iter(_SLIDES))).close()
            _SLIDES[key] = open_image(path)
        return _SLIDES[key]


def _view(job: SlideJob):
    level = _cached_slide(job.slide).levels[job.level]
    return level if job.factor == 1.0 else ResampledLevel(level, job.factor, job.shape)


def _tissue_lookup(job: SlideJob, block: Block, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Tissue mask values at model pixels (y rows, x columns), by nearest tissue pixel."""
    t = block.tissue
    r = (((y + 0.5) * job.downsample) // job.tissue_downsample).astype(int) - block.tissue_origin[0]
    c = (((x + 0.5) * job.downsample) // job.tissue_downsample).astype(int) - block.tissue_origin[1]
    return t[np.clip(r, 0, t.shape[0] - 1)][:, np.clip(c, 0, t.shape[1] - 1)]


def _tissue_any(job: SlideJob, block: Block, y0, x0, y1, x1) -> bool:
    """Whether any tissue-mask pixel touches model pixels [y0, y1) x [x0, x1)."""
    f = job.downsample / job.tissue_downsample
    oy, ox = block.tissue_origin
    r0, r1 = int(np.floor(y0 * f)) - oy, int(np.ceil(y1 * f)) - oy
    c0, c1 = int(np.floor(x0 * f)) - ox, int(np.ceil(x1 * f)) - ox
    return bool(block.tissue[max(r0, 0):max(r1, 0), max(c0, 0):max(c1, 0)].any())


def segment_block(job: SlideJob, block: Block) -> dict:
    """Segment one block and write it (a Dask task). Returns its statistics."""
    model = cached_model(job.model, job.device, job.engine, job.torch_threads)
    view = _view(job)
    plan = plan_tiles(job.shape, (block.y0, block.x0, block.h, block.w), job.tile, job.overlap)
    (cy0, cx0, ch, cw), (th, tw) = plan.context, plan.tile
    tissue = block.tissue
    todo = []
    for y, x in plan.origins:
        if tissue is None:
            todo.append((y, x))
            continue
        if _tissue_any(job, block, cy0 + y, cx0 + x, cy0 + min(y + th, ch), cx0 + min(x + tw, cw)):
            todo.append((y, x))
    acc = np.zeros((ch, cw), np.float32)
    weight = np.zeros((ch, cw), np.float32)
    window = plan.window
    batch = job.batch_size or auto_batch(th, tw, getattr(getattr(model, "device", None), "type", "cpu"))
    for b in range(0, len(todo), batch):
        chunk = todo[b:b + batch]
        tiles = [_read_tile(view, cy0 + y, cx0 + x, th, tw) for y, x in chunk]
        probs = model.predict(np.stack(tiles))
        for (y, x), p in zip(chunk, probs):
            h, w = min(th, ch - y), min(tw, cw - x)
            acc[y:y + h, x:x + w] += p[0, :h, :w] * window[:h, :w]
            weight[y:y + h, x:x + w] += window[:h, :w]
    oy, ox = block.y0 - cy0, block.x0 - cx0
    acc, weight = acc[oy:oy + block.h, ox:ox + block.w], weight[oy:oy + block.h, ox:ox + block.w]
    prob = np.divide(acc, weight, out=np.zeros_like(acc), where=weight > 0)
    mask = prob >= job.threshold
    if tissue is not None:
        in_tissue = _tissue_lookup(job, block, np.arange(block.y0, block.y0 + block.h),
                                   np.arange(block.x0, block.x0 + block.w))
        prob[~in_tissue] = 0.0   # glass is not tumour, in the map as in the mask
        mask &= in_tissue
        tissue_px = int(in_tissue.sum())
    else:
        tissue_px = block.h * block.w
    root = _open_out(job.out)
    prob_u8 = np.rint(prob * 255).astype(np.uint8)
    omezarr.write_block(root, block.y0, block.x0, prob_u8, mask.astype(np.uint8))
    stats = {"tumour_px": int(mask.sum()), "tissue_px": tissue_px, "tiles": len(plan.origins),
             "tiles_run": len(todo), "pid": os.getpid()}
    omezarr.mark_done(job.out, block.by, block.bx, stats)
    return stats


def _open_out(path):
    import zarr

    return zarr.open_group(str(path), mode="r+")


def _read_tile(view, y0, x0, h, w):
    from napari_histoseg.core.windows import read_window

    return read_window(view, y0, x0, h, w)


def prepare(slide_path, out, *, model="bundled", model_mpp=None, slide_mpp=None, level=None,
            block: int = 2048, tile: Optional[int] = None, overlap: int = 64, threshold: float = 0.5,
            tissue: bool = True, device: str = "cpu", engine: str = "torch", torch_threads=None,
            overwrite: bool = False):
    """Open the slide, choose the scale, find the tissue, create the output store.

    Returns ``(job, blocks, done, warnings)``: the task settings, every block of the map,
    the blocks already finished (``{(by, bx): stats}``) and warnings to show.
    """
    from napari_histoseg.io import open_image
    from napari_histoseg.io.checks import InputError, check_float, check_int
    from napari_histoseg.models.checkpoint import read_meta

    block = check_int(block, "block", lo=128, hi=16384)
    if block % 64:
        raise InputError(f"block must be a multiple of 64 and at least 128 px, got {block}")
    if model_mpp is not None:
        model_mpp = check_float(model_mpp, "model mpp", lo=0, lo_open=True, hi=100)
    if slide_mpp is not None:
        slide_mpp = check_float(slide_mpp, "slide mpp", lo=0, lo_open=True, hi=100)
    if level is not None:
        level = check_int(level, "level", lo=0, hi=64)
    if tile is not None:
        tile = check_int(tile, "tile", lo=64, hi=4096)
    overlap = check_int(overlap, "overlap", lo=0, hi=2048)
    threshold = check_float(threshold, "threshold", lo=0, hi=1, lo_open=True, hi_open=True)
    model = str(model or "bundled")
    if model == "bundled":
        from napari_histoseg.models.bundled import bundled_model_path

        meta = read_meta(bundled_model_path())
    else:
        meta = read_meta(model)
    with open_image(slide_path) as slide:
        warnings = list(slide.warnings)
        s_mpp = slide_mpp or slide.mpp
        scale = choose_scale(slide.level_shapes, s_mpp, model_mpp or meta.mpp, level)
        warnings += scale.warnings
        tmask = slide_tissue(slide) if tissue else None
        translate = ((scale.downsample - 1) / 2 * s_mpp,) * 2 if s_mpp else (0.0, 0.0)
    tile = int(tile or meta.tile_size)
    if 2 * overlap > tile:
        raise InputError(f"overlap {overlap} must be at most half the tile ({tile} px)")
    if 2 * overlap >= block:
        raise InputError(f"overlap {overlap} must be less than half the block ({block} px)")
    settings = {"slide": str(Path(slide_path).resolve()), "size": os.path.getsize(slide_path), "model": model,
                "level": scale.level, "factor": scale.factor, "shape": list(scale.shape), "block": block,
                "tile": tile, "overlap": overlap, "threshold": threshold, "tissue": bool(tissue)}
    tds = tmask.downsample if tmask is not None else 1.0
    tissue_scale = tds / scale.downsample
    root, _ = omezarr.create_store(out, shape=scale.shape, chunk=block, mpp=scale.mpp, translate=translate,
                                   tissue=None if tmask is None else tmask.mask, tissue_scale=tissue_scale,
                                   settings=settings, overwrite=overwrite)
    job = SlideJob(str(slide_path), str(out), model, scale.level, scale.factor, tuple(scale.shape),
                   scale.downsample, tile, int(overlap), float(threshold), tds, device, engine, torch_threads)
    H, W = scale.shape
    blocks = []
    for by, y0 in enumerate(range(0, H, block)):
        for bx, x0 in enumerate(range(0, W, block)):
            b = Block(by, bx, y0, x0, min(block, H - y0), min(block, W - x0))
            plan = plan_tiles(scale.shape, (b.y0, b.x0, b.h, b.w), tile, overlap)
            b.tiles = len(plan.origins)
            if tmask is not None:
                cy0, cx0, ch, cw = plan.context
                d = scale.downsample
                win = tmask.window(cy0 * d, cx0 * d, (cy0 + ch) * d, (cx0 + cw) * d)
                b.tissue = win.copy() if win.any() else None
                b.tissue_origin = (int(np.floor(cy0 * d / tds)), int(np.floor(cx0 * d / tds)))
                if b.tissue is None:
                    b.tiles = -b.tiles   # no tissue: not scheduled
            blocks.append(b)
    return job, blocks, omezarr.finished_blocks(out), warnings


def iter_segment_slide(slide_path, out, *, scheduler=None, workers: Optional[int] = None, retries: int = 3,
                       **options):
    """Generator: segment a whole slide into the OME-Zarr ``out``; yields ``(blocks_done,
    blocks_total)`` (the first after setup, when ``out`` can already be opened) and returns
    a :class:`SlideResult`. Closing it cancels: blocks in flight finish and are kept, a
    later run resumes after them.

    Parameters
    ----------
    slide_path : path
        A slide :func:`~napari_histoseg.io.open_image` reads (pyramidal TIFF, OME-TIFF, SVS).
    out : path
        The ``.ome.zarr`` folder to write (resumed if it holds an unfinished run of the
        same settings).
    scheduler : None, "threads", "sync" or a ``distributed.Client``
        Where the blocks run: Dask's threaded scheduler in this process (default), one
        block at a time in this thread ("sync"), or a cluster.
    workers : int, optional
        Threads of the threaded scheduler (default 1: the model already uses all cores).
    **options
        ``model`` ("bundled" or a checkpoint path), ``model_mpp``, ``slide_mpp``,
        ``level``, ``block`` (px of the map per task and chunk, default 2048), ``tile``,
        ``overlap``, ``threshold``, ``tissue`` (False: treat everything as tissue),
        ``device``, ``engine``, ``torch_threads``, ``overwrite``; see :func:`prepare`.
    """
    t0 = time.perf_counter()
    if scheduler is not None and not isinstance(scheduler, str):
        options.setdefault("torch_threads", 1)
    job, blocks, done, warnings = prepare(slide_path, out, **options)
    todo = [b for b in blocks if b.tiles > 0 and (b.by, b.bx) not in done]
    total = sum(b.tiles > 0 for b in blocks)
    stats = dict(done)
    yield len(stats), total
    from napari_histoseg.wsi.schedule import run_distributed, run_threads

    if scheduler is None or scheduler == "threads":
        runner = run_threads(segment_block, job, todo, workers or 1)
    elif scheduler == "sync":
        runner = ((b, segment_block(job, b)) for b in todo)
    elif isinstance(scheduler, str):
        raise ValueError(f"scheduler must be 'threads', 'sync' or a distributed Client, not {scheduler!r}")
    else:
        runner = run_distributed(scheduler, segment_block, job, todo, retries)
    try:
        for b, s in runner:
            stats[(b.by, b.bx)] = s
            yield len(stats), total
    finally:
        runner.close()
    tiles = sum(abs(b.tiles) for b in blocks)
    return SlideResult(
        slide=str(slide_path), out=str(out), shape=tuple(job.shape),
        mpp=_mpp(job, options, slide_path), level=job.level, factor=job.factor, blocks=len(blocks),
        blocks_with_tissue=total, blocks_run=len(todo), tiles=tiles,
        tiles_run=sum(s.get("tiles_run", 0) for s in stats.values()),
        tumour_px=sum(s["tumour_px"] for s in stats.values()),
        tissue_px=sum(s["tissue_px"] for s in stats.values()),
        seconds=time.perf_counter() - t0, warnings=warnings)


def _mpp(job, options, slide_path):
    import zarr

    ms = dict(zarr.open_group(job.out, mode="r").attrs)["multiscales"][0]
    if ms["axes"][0].get("unit") != "micrometer":
        return None
    return float(ms["datasets"][0]["coordinateTransformations"][0]["scale"][0])


def segment_slide(slide_path, out, *, progress=None, should_stop=None, **kwargs) -> SlideResult:
    """Segment a whole slide into an OME-Zarr (see :func:`iter_segment_slide`).

    ``progress(done, total)`` is called per finished block; when ``should_stop()`` returns
    True the run stops (finished blocks are kept) and :class:`~napari_histoseg.core.runs.Cancelled`
    is raised.
    """
    from napari_histoseg.core.runs import drive

    return drive(iter_segment_slide(slide_path, out, **kwargs), progress, should_stop, "whole-slide run")
