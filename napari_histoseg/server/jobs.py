"""Fine-tune jobs on the server: at most ``max_jobs`` at a time, each in a thread, followed and
cancelled by id, and found again after a restart.

A job trains a server model (through its task's ``fine_tune`` in the registry,
:mod:`napari_histoseg.tasks`) on an uploaded training-data folder (the zip of what *Export*
writes), keeps its progress (the latest step, every epoch) for ``GET /jobs/{id}``, stops
cleanly on ``DELETE /jobs/{id}`` (the best checkpoint so far is kept), and registers the new
checkpoint as a server model. The unpacked folder is removed when the job ends.

Each job's folder (``WORKDIR/jobs/ID``) gets a ``job.json`` when it ends. A restarted server
on the same workdir answers for the finished jobs again (state, checkpoint to fetch; the
model is not loaded again, so ``new_model`` is null) and removes what the others left (a job that was running when the server stopped, unpacked uploads). Only the
newest ``keep`` finished jobs are kept.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

JOB_FILE = "job.json"


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
    ended: float | None = None
    source: Path | None = None  # the checkpoint it trains from

    def public(self) -> dict:
        """What ``GET /jobs/{id}`` answers: JSON-safe whatever training reported (a NaN loss is null)."""
        return _plain({"id": self.id, "state": self.state, "model": self.model, "task": self.task,
                       "settings": self.settings, "step": self.step, "epochs": self.epochs, "error": self.error,
                       "new_model": self.new_model,
                       "checkpoint_ready": self.state in ("done", "cancelled") and self.out.is_file(),
                       "summary": None if not isinstance(self.summary, dict) else
                       {k: v for k, v in self.summary.items() if k != "history"},
                       "seconds": round((self.ended or time.time()) - self.created, 1)})


class JobRunner:
    """Holds the jobs; ``on_checkpoint(path, name)`` registers a finished job's model;
    ``scrub(text, job)`` takes server paths out of an error before a client sees it."""

    def __init__(self, workdir: Path, on_checkpoint, threads: int | None = None, *, max_jobs: int = 1,
                 keep: int = 20, scrub=None):
        self.workdir = Path(workdir)
        self.on_checkpoint = on_checkpoint
        self.threads = threads
        self.max_jobs, self.keep = int(max_jobs), int(keep)
        self.scrub = scrub or (lambda text, job: text)
        self.jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        self.recover()

    def running(self) -> list[Job]:
        return [j for j in self.jobs.values() if j.state in ("running", "cancelling")]

    def busy(self) -> Job | None:
        """A running job when no other may start (``max_jobs`` are running), else None."""
        running = self.running()
        return running[0] if len(running) >= self.max_jobs else None

    def check_free(self) -> None:
        """RuntimeError (409) when ``max_jobs`` jobs are running: before anything is unpacked."""
        running = self.busy()
        if running is not None:
            raise RuntimeError(f"fine-tune job {running.id} is still running; this server runs "
                               f"{self.max_jobs} job{'s' if self.max_jobs > 1 else ''} at a time")

    def start(self, model_ref: str, checkpoint: Path, dataset: Path, *, task: str = "segmentation",
              epochs: int = 10, time_budget: float = 15.0, lr: float = 1e-4, name: str = "histoseg-model",
              model_version: str = "0+ft", patch_size: int | None = None, batch_size: int | None = None,
              steps_per_epoch: int | None = None) -> Job:
        """Start a job (``patch_size``/``batch_size`` None: the task's own defaults). The
        settings are the caller's to check; the job is visible as soon as this returns."""
        with self._lock:
            self.check_free()
            job_id = uuid.uuid4().hex[:12]
            out = self.workdir / job_id / f"{_safe(name)}.safetensors"
            out.parent.mkdir(parents=True, exist_ok=True)
            settings = {"epochs": int(epochs), "time_budget_min": float(time_budget), "lr": float(lr),
                        "name": name, "model_version": model_version, "patch_size": patch_size,
                        "batch_size": batch_size, "steps_per_epoch": steps_per_epoch}
            job = Job(job_id, model_ref, Path(dataset), out, settings, task, source=Path(checkpoint))
            self.jobs[job_id] = job
            self._prune()
        threading.Thread(target=self._run, args=(job, checkpoint), name=f"histoseg-job-{job_id}",
                         daemon=True).start()
        return job

    def _run(self, job: Job, checkpoint: Path):
        from napari_histoseg.tasks import get_task

        def progress(info):
            if info.get("kind") == "step":
                job.step = _plain(dict(info))
            elif info.get("kind") == "epoch":
                job.epochs.append(_plain({k: v for k, v in info.items() if k != "history"}))

        s = job.settings
        given = {k: s[k] for k in ("patch_size", "batch_size", "steps_per_epoch") if s[k] is not None}
        try:
            summary = get_task(job.task).fine_tune(
                job.dataset, job.out, checkpoint, epochs=s["epochs"], time_budget=s["time_budget_min"], lr=s["lr"],
                name=s["name"], model_version=s["model_version"], half_weights=True, threads=self.threads,
                progress=progress, should_stop=lambda: job.cancel, **given)
            job.summary = _plain(dict(summary or {}))
            if job.out.is_file():
                job.new_model = self.on_checkpoint(job.out, s["name"])
            job.state = "cancelled" if job.cancel else "done"
        except Exception as e:  # noqa: BLE001 - reported through GET /jobs/{id}
            job.error = self.scrub(f"{type(e).__name__}: {e}", job)[:2000]
            job.state = "failed"
        finally:
            job.ended = time.time()
            shutil.rmtree(job.dataset, ignore_errors=True)
            self._save(job)

    def cancel(self, job_id: str) -> Job:
        job = self.jobs[job_id]
        if job.state == "running":
            job.cancel, job.state = True, "cancelling"
        return job

    # -- on disk -------------------------------------------------------------------
    def _save(self, job: Job) -> None:
        folder = self.workdir / job.id
        if not folder.is_dir():
            return
        record = {**job.public(), "created": job.created, "ended": job.ended, "out": job.out.name}
        tmp = folder / f".{JOB_FILE}.tmp"
        try:
            tmp.write_text(json.dumps(record))
            os.replace(tmp, folder / JOB_FILE)
        except OSError:
            tmp.unlink(missing_ok=True)

    def recover(self) -> None:
        """Serve the finished jobs a previous server left in the workdir; remove the rest."""
        if not self.workdir.is_dir():
            return
        for folder in sorted(self.workdir.iterdir()):
            job = _load(folder) if folder.is_dir() else None
            if job is None:
                shutil.rmtree(folder, ignore_errors=True) if folder.is_dir() else folder.unlink(missing_ok=True)
                continue
            self.jobs[job.id] = job     # its checkpoint can be fetched; its model is not loaded again
        self._prune()

    def _prune(self) -> None:
        """Forget and remove the oldest finished jobs beyond ``keep``."""
        done = sorted((j for j in self.jobs.values() if j.state not in ("running", "cancelling")),
                      key=lambda j: j.ended or j.created)
        for job in done[:max(0, len(done) - self.keep)]:
            self.jobs.pop(job.id, None)
            shutil.rmtree(self.workdir / job.id, ignore_errors=True)


def _load(folder: Path) -> Job | None:
    """A finished job from its ``job.json``; None for a folder of a job that never finished."""
    try:
        r = json.loads((folder / JOB_FILE).read_text())
        job = Job(r["id"], r["model"], Path(), folder / Path(r["out"]).name, dict(r["settings"]), r["task"],
                  r["state"], float(r["created"]), r.get("step"), list(r.get("epochs") or []), r.get("summary"),
                  r.get("error"), None, False, float(r.get("ended") or r["created"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if job.id != folder.name or job.state in ("running", "cancelling"):
        return None
    return job


def _safe(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "-" for c in name).strip(".-")
    return keep[:80] or "model"


def _plain(v):
    """JSON-safe copy of numbers and containers from the training loop: NaN and infinity
    become null (JSON has neither), other objects their text."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, (str, bool, type(None))):
        return v
    if isinstance(v, int):
        return v
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    return f if math.isfinite(f) else None
