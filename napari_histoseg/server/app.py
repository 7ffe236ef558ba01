"""The FastAPI application behind ``histoseg serve`` (OpenAPI page at ``/docs``): wiring only.

One router per resource (:mod:`napari_histoseg.server.routers`: models, infer, explain,
jobs) over the task registry. Every route but ``/health``, ``/docs`` and ``/openapi.json``
needs the bearer token when the server has one. Arrays travel as described in
:mod:`napari_histoseg.backends.wire`; probabilities come back as raw float16 with ``X-Shape``
and ``X-Dtype`` headers, task results of ``/infer/{task}`` as an NPZ of arrays and JSON info.
"""

from __future__ import annotations

import tempfile
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from fastapi import Depends, FastAPI

from napari_histoseg.server.jobs import JobRunner
from napari_histoseg.server.routers import explain, infer, jobs, models
from napari_histoseg.server.routers.common import auth
from napari_histoseg.server.security import BodyLimit
from napari_histoseg.server.store import ModelStore


@dataclass
class ServerConfig:
    """What ``histoseg serve`` was started with."""

    device: str = "auto"
    token: Optional[str] = None
    slides: Optional[Path] = None
    models: list = field(default_factory=list)   # extra checkpoints to serve (ref = file stem), any task
    bundled: bool = True                         # the bundled model of every task this install has
    max_body_mb: float = 256.0
    max_region_px: int = 4096 * 4096
    batching: bool = True
    batch_wait_ms: float = 5.0
    max_batch_tiles: int = 16
    max_batch_pixels: Optional[int] = None       # default: 2^22 px on a GPU, 2^18 on a CPU
    workdir: Optional[Path] = None               # uploads and fine-tune jobs (default: a temp dir)
    train_threads: Optional[int] = None


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """The application; models load here, once, on ``config.device``."""
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

    @asynccontextmanager
    async def lifespan(_app):
        yield
        store.close()

    app = FastAPI(title="napari-histoseg server", version=_version(), lifespan=lifespan,
                  description="Tumour segmentation, nuclei, benign/malignant classification, explanations and "
                              f"fine-tuning on this machine's device ({store.device.type}). Arrays travel as raw "
                              "bytes with X-Shape / X-Dtype headers, PNG, NPY or NPZ; never pickle.")
    app.state.store, app.state.jobs, app.state.config, app.state.workdir = store, runner, config, workdir
    app.include_router(models.public)
    for router in (models.router, infer.router, explain.router, jobs.router):
        app.include_router(router, dependencies=[Depends(auth)])
    limit = int(config.max_body_mb * 2**20)
    if limit > 0:
        app.add_middleware(BodyLimit, limit=limit)
    return app


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("napari-histoseg")
    except Exception:  # noqa: BLE001
        return "0"
