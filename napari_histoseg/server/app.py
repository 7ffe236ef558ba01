"""The FastAPI application behind ``histoseg serve`` (OpenAPI page at ``/docs``).

Every route but ``/health``, ``/docs`` and ``/openapi.json`` needs the bearer token when
the server has one. Arrays travel as described in :mod:`napari_histoseg.backends.wire`;
probabilities come back as raw float16 with ``X-Shape`` and ``X-Dtype`` headers.
"""

from __future__ import annotations

import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel

from napari_histoseg.backends import wire
from napari_histoseg.core.hashing import file_sha256
from napari_histoseg.server.jobs import JobRunner
from napari_histoseg.server.security import BodyLimit, OutsideRoot, resolve_under, safe_unzip, token_ok
from napari_histoseg.server.store import ModelStore


@dataclass
class ServerConfig:
    """What ``histoseg serve`` was started with."""

    device: str = "auto"
    token: Optional[str] = None
    slides: Optional[Path] = None
    models: list = field(default_factory=list)   # extra checkpoints to serve (ref = file stem)
    bundled: bool = True
    max_body_mb: float = 256.0
    max_region_px: int = 4096 * 4096
    batching: bool = True
    batch_wait_ms: float = 5.0
    max_batch_tiles: int = 16
    max_batch_pixels: Optional[int] = None       # default: 2^22 px on a GPU, 2^18 on a CPU
    workdir: Optional[Path] = None               # uploads and fine-tune jobs (default: a temp dir)
    train_threads: Optional[int] = None


_RAW_BODY = {"requestBody": {"required": True, "content": {
    wire.RAW: {"schema": {"type": "string", "format": "binary"}},
    wire.PNG: {"schema": {"type": "string", "format": "binary"}},
    wire.NPY: {"schema": {"type": "string", "format": "binary"}}}}}
_F16 = {"200": {"description": "float16 array; shape and dtype in X-Shape and X-Dtype",
                "content": {wire.RAW: {"schema": {"type": "string", "format": "binary"}}}}}


class SlideRequest(BaseModel):
    path: str
    level: int = 0
    region: Optional[tuple[int, int, int, int]] = None
    model: str = "bundled"
    tile: Optional[int] = None
    overlap: int = 64


def _array_response(array, **extra_headers) -> Response:
    body, headers = wire.encode(array, "float16")
    return Response(body, media_type=wire.RAW, headers={**headers, **extra_headers})


def _region(text: Optional[str]):
    if not text:
        return None
    try:
        y, x, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise HTTPException(422, f"region must be 'y,x,h,w', not {text!r}") from None
    return y, x, h, w


