"""``/jobs``: fine-tune jobs for a model of any registered task, followed and cancelled by id."""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, HTTPException, Request, Response

from napari_histoseg.backends import wire
from napari_histoseg.server.routers.common import guard
from napari_histoseg.server.security import safe_unzip
from napari_histoseg.tasks import dataset_task, get_task

router = APIRouter()


@router.post("/jobs", tags=["fine-tune"], status_code=201, openapi_extra={"requestBody": {
    "required": True, "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}})
async def start_job(request: Request, model: str = "bundled", task: Optional[str] = None, epochs: int = 10,
                    time_budget: float = 15.0, lr: float = 1e-4, name: Optional[str] = None,
                    model_version: Optional[str] = None, patch_size: Optional[int] = None,
                    batch_size: Optional[int] = None, steps_per_epoch: Optional[int] = None):
    """Start fine-tuning ``model`` on a training-data folder sent as a zip; one job at a
    time. ``task`` defaults to the one the folder's dataset.json names (else segmentation);
    ``patch_size`` and ``batch_size`` to the task's own. Follow it with ``GET /jobs/{id}``."""
    body = await request.body()
    if not ((patch_size is None or (32 <= patch_size <= 2048 and patch_size % 32 == 0))
            and (batch_size is None or 1 <= batch_size <= 256) and epochs >= 1):
        raise HTTPException(422, "patch_size must be a multiple of 32 in 32-2048, batch_size 1-256, epochs >= 1")
    state = request.app.state
    store, runner, workdir = state.store, state.jobs, state.workdir
    limit = int(state.config.max_body_mb * 2**20)

    def run():
        dest = Path(tempfile.mkdtemp(prefix="dataset-", dir=workdir))
        try:
            safe_unzip(io.BytesIO(body), dest, max_bytes=4 * limit)
        except Exception as e:
            shutil.rmtree(dest, ignore_errors=True)
            raise ValueError(f"the dataset archive was refused: {e}") from None
        try:
            if not (dest / "dataset.json").is_file():
                raise ValueError("the dataset archive has no dataset.json at its top level")
            t = get_task(task or dataset_task(dest))
            entry = store.get(model, t.name)
            meta = entry.meta
            return runner.start(entry.ref, entry.path, dest, task=t.name, epochs=epochs, time_budget=time_budget,
                                lr=lr, name=name or meta.name,
                                model_version=model_version or f"{meta.model_version}+ft",
                                patch_size=patch_size, batch_size=batch_size,
                                steps_per_epoch=steps_per_epoch).public()
        except RuntimeError as e:
            shutil.rmtree(dest, ignore_errors=True)
            raise HTTPException(409, str(e)) from None
        except Exception:
            shutil.rmtree(dest, ignore_errors=True)
            raise
    return await guard(run)


def _job(request: Request, job_id: str):
    jobs = request.app.state.jobs.jobs
    if job_id not in jobs:
        raise HTTPException(404, f"no fine-tune job {job_id!r}")
    return jobs[job_id]


@router.get("/jobs/{job_id}", tags=["fine-tune"])
def job_state(request: Request, job_id: str):
    """State, latest step, every epoch's numbers, and the new model's reference."""
    return _job(request, job_id).public()


@router.delete("/jobs/{job_id}", tags=["fine-tune"])
def cancel_job(request: Request, job_id: str):
    """Stop after the current step; the best checkpoint so far is kept."""
    _job(request, job_id)
    return request.app.state.jobs.cancel(job_id).public()


@router.get("/jobs/{job_id}/checkpoint", tags=["fine-tune"],
            responses={"200": {"content": {wire.RAW: {}}, "description": "the .safetensors file"}})
def job_checkpoint(request: Request, job_id: str):
    job = _job(request, job_id)
    if job.state in ("running", "cancelling") or not job.out.is_file():
        raise HTTPException(409, f"job {job_id} has no checkpoint ({job.state})")
    return Response(job.out.read_bytes(), media_type=wire.RAW,
                    headers={"Content-Disposition": f'attachment; filename="{job.out.name}"'})
