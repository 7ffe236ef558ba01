"""Inference: ``/predict`` (a batch of tiles), ``/segment`` and ``/segment-slide`` (tumour, tiled
and blended here) and ``/infer/{task}`` (any registered task, one image or region per request)."""

from __future__ import annotations

from typing import Optional

import numpy as np
from fastapi import APIRouter, HTTPException, Request, Response
from pydantic import BaseModel

from napari_histoseg.backends import wire
from napari_histoseg.core.runs import drive
from napari_histoseg.io.checks import InputError, check_int
from napari_histoseg.server.routers.common import (
    F16,
    NPZ,
    NPZ_BODY,
    RAW_BODY,
    array_response,
    arrays,
    budgets,
    check_region,
    guard,
    image_of,
    tiling,
)
from napari_histoseg.server.routers.common import region as parse_region
from napari_histoseg.tasks import check_infer_options, get_task

router = APIRouter()
SEGMENTATION = "segmentation"


class SlideRequest(BaseModel):
    path: str
    level: int = 0
    region: Optional[tuple[int, int, int, int]] = None
    model: str = "bundled"
    tile: Optional[int] = None
    overlap: int = 64


def run_task(entry, image, follow=None, **options):
    """``entry``'s task on ``image``: a tumour model's forward passes go through its batcher
    (stacked with other requests'), the other tasks' runs take turns on the model.
    ``follow``: ``(Progress, key)`` to report each step to (and stop when the client cancels)."""
    task = get_task(entry.task)
    check_infer_options(task, options)
    from napari_histoseg.server.progress import watch

    steps = watch(*(follow or (None, None)), task.title)
    if entry.batcher is not None:
        with entry.batcher.request():
            return drive(task.iter_infer(entry.engine_model(), image, **options), **steps)
    with entry.run_lock:
        return drive(task.iter_infer(entry.model, image, **options), **steps)


def _prediction_response(pred) -> Response:
    return array_response(pred.probability, **{"X-Region": ",".join(map(str, pred.region))})


@router.post("/predict", tags=["segment"], openapi_extra=RAW_BODY, responses=F16)
async def predict_tiles(request: Request, model: str = "bundled"):
    """Probabilities (N, C, h, w) for a batch of uint8 RGB tiles (N, h, w, 3), h and w
    multiples of 32: the forward pass only (the client tiles and blends)."""
    body = await request.body()
    store = request.app.state.store

    def run():
        entry = store.get(model, SEGMENTATION)
        tiles = image_of(arrays(body, request))
        if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
            raise ValueError(f"send uint8 tiles (N, h, w, 3), not {tiles.dtype} {tiles.shape}")
        if tiles.shape[1] % 32 or tiles.shape[2] % 32:
            raise ValueError(f"tile sides must be multiples of 32, not {tiles.shape[1:3]}")
        with entry.batcher.request():
            return entry.batcher(tiles)
    return array_response(await guard(run, request=request))


@router.post("/segment", tags=["segment"], openapi_extra=RAW_BODY, responses=F16)
async def segment(request: Request, model: str = "bundled", tile: Optional[int] = None, overlap: int = 64,
                  region: Optional[str] = None):
    """Tumour probability of an RGB image sent in the body (or of ``region=y,x,h,w``
    of it, the rest serving as context), tiled, batched and blended on the server."""
    store, window = request.app.state.store, parse_region(region)
    tile, overlap = tiling(tile, overlap)
    body = await request.body()

    def run():
        entry = store.get(model, SEGMENTATION)
        tiling(tile, overlap, entry.meta.tile_size)
        return run_task(entry, image_of(arrays(body, request)), tile=tile, overlap=overlap, region=window)
    return _prediction_response(await guard(run, request=request))



@router.post("/segment-slide", tags=["segment"], responses=F16)
async def segment_slide(request: Request, req: SlideRequest):
    """Tumour probability of a region of a slide the server reads itself, named by its
    path relative to the server's ``--slides`` folder."""
    from napari_histoseg.io import open_image
    from napari_histoseg.io.checks import check_pixels
    from napari_histoseg.server.security import resolve_under

    store, config = request.app.state.store, request.app.state.config
    tile, overlap = tiling(req.tile, req.overlap)
    window = None if req.region is None else check_region(req.region)
    try:
        level = check_int(req.level, "level", lo=0, hi=64)
    except InputError as e:
        raise HTTPException(422, str(e)) from None

    def run():
        if config.slides is None:
            raise FileNotFoundError("this server serves no slides (start it with --slides DIR)")
        path = resolve_under(config.slides, req.path)
        entry = store.get(req.model, SEGMENTATION)
        tiling(tile, overlap, entry.meta.tile_size)
        with open_image(path) as slide:
            if level >= len(slide.levels):
                raise ValueError(f"level {level} does not exist; the slide has {len(slide.levels)}")
            image = slide.levels[level]
            h, w = window[2:] if window else image.shape[:2]
            check_pixels((h, w), f"a region of {w} x {h} px", budget=config.max_region_px,
                         hint="ask for smaller regions or a coarser level")
            return run_task(entry, image, tile=tile, overlap=overlap, region=window)
    return _prediction_response(await guard(run, request=request))