async def _guard(fn, *args, **kwargs):
    """Run blocking work off the event loop; bad input becomes 4xx with the reason."""
    from napari_histoseg.models.checkpoint import CheckpointError

    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except HTTPException:
        raise
    except OutsideRoot as e:
        raise HTTPException(403, str(e)) from None
    except (FileNotFoundError, KeyError) as e:
        raise HTTPException(404, str(e).strip("'\"")) from None
    except (CheckpointError, wire.WireError, ValueError, TypeError) as e:
        raise HTTPException(400, str(e)) from None


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """The application; models load here, once, on ``config.device``."""
    from napari_histoseg.core.runs import drive
    from napari_histoseg.core.tiling import iter_predict

    config = config or ServerConfig()
    workdir = Path(config.workdir or tempfile.mkdtemp(prefix="histoseg-serve-"))
    store = ModelStore(config.device, batching=config.batching, wait_ms=config.batch_wait_ms,
                       max_tiles=config.max_batch_tiles, max_pixels=config.max_batch_pixels)
    if config.bundled:
        store.add_bundled()
    for path in config.models:
        store.add(path)
    runner = JobRunner(workdir / "jobs", on_checkpoint=lambda p, name: store.add(p).ref,
                       threads=config.train_threads)
    limit = int(config.max_body_mb * 2**20)
    bearer = HTTPBearer(auto_error=False, description="the token in the server's --token-file")

    def auth(request: Request, creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)):
        if not token_ok(config.token, request.headers.get("authorization")):
            raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})

    @asynccontextmanager
    async def lifespan(_app):
        yield
        store.close()

    app = FastAPI(title="napari-histoseg server", version=_version(), lifespan=lifespan,
                  description="Tumour segmentation, explanations and fine-tuning on this machine's "
                              f"device ({store.device.type}). Arrays travel as raw bytes with X-Shape / X-Dtype "
                              "headers, PNG or NPY; never pickle.")
    app.state.store, app.state.jobs, app.state.config = store, runner, config
    api = APIRouter(dependencies=[Depends(auth)])

    @app.get("/health", tags=["server"])
    def health():
        return {"ok": True, "device": store.device.type}

    @api.get("/models", tags=["models"])
    def models():
        """The models served here: reference, name, version, task, tile size, device."""
        return {"device": store.device.type, "models": [e.info() for e in store.entries.values()]}

    @api.get("/checkpoints/{sha256}", tags=["models"])
    def by_hash(sha256: str):
        """The model whose checkpoint file has this SHA-256 (so a client uploads it only once)."""
        entry = store.by_hash(sha256.lower())
        if entry is None:
            raise HTTPException(404, "no model with that checkpoint hash")
        return entry.info()

    @api.post("/models", tags=["models"], openapi_extra={"requestBody": {"required": True, "content": {
        wire.RAW: {"schema": {"type": "string", "format": "binary"}}}}})
    async def upload(request: Request):
        """Upload a ``.safetensors`` segmentation checkpoint (nothing else is loaded)."""
        body = await request.body()

        def add():
            uploads = workdir / "uploads"
            uploads.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkstemp(dir=uploads, suffix=".safetensors")[1])
            tmp.write_bytes(body)
            sha = file_sha256(tmp)
            known = store.by_hash(sha)
            if known is not None:
                tmp.unlink()
                return known.info()
            path = tmp.rename(uploads / f"{sha[:16]}.safetensors")
            try:
                return store.add(path, ref=f"upload-{sha[:12]}").info()
            except Exception:
                path.unlink(missing_ok=True)
                raise
        return await _guard(add)

    def _image(body: bytes, request: Request):
        data = wire.decode(body, request.headers.get("content-type"), request.headers.get("x-shape"),
                           request.headers.get("x-dtype"))
        if isinstance(data, dict):
            return data
        return {"image": data}

    def _segment(entry, image, **kw):
        with entry.batcher.request():
            return drive(iter_predict(image, entry.engine_model(), **kw))

    @api.post("/predict", tags=["segment"], openapi_extra=_RAW_BODY, responses=_F16)
    async def predict_tiles(request: Request, model: str = "bundled"):
        """Probabilities (N, C, h, w) for a batch of uint8 RGB tiles (N, h, w, 3), h and w
        multiples of 32: the forward pass only (the client tiles and blends)."""
        body = await request.body()

        def run():
            entry = store.get(model)
            tiles = _image(body, request)["image"]
            if tiles.ndim != 4 or tiles.shape[-1] != 3 or tiles.dtype != np.uint8:
                raise ValueError(f"send uint8 tiles (N, h, w, 3), not {tiles.dtype} {tiles.shape}")
            if tiles.shape[1] % 32 or tiles.shape[2] % 32:
                raise ValueError(f"tile sides must be multiples of 32, not {tiles.shape[1:3]}")
            with entry.batcher.request():
                return entry.batcher(tiles)
        return _array_response(await _guard(run))

    @api.post("/segment", tags=["segment"], openapi_extra=_RAW_BODY, responses=_F16)
    async def segment(request: Request, model: str = "bundled", tile: Optional[int] = None, overlap: int = 64,
                      region: Optional[str] = None):
        """Tumour probability of an RGB image sent in the body (or of ``region=y,x,h,w``
        of it, the rest serving as context), tiled, batched and blended on the server."""
        body = await request.body()

        def run():
            entry = store.get(model)
            image = _image(body, request)["image"]
            pred = _segment(entry, image, tile=tile or entry.model.meta.tile_size, overlap=overlap,
                            region=_region(region))
            return pred
        pred = await _guard(run)
        return _array_response(pred.probability, **{"X-Region": ",".join(map(str, pred.region))})

    @api.post("/segment-slide", tags=["segment"], responses=_F16)
    async def segment_slide(req: SlideRequest):
        """Tumour probability of a region of a slide the server reads itself, named by its
        path relative to the server's ``--slides`` folder."""
        from napari_histoseg.io import open_image

        def run():
            if config.slides is None:
                raise FileNotFoundError("this server serves no slides (start it with --slides DIR)")
            path = resolve_under(config.slides, req.path)
            entry = store.get(req.model)
            with open_image(path) as slide:
                if not 0 <= req.level < len(slide.levels):
                    raise ValueError(f"level {req.level} does not exist; the slide has {len(slide.levels)}")
                image = slide.levels[req.level]
                h, w = (req.region[2], req.region[3]) if req.region else image.shape[:2]
                if h * w > config.max_region_px:
                    raise ValueError(f"region of {h} x {w} px is larger than this server's limit "
                                     f"({config.max_region_px} px); ask for smaller regions or a coarser level")
                return _segment(entry, image, tile=req.tile or entry.model.meta.tile_size, overlap=req.overlap,
                                region=req.region)
        pred = await _guard(run)
        return _array_response(pred.probability, **{"X-Region": ",".join(map(str, pred.region))})

    @api.post("/explain", tags=["explain"], openapi_extra=_RAW_BODY, responses=_F16)
    async def explain(request: Request, model: str = "bundled", method: str = "gradcam",
                      target: str = "mask", region: Optional[str] = None, layer: Optional[str] = None,
                      tile: Optional[int] = None, overlap: int = 64):
        """Heat map (Grad-CAM, SHAP, entropy, MC dropout) of the image in the body. A boolean
        target mask goes with the image as an NPZ body (arrays ``image`` and ``target``)."""
        from napari_histoseg.explanations import iter_explain

        body = await request.body()

        def run():
            entry = store.get(model)
            arrays = _image(body, request)
            tgt = arrays["target"].astype(bool) if "target" in arrays else target
            with entry.explain_lock:
                return drive(iter_explain(arrays["image"], entry.explainer(), method, target=tgt,
                                          region=_region(region), layer=layer or None,
                                          tile=tile or entry.model.meta.tile_size, overlap=overlap))
        return _array_response(await _guard(run))

    @api.post("/jobs", tags=["fine-tune"], status_code=201, openapi_extra={"requestBody": {
        "required": True, "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}})
    async def start_job(request: Request, model: str = "bundled", epochs: int = 10, time_budget: float = 15.0,
                        lr: float = 1e-4, name: Optional[str] = None, model_version: Optional[str] = None,
                        patch_size: int = 256, batch_size: int = 8, steps_per_epoch: Optional[int] = None):
        """Start fine-tuning ``model`` on a training-data folder (DESIGN.md layout) sent
        as a zip; one job at a time. Follow it with ``GET /jobs/{id}``."""
        body = await request.body()
        if not (32 <= patch_size <= 2048 and patch_size % 32 == 0 and 1 <= batch_size <= 256 and epochs >= 1):
            raise HTTPException(422, "patch_size must be a multiple of 32 in 32-2048, batch_size 1-256, epochs >= 1")

        def run():
            import io

            entry = store.get(model)
            meta = entry.model.meta
            dest = Path(tempfile.mkdtemp(prefix="dataset-", dir=workdir))
            try:
                safe_unzip(io.BytesIO(body), dest, max_bytes=4 * limit)
            except Exception as e:
                import shutil

                shutil.rmtree(dest, ignore_errors=True)
                raise ValueError(f"the dataset archive was refused: {e}") from None
            if not (dest / "dataset.json").is_file():
                raise ValueError("the dataset archive has no dataset.json at its top level")
            try:
                job = runner.start(entry.ref, entry.path, dest, epochs=epochs, time_budget=time_budget, lr=lr,
                                   name=name or meta.name, model_version=model_version or f"{meta.model_version}+ft",
                                   patch_size=patch_size, batch_size=batch_size, steps_per_epoch=steps_per_epoch)
            except RuntimeError as e:
                import shutil

                shutil.rmtree(dest, ignore_errors=True)
                raise HTTPException(409, str(e)) from None
            return job.public()
        return await _guard(run)

    def _job(job_id):
        if job_id not in runner.jobs:
            raise HTTPException(404, f"no fine-tune job {job_id!r}")
        return runner.jobs[job_id]

    @api.get("/jobs/{job_id}", tags=["fine-tune"])
    def job_state(job_id: str):
        """State, latest step, every epoch's numbers, and the new model's reference."""
        return _job(job_id).public()

    @api.delete("/jobs/{job_id}", tags=["fine-tune"])
    def cancel_job(job_id: str):
        """Stop after the current step; the best checkpoint so far is kept."""
        _job(job_id)
        return runner.cancel(job_id).public()

    @api.get("/jobs/{job_id}/checkpoint", tags=["fine-tune"],
             responses={"200": {"content": {wire.RAW: {}}, "description": "the .safetensors file"}})
    def job_checkpoint(job_id: str):
        job = _job(job_id)
        if job.state in ("running", "cancelling") or not job.out.is_file():
            raise HTTPException(409, f"job {job_id} has no checkpoint ({job.state})")
        return Response(job.out.read_bytes(), media_type=wire.RAW,
                        headers={"Content-Disposition": f'attachment; filename="{job.out.name}"'})

    @api.get("/stats", tags=["server"])
    def stats():
        """Forward passes and tiles per model (how well batching stacks requests)."""
        return {ref: e.batcher.stats() for ref, e in store.entries.items()}

    app.include_router(api)
    if limit > 0:
        app.add_middleware(BodyLimit, limit=limit)
    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("napari-histoseg")
    except Exception:  # noqa: BLE001
        return "0"
