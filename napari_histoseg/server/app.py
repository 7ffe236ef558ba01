"""The FastAPI application behind ``histoseg serve`` (OpenAPI page at ``/docs``): wiring only.

One router per resource (:mod:`napari_histoseg.server.routers`: models, infer, explain,
jobs) over the task registry. Every route but ``/health``, ``/docs`` and ``/openapi.json``
needs the bearer token when the server has one, checked on the headers before any of the
body is read (:class:`~napari_histoseg.server.security.Gate`, which also caps the body).
What a request may cost is capped by the :class:`ServerConfig`: body size, pixels decoded per
request, loaded uploads, concurrent fine-tune jobs. Arrays travel as described in
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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from napari_histoseg.io.checks import InputError, check_float, check_int
from napari_histoseg.server.jobs import JobRunner
from napari_histoseg.server.progress import Progress
from napari_histoseg.server.routers import explain, infer, jobs, models
from napari_histoseg.server.routers.common import auth
from napari_histoseg.server.security import Gate, public_text
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
    max_region_px: int = 4096 * 4096             # pixels one request may decode or ask for
    max_models: int = 8                          # uploaded / fine-tuned models held loaded (LRU)
    max_jobs: int = 1                            # fine-tune jobs at a time
    max_busy: int = 32                           # requests computing or waiting for the device at once
    max_inflight_mb: Optional[float] = None      # request bodies held at once (default 4 x max_body_mb)
    batching: bool = True
    batch_wait_ms: float = 5.0
    max_batch_tiles: int = 16
    max_batch_pixels: Optional[int] = None       # default: 2^22 px on a GPU, 2^18 on a CPU
    workdir: Optional[Path] = None               # uploads and jobs go in WORKDIR/histoseg-serve (default: a temp dir)
    train_threads: Optional[int] = None


def create_app(config: ServerConfig | None = None) -> FastAPI:
    """The application; models load here, once, on ``config.device``."""
    config = config or ServerConfig()
    check_config(config)
    workdir = server_folder(config.workdir)
    store = ModelStore(config.device, batching=config.batching, wait_ms=config.batch_wait_ms,
                       max_tiles=config.max_batch_tiles, max_pixels=config.max_batch_pixels,
                       max_models=config.max_models)
    if config.bundled:
        store.add_bundled()
    for path in config.models:
        store.add(path)

    def scrub(text, job):
        return public_text(text, {job.dataset: "<dataset>", workdir: "<server workdir>"})

    runner = JobRunner(workdir / "jobs", on_checkpoint=lambda p, name: store.add(p, pinned=False).ref,
                       threads=config.train_threads, max_jobs=config.max_jobs, scrub=scrub)
    store.in_use = lambda: {j.source for j in runner.running()}

    @asynccontextmanager
    async def lifespan(_app):
        yield
        store.close()

    app = FastAPI(title="napari-histoseg server", version=_version(), lifespan=lifespan,
                  description="Tumour segmentation, nuclei, benign/malignant classification, explanations and "
                              f"fine-tuning on this machine's device ({store.device.type}). Arrays travel as raw "
                              "bytes with X-Shape / X-Dtype headers, PNG, NPY or NPZ; never pickle.")
    app.state.store, app.state.jobs, app.state.config, app.state.workdir = store, runner, config, workdir
    app.state.progress = Progress()
    app.state.busy = 0   # requests inside guard(), counted on the event loop (see routers.common.guard)
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.include_router(models.public)
    for router in (models.router, infer.router, explain.router, jobs.router):
        app.include_router(router, dependencies=[Depends(auth)])
    limit = int(config.max_body_mb * 2**20)
    inflight = int((config.max_inflight_mb or 4 * config.max_body_mb) * 2**20)
    app.add_middleware(Gate, token=config.token, limit=limit, inflight=max(inflight, limit))
    return app


async def _invalid_request(request, exc):
    """A parameter or JSON body of the wrong form: 422 with one line naming the fields (the
    input itself is not echoed: it may be binary, or large)."""
    parts = []
    for err in exc.errors()[:4]:
        where = ".".join(str(v) for v in err.get("loc", ()) if v not in ("body", "query", "path"))
        parts.append(f"{where or 'the request'}: {str(err.get('msg', 'invalid'))[:200]}")
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


def check_config(config: ServerConfig) -> None:
    """InputError naming the setting that cannot work (a body limit of 0 must not mean none)."""
    check_float(config.max_body_mb, "--max-body-mb", lo=0, lo_open=True, hi=64 * 1024)
    if config.max_inflight_mb is not None:
        check_float(config.max_inflight_mb, "max_inflight_mb", lo=0, lo_open=True)
    check_int(config.max_region_px, "--max-pixels", lo=64 * 64, hi=1 << 34)
    check_int(config.max_models, "--max-models", lo=1, hi=1000)
    check_int(config.max_jobs, "--max-jobs", lo=1, hi=64)
    check_int(config.max_busy, "--max-busy", lo=1, hi=4096)
    check_float(config.batch_wait_ms, "--batch-wait-ms", lo=0, hi=10_000)
    check_int(config.max_batch_tiles, "max_batch_tiles", lo=1, hi=4096)
    if config.workdir is not None and not Path(config.workdir).is_dir():
        raise InputError(f"--workdir {config.workdir} is not a folder" +
                         (" (it is a file)" if Path(config.workdir).exists() else " (it does not exist)"))
    if config.slides is not None and not Path(config.slides).is_dir():
        raise InputError(f"--slides {config.slides} is not a folder")


def server_folder(workdir) -> Path:
    """The server's own folder: ``WORKDIR/histoseg-serve`` (nothing else in ``--workdir`` is
    touched) or a new temporary folder. What a previous server left there is removed: unpacked
    dataset uploads (``incoming/``) and uploaded checkpoints (``uploads/``; a new server knows
    none, clients upload again). Finished jobs stay (:meth:`JobRunner.recover`)."""
    import shutil

    if workdir is None:
        return Path(tempfile.mkdtemp(prefix="histoseg-serve-"))
    own = Path(workdir) / "histoseg-serve"
    for leftover in ("incoming", "uploads"):
        shutil.rmtree(own / leftover, ignore_errors=True)
    own.mkdir(exist_ok=True)
    return own


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("napari-histoseg")
    except Exception:  # noqa: BLE001
        return "0"