@router.post("/infer/{task}", tags=["infer"], openapi_extra=NPZ_BODY, responses=NPZ)
async def infer(request: Request, task: str, model: str = "bundled"):
    """Run a registered task (``segmentation``, ``instances``, ``classification``) on the image
    in the body. Send an NPZ made by ``backends.wire.pack``: the array ``image``, array options
    (a classification ``region`` mask) and the other options as ``{"options": {...}}``; or just
    the image (raw, PNG or NPY). The answer is the result's arrays and info, packed the same way."""
    from napari_histoseg.server.progress import HEADER

    body = await request.body()
    store, progress = request.app.state.store, request.app.state.progress
    key = progress.start(request.headers.get(HEADER))

    def run():
        t = get_task(task)
        entry = store.get(model, t.name)
        parts, info = wire.unpack(body, request.headers.get("content-type"), **budgets(request)) \
            if _is_npz(request) else (arrays(body, request), {})
        image = image_of(parts)
        options = info.get("options") or {}
        if not isinstance(options, dict):
            raise ValueError("options must be a JSON object")
        options = {**options, **parts}
        check_options(options, entry.meta, getattr(image, "shape", None), budgets(request)["max_pixels"])
        return t.result_parts(run_task(entry, image, (progress, key), **options))
    try:
        result_arrays, result_info = await guard(run, request=request, runtime_is_input=True)
    finally:
        progress.end(key)
    return Response(wire.pack(result_arrays, result_info), media_type=wire.NPZ)


@router.get("/progress/{key}", tags=["infer"])
def get_progress(request: Request, key: str):
    """``{"done": n, "total": m}`` of a request sent with ``X-Progress-Id: key`` (404 once it ended)."""
    state = request.app.state.progress.get(key)
    if state is None:
        raise HTTPException(404, "no request in progress with that id")
    return state


@router.delete("/progress/{key}", tags=["infer"])
def cancel_request(request: Request, key: str):
    """Stop the request sent with ``X-Progress-Id: key`` at its next step (it answers 409)."""
    if not request.app.state.progress.cancel(key):
        raise HTTPException(404, "no request in progress with that id")
    return {"cancelled": True}


def check_options(options: dict, meta=None, image_shape=None, max_pixels=None) -> None:
    """The numbers the tasks' options share (tile, overlap, batch size, samples, channel, mpp,
    thresholds), checked before any work: finite and in range; with ``mpp``, the image as
    the model will see it (resampled from ``mpp`` to the model's) must fit ``max_pixels``."""
    from napari_histoseg.io.checks import check_float, check_pixels

    if "tile" in options or "overlap" in options:
        tiling(options.get("tile"), options.get("overlap", 0), getattr(meta, "tile_size", None))
    for key, hi in (("batch_size", 256), ("samples", 512)):
        if options.get(key) is not None:
            check_int(options[key], key, lo=1, hi=hi)
    for key, lo, hi in (("threshold", 0, 1), ("score_threshold", 0, 1), ("mask_threshold", 0, 1),
                        ("blur_sigma", 0, 1000), ("stdevs", 0, 100)):
        if options.get(key) is not None:
            check_float(options[key], key, lo=lo, hi=hi)
    out_channels = getattr(meta, "out_channels", None)
    if options.get("channel") is not None:
        check_int(options["channel"], "channel", lo=0, hi=max(0, (out_channels or 1) - 1))
    mpp = options.get("mpp")
    if mpp is not None:
        mpp = check_float(mpp, "mpp", lo=0.01, hi=100, lo_open=True)
        model_mpp = getattr(meta, "mpp", None)
        if image_shape is not None and max_pixels and model_mpp and model_mpp > 0:
            scale = mpp / model_mpp
            h, w = (max(1, round(v * scale)) for v in image_shape[:2])
            check_pixels((h, w), f"the image resampled from {mpp:g} to the model's {model_mpp:g} µm/px",
                         budget=max_pixels, hint="check the mpp, or send a smaller region")


def _is_npz(request: Request) -> bool:
    return (request.headers.get("content-type") or "").split(";")[0].strip().lower() == wire.NPZ
