"""``/explain``: heat maps of a tumour model's answer."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Request

from napari_histoseg.core.runs import drive
from napari_histoseg.server.routers.common import F16, RAW_BODY, array_response, arrays, guard
from napari_histoseg.server.routers.common import region as parse_region

router = APIRouter()


@router.post("/explain", tags=["explain"], openapi_extra=RAW_BODY, responses=F16)
async def explain(request: Request, model: str = "bundled", method: str = "gradcam",
                  target: str = "mask", region: Optional[str] = None, layer: Optional[str] = None,
                  tile: Optional[int] = None, overlap: int = 64):
    """Heat map (Grad-CAM, SHAP, entropy, MC dropout) of the image in the body. A boolean
    target mask goes with the image as an NPZ body (arrays ``image`` and ``target``)."""
    from napari_histoseg.explanations import iter_explain

    body = await request.body()
    store, window = request.app.state.store, parse_region(region)

    def run():
        entry = store.get(model, "segmentation")
        parts = arrays(body, request)
        tgt = parts["target"].astype(bool) if "target" in parts else target
        with entry.explain_lock:
            return drive(iter_explain(parts["image"], entry.explainer(), method, target=tgt, region=window,
                                      layer=layer or None, tile=tile or entry.model.meta.tile_size, overlap=overlap))
    return array_response(await guard(run))
