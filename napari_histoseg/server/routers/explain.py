"""``/explain``: heat maps of a tumour model's answer; ``/explain/{task}``: of any task that has them."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Request

from napari_histoseg.backends import wire
from napari_histoseg.core.runs import drive
from napari_histoseg.server.routers.common import (
    F16,
    NPZ_BODY,
    RAW_BODY,
    array_response,
    arrays,
    budgets,
    guard,
    image_of,
    tiling,
)
from napari_histoseg.server.routers.common import region as parse_region
from napari_histoseg.server.routers.infer import check_options
from napari_histoseg.tasks import check_infer_options, get_task

router = APIRouter()


@router.post("/explain", tags=["explain"], openapi_extra=RAW_BODY, responses=F16)
async def explain(request: Request, model: str = "bundled", method: str = "gradcam",
                  target: str = "mask", region: Optional[str] = None, layer: Optional[str] = None,
                  tile: Optional[int] = None, overlap: int = 64):
    """Heat map (Grad-CAM, SHAP, entropy, MC dropout) of the image in the body. A boolean
    target mask goes with the image as an NPZ body (arrays ``image`` and ``target``)."""
    from napari_histoseg.explanations import iter_explain

    store, window = request.app.state.store, parse_region(region)
    tile, overlap = tiling(tile, overlap)
    body = await request.body()

    def run():
        entry = store.get(model, "segmentation")
        tiling(tile, overlap, entry.meta.tile_size)
        parts = arrays(body, request)
        image = image_of(parts)
        tgt = parts["target"].astype(bool) if "target" in parts else target
        with entry.explain_lock:
            return drive(iter_explain(image, entry.explainer(), method, target=tgt, region=window,
                                      layer=layer or None, tile=tile or entry.model.meta.tile_size, overlap=overlap))
    return array_response(await guard(run, request=request, runtime_is_input=True))


@router.post("/explain/{task}", tags=["explain"], openapi_extra=NPZ_BODY, responses=F16)
async def explain_task(request: Request, task: str, model: str = "bundled"):
    """Heat map of a registered task's answer (classification: Grad-CAM of a ``region`` mask).
    The body is an NPZ made by ``backends.wire.pack``: ``image``, array options, and
    ``{"method": ..., "options": {...}}``."""
    from napari_histoseg.server.progress import HEADER, watch

    body = await request.body()
    store, progress = request.app.state.store, request.app.state.progress
    key = progress.start(request.headers.get(HEADER))

    def run():
        t = get_task(task)
        entry = store.get(model, t.name)
        if not t.EXPLAIN_OPTIONS:
            raise ValueError(f"{t.title} ({t.name}) has no explanations")
        parts, info = wire.unpack(body, request.headers.get("content-type"), **budgets(request))
        image = image_of(parts)
        options = info.get("options") or {}
        if not isinstance(options, dict):
            raise ValueError("options must be a JSON object")
        options = {**options, **parts}
        check_infer_options(t, options, t.EXPLAIN_OPTIONS)
        check_options(options, entry.meta, getattr(image, "shape", None), budgets(request)["max_pixels"])
        segmentation = entry.batcher is not None
        with entry.explain_lock if segmentation else entry.run_lock:   # hooks must not meet other runs
            target = entry.explainer() if segmentation else entry.model
            return drive(t.iter_explain(target, image, info.get("method", "gradcam"), **options),
                         **watch(progress, key, t.title))
    try:
        return array_response(await guard(run, request=request, runtime_is_input=True))
    finally:
        progress.end(key)
