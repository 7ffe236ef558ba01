"""Fine-tune jobs on the server: one at a time, in a thread, followed and cancelled by id.

A job trains a server model (through its task's ``fine_tune`` in the registry,
:mod:`napari_histoseg.tasks`) on an uploaded training-data folder (the zip of what *Export* writes), keeps its progress (the latest
step, every epoch) for ``GET /jobs/{id}``, stops cleanly on ``DELETE /jobs/{id}`` (the best
checkpoint so far is kept), and registers the new checkpoint as a server model.
"""

from __future__ import annotations

import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Job:
    id: str
    model: str
    dataset: Path
    out: Path
    settings: dict
    task: str = "segmentation"
    state: str = "running"      # running | cancelling | done | cancelled | failed
    created: float = field(default_factory=time.time)
    step: dict | None = None
    epochs: list = field(default_factory=list)
    summary: dict | None = None
    error: str | None = None
    new_model: str | None = None
    cancel: bool = False

    def public(self) -> dict:
        return {"id": self.id, "state": self.state, "model": self.model, "task": self.task, "settings": self.settings,
                "step": self.step, "epochs": self.epochs, "error": self.error, "new_model": self.new_model,
                "checkpoint_ready": self.state in ("done", "cancelled") and self.out.is_file(),
                "summary": None if self.summary is None else
                {k: v for k, v in self.summary.items() if k != "history"},
                "seconds": round(time.time() - self.created, 1)}


class JobRunner:
    """Holds the jobs; ``on_checkpoint(path, name)`` registers a finished job's model."""

    def __init__(self, workdir: Path, on_checkpoint, threads: int | None = None):
        self.workdir = Path(workdir)
        self.on_checkpoint = on_checkpoint
        self.threads = threads
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()

    def busy(self) -> Job | None:
        return next((j for j in self.jobs.values() if j.state in ("running", "cancelling")), None)

    def start(self, model_ref: str, checkpoint: Path, dataset: Path, *, task: str = "segmentation",
              epochs: int = 10, time_budget: float = 15.0, lr: float = 1e-4, name: str = "histoseg-model",
              model_version: str = "0+ft", patch_size: int | None = None, batch_size: int | None = None,
              steps_per_epoch: int | None = None) -> Job:
        """Start a job (``patch_size``/``batch_size`` None: the task's own defaults)."""
        with self._lock:
            running = self.busy()
            if running is not None:
                raise RuntimeError(f"fine-tune job {running.id} is still running; one job at a time")
            job_id = uuid.uuid4().hex[:12]
            out = self.workdir / job_id / f"{_safe(name)}.safetensors"
            out.parent.mkdir(parents=True, exist_ok=True)
            settings = {"epochs": int(epochs), "time_budget_min": float(time_budget), "lr": float(lr),
                        "name": name, "model_version": model_version, "patch_size": patch_size,
                        "batch_size": batch_size, "steps_per_epoch": steps_per_epoch}
            job = Job(job_id, model_ref, Path(dataset), out, settings, task)
            self.jobs[job_id] = job
        threading.Thread(target=self._run, args=(job, checkpoint), name=f"histoseg-job-{job_id}",
                         daemon=True).start()
        return job

    def _run(self, job: Job, checkpoint: Path):
        from napari_histoseg.tasks import get_task

        def progress(info):
            if info.get("kind") == "step":
                job.step = {k: _plain(v) for k, v in info.items()}
            elif info.get("kind") == "epoch":
                job.epochs.append({k: _plain(v) for k, v in info.items() if k != "history"})

        s = job.settings
        given = {k: s[k] for k in ("patch_size", "batch_size", "steps_per_epoch") if s[k] is not None}
        try:
            job.summary = get_task(job.task).fine_tune(
                job.dataset, job.out, checkpoint, epochs=s["epochs"], time_budget=s["time_budget_min"], lr=s["lr"],
                name=s["name"], model_version=s["model_version"], half_weights=True, threads=self.threads,
                progress=progress, should_stop=lambda: job.cancel, **given)
            job.summary = {k: _plain(v) for k, v in job.summary.items()}
            if job.out.is_file():
                job.new_model = self.on_checkpoint(job.out, s["name"])
            job.state = "cancelled" if job.cancel else "done"
        except Exception as e:  # noqa: BLE001 - reported through GET /jobs/{id}
            job.error, job.state = f"{type(e).__name__}: {e}", "failed"
        finally:
            shutil.rmtree(job.dataset, ignore_errors=True)

    def cancel(self, job_id: str) -> Job:
        job = self.jobs[job_id]
        if job.state == "running":
            job.cancel, job.state = True, "cancelling"
        return job


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".-")
    return keep[:80] or "model"


def _plain(v):
    """JSON-friendly copy of numbers and containers from the training loop."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (str, bool, type(None))):
        return v
    try:
        return float(v) if not isinstance(v, int) else v
    except (TypeError, ValueError):
        return str(v)
