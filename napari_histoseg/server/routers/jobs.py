"""``/jobs``: fine-tune jobs for a model of any registered task, followed and cancelled by id."""

from __future__ import annotations

import io
import shutil
import tempfile
from pathlib import Path
from typing import Optional

from fastapi import APIRouter, HTTPException, Request, Response

from napari_histoseg.backends import wire
from napari_histoseg.io.checks import InputError, batch_bytes, check_float, check_int, check_memory, inside
from napari_histoseg.server.routers.common import guard
from napari_histoseg.server.security import safe_unzip
from napari_histoseg.tasks import dataset_task, get_task

router = APIRouter()
DATASET_KINDS = {"segmentation": "semantic"}   # registry task -> dataset.json "task"
MAX_DATASET_JSON = 64 << 20


def check_settings(epochs, time_budget, lr, patch_size, batch_size, steps_per_epoch, name, model_version) -> None:
    """Every number finite and in range, and the patch and batch size within the server's
    memory, before anything is unpacked (so a refused job never starts)."""
    try:
        check_int(epochs, "epochs", lo=1, hi=10_000)
        check_float(time_budget, "time_budget (minutes)", lo=0, lo_open=True, hi=7 * 24 * 60)
        check_float(lr, "lr", lo=0, lo_open=True, hi=1)
        if patch_size is not None:
            check_int(patch_size, "patch_size", lo=32, hi=2048)
            if patch_size % 32:
                raise InputError(f"patch_size must be a multiple of 32; got {patch_size}")
        if batch_size is not None:
            check_int(batch_size, "batch_size", lo=1, hi=256)
        if steps_per_epoch is not None:
            check_int(steps_per_epoch, "steps_per_epoch", lo=1, hi=1_000_000)
        if patch_size is not None or batch_size is not None:
            from napari_histoseg.tumour.config import TumourConfig

            default = TumourConfig()   # what the job trains with where a size is not given
            patch, batch = patch_size or default.patch_size, batch_size or default.batch_size
            check_memory(batch_bytes(batch, patch, training=True), f"training on {batch} patches of {patch} px",
                         hint="use a smaller patch_size or batch_size")
        for text, what, most in ((name, "name", 200), (model_version, "model_version", 100)):
            if text is not None and (len(text) > most or not text.isprintable()):
                raise InputError(f"{what} must be printable text of at most {most} characters")
    except InputError as e:
        raise HTTPException(422, str(e)) from None


def check_dataset(root: Path, task: str) -> None:
    """The uploaded folder's dataset.json read with the shared reader (schema checked, every
    file a tile names required to stay inside ``root``: an upload that names ``/etc/passwd``
    or ``../x`` is refused before training reads anything), then every such file required to be
    in the upload. Messages name paths as written in dataset.json, never what lies elsewhere."""
    from napari_histoseg.io.dataset import PATH_FIELDS, read_dataset_json

    if not (root / "dataset.json").is_file():
        raise InputError("the dataset archive has no dataset.json at its top level")
    if (root / "dataset.json").stat().st_size > MAX_DATASET_JSON:
        raise InputError(f"dataset.json is larger than {MAX_DATASET_JSON >> 20} MB")
    meta = read_dataset_json(root, DATASET_KINDS.get(task, task))
    tiles = meta.get("tiles") or []
    if not tiles:
        raise InputError("dataset.json lists no tiles")
    for n, tile in enumerate(tiles):
        for key in PATH_FIELDS:
            given = tile.get(key)
            if isinstance(given, str) and not inside(root, given, f"tiles[{n}].{key}").is_file():
                raise InputError(f"dataset.json: tiles[{n}].{key} {given[:200]!r} is not a file in the archive")


@router.post("/jobs", tags=["fine-tune"], status_code=201, openapi_extra={"requestBody": {
    "required": True, "content": {"application/zip": {"schema": {"type": "string", "format": "binary"}}}}})
async def start_job(request: Request, model: str = "bundled", task: Optional[str] = None, epochs: int = 10,
                    time_budget: float = 15.0, lr: float = 1e-4, name: Optional[str] = None,
                    model_version: Optional[str] = None, patch_size: Optional[int] = None,
                    batch_size: Optional[int] = None, steps_per_epoch: Optional[int] = None):
    """Start fine-tuning ``model`` on a training-data folder sent as a zip (at most the server's
    ``--max-jobs`` at a time). ``task`` defaults to the one the folder's dataset.json names
    (else segmentation); ``patch_size`` and ``batch_size`` to the task's own; ``time_budget``
    in minutes. Follow it with ``GET /jobs/{id}``."""
    check_settings(epochs, time_budget, lr, patch_size, batch_size, steps_per_epoch, name, model_version)
    state = request.app.state
    store, runner, workdir = state.store, state.jobs, state.workdir
    try:
        runner.check_free()           # before the body is read or anything unpacked
    except RuntimeError as e:
        raise HTTPException(409, str(e)) from None
    body = await request.body()
    limit = int(state.config.max_body_mb * 2**20)

    def run():
        incoming = workdir / "incoming"
        incoming.mkdir(exist_ok=True)
        dest = Path(tempfile.mkdtemp(prefix="dataset-", dir=incoming))
        started = False
        try:
            try:
                safe_unzip(io.BytesIO(body), dest, max_bytes=4 * limit)
            except Exception as e:  # noqa: BLE001 - any unreadable archive is the client's
                raise ValueError(f"the dataset archive was refused: {e}") from None
            t = get_task(task or dataset_task(dest))
            check_dataset(dest, t.name)
            entry = store.get(model, t.name)
            meta = entry.meta
            job = runner.start(entry.ref, entry.path, dest, task=t.name, epochs=epochs, time_budget=time_budget,
                               lr=lr, name=name or meta.name, model_version=model_version or f"{meta.model_version}+ft",
                               patch_size=patch_size, batch_size=batch_size, steps_per_epoch=steps_per_epoch)
            started = True
            return job.public()
        except RuntimeError as e:
            raise HTTPException(409, str(e)) from None
        finally:
            if not started:
                shutil.rmtree(dest, ignore_errors=True)
    return await guard(run, request=request)


def _job(request: Request, job_id: str):
    jobs = request.app.state.jobs.jobs
    if job_id not in jobs:
        raise HTTPException(404, f"no fine-tune job {job_id[:40]!r}")
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
