"""The one training loop of every task: :func:`fit` over a task's :class:`TaskHooks`.

The loop owns seeding and threads, the optimiser and its learning-rate schedule (optional
linear warm-up, then a cosine from ``lr`` to ``lr * lr_floor``; the run's progress is the larger
of the step fraction and the time-budget fraction, so a time-limited run still anneals),
BatchNorm freezing, validation (every epoch, or at most every ``val_every`` minutes), keeping
the checkpoint of the best validation ``score``, patience, the time budget, ``should_stop``,
progress events, the resumable state (:mod:`napari_histoseg.training.state`, written after
every epoch) and the summary. A task supplies only what is its own: data, model, batches,
loss, validation, the checkpoint's meta and an optional last step (threshold search,
calibration).

Progress events (dicts): ``kind="start"`` (the hooks' ``describe()``: ``message``,
``train_tiles``, ``val_tiles``, ``validate_on_train``, ``warnings``; plus ``epoch``, ``epochs``,
``steps``), ``kind="step"`` (``epoch``, ``step``, ``steps``, ``epochs``, ``loss``) and
``kind="epoch"`` (the history record, ``best_score``, ``best_<score_key>``, ``epochs``,
``validate_on_train``). Epochs are counted from 0.

Stop reasons (``summary["stop_reason"]``, the same for every task): ``"done"`` (all epochs run),
``"patience"``, ``"time"`` (time budget), ``"cancelled"`` (``should_stop()`` returned True);
``summary["stop_message"]`` says it in words.
"""

from __future__ import annotations

import copy
import math
import random
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from napari_histoseg.models import load_checkpoint, save_checkpoint
from napari_histoseg.training.state import load_state, make_optimizer, save_state

SUMMARY_KEYS = ("task", "checkpoint", "best_epoch", "best_score", "epochs_run", "steps", "stop_reason",
                "stop_message", "seconds", "patches_per_s", "parameters", "trainable_parameters",
                "freeze_bn", "history")


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def freeze_batchnorm(model: torch.nn.Module) -> None:
    """Put every BatchNorm layer in eval mode: its running mean/var are used, not updated."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()


def set_train_mode(model, freeze_bn: bool = False):
    """``model.train()``, but with ``freeze_bn`` every BatchNorm layer stays in eval mode
    (its affine weight/bias still train)."""
    model.train()
    if freeze_bn:
        freeze_batchnorm(model)
    return model


def state_path_for(out: str | Path) -> Path:
    """Where :func:`fit` keeps the resumable state of a run writing ``out``."""
    out = Path(out)
    return out.with_name(out.stem + ".state.safetensors")


def load_start_checkpoint(ref, task: str):
    """``(module, meta, path)`` of a checkpoint of ``task`` to fine-tune ("bundled": the bundled one)."""
    from napari_histoseg.models import CheckpointError, read_meta

    if str(ref) == "bundled":
        from napari_histoseg.models.bundled import bundled_path

        ref = bundled_path(task)
    meta = read_meta(ref)
    if meta.task != task:
        raise CheckpointError(f"{ref} is a {meta.task} model ({meta.name} v{meta.model_version}); "
                              f"--task {task} fine-tunes {task} models")
    module, meta = load_checkpoint(ref)
    return module, meta, Path(ref)


class TaskHooks:
    """What a task gives :func:`fit`. Subclasses override the methods that raise."""

    task = "segmentation"
    score_key = "score"  # the history key that holds the validation score (also "best_<key>")

    def setup(self, cfg, log) -> None:
        """Read the data (training and validation)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """``message``, ``train_tiles``, ``val_tiles``, ``validate_on_train``, ``warnings``."""
        return {"message": "", "train_tiles": 0, "val_tiles": 0, "validate_on_train": False, "warnings": []}

    def build_model(self, cfg, log) -> torch.nn.Module:
        raise NotImplementedError

    def default_freeze_bn(self, cfg) -> bool:
        return False

    def steps_per_epoch(self, cfg) -> int:
        return cfg.steps_per_epoch or 100

    def batch(self, rng: np.random.Generator, cfg):
        raise NotImplementedError

    def loss(self, model, batch) -> torch.Tensor:
        raise NotImplementedError

    def after_step(self, model) -> None:
        """Called after every optimiser step (e.g. a weight average)."""

    def judged(self, model):
        """The module that is validated and saved (the model, or a weight average of it)."""
        return model

    def validate(self, model, train_loss: float) -> dict:
        """Validation figures, with ``score`` (higher is better) and optionally ``tie`` (lower wins ties)."""
        raise NotImplementedError

    def meta(self, cfg, training: dict):
        """The :class:`~napari_histoseg.models.ModelMeta` of a best checkpoint; ``training``
        holds ``settings``, ``epochs_run``, ``best_epoch``, ``score`` and ``history``."""
        raise NotImplementedError

    def finish(self, cfg, out: Path, save: Callable, summary: dict, log) -> dict:
        """After training, with the best checkpoint at ``out``; returns summary additions."""
        return {}

    def summary(self) -> dict:
        return {}


def _better(v: dict, best: Optional[dict]) -> bool:
    if best is None:
        return True
    if v["score"] > best["score"] + 1e-9:
        return True
    return abs(v["score"] - best["score"]) <= 1e-6 and v.get("tie", math.inf) < best.get("tie", math.inf)


def fit(hooks: TaskHooks, cfg, out, *, progress: Optional[Callable[[dict], None]] = None,
        should_stop: Optional[Callable[[], bool]] = None, log: Callable[[str], None] = print,
        show_bar: Optional[bool] = None) -> dict:
    """Train with ``hooks`` and settings ``cfg`` (a :class:`~napari_histoseg.training.config.TrainConfig`),
    keep the best checkpoint at ``out``; returns the summary (:data:`SUMMARY_KEYS` plus the task's)."""
    from tqdm.auto import tqdm

    t0 = time.time()
    if cfg.optimizer not in ("adam", "adamw", "sgd-adam"):
        raise ValueError(f"optimizer must be 'adam', 'adamw' or 'sgd-adam', got {cfg.optimizer!r}")
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    seed_everything(cfg.seed)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    state_path = state_path_for(out)
    hooks.setup(cfg, log)
    model = hooks.build_model(cfg, log)
    params = [p for p in model.parameters() if p.requires_grad]
    n_params, n_trainable = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in params)
    steps, epochs = hooks.steps_per_epoch(cfg), cfg.epochs
    kind = "sgd" if cfg.optimizer == "sgd-adam" else cfg.optimizer
    opt = make_optimizer(kind, params, cfg.lr)
    history, start_epoch, best, best_v, best_epoch, bad, elapsed, step_no = [], 0, -math.inf, None, -1, 0, 0.0, 0
    frozen = cfg.freeze_bn
    if cfg.resume and state_path.is_file():
        info, opt, kind = load_state(state_path, model, params)
        history, start_epoch = info["history"], info["epoch"] + 1
        best, best_epoch, bad = info["best"], info["best_epoch"], info["bad"]
        best_v = info.get("best_v") or ({"score": best} if best_epoch >= 0 else None)
        step_no = int(info.get("steps", start_epoch * steps))
        elapsed = float(info.get("elapsed", sum(h.get("seconds", 0) for h in history)))
        log(f"resumed from {state_path} at epoch {start_epoch} ({elapsed / 60:.1f} min trained)")
        if frozen is None and "freeze_bn" in info:
            frozen = bool(info["freeze_bn"])
    if frozen is None:
        frozen = hooks.default_freeze_bn(cfg)
    if frozen:
        log("BatchNorm running statistics frozen (BN layers in eval mode)")
    rng = np.random.default_rng(cfg.seed + 1000 * start_epoch)
    settings = {**cfg.to_dict(), "freeze_bn": frozen, "steps_per_epoch": steps}
    log(f"{n_params:,} parameters ({n_trainable:,} trainable); {steps} steps of {cfg.batch_size} per epoch")

    def save(module, meta):
        if cfg.half_weights:
            module = copy.deepcopy(module).half()
        return save_checkpoint(module, out, meta, sidecar=True)

    run_start = time.time()
    train_start, last_val, patches = run_start - elapsed, run_start, 0
    budget_s = cfg.time_budget * 60 if cfg.time_budget else None
    bar_off = (not sys.stderr.isatty()) if show_bar is None else (not show_bar)
    desc = hooks.describe()
    if progress:
        progress({"kind": "start", **desc, "epoch": start_epoch, "epochs": epochs, "steps": steps})
    stop, message = "done", f"all {epochs} epochs run"
    for epoch in range(start_epoch, epochs):
        if cfg.optimizer == "sgd-adam" and kind == "sgd" and epoch >= cfg.sgd_epochs:
            kind, opt = "adam", make_optimizer("adam", params, cfg.lr)
            log(f"epoch {epoch}: switching from SGD to Adam")
        set_train_mode(model, frozen)
        losses, ep_t0, cancelled = [], time.time(), False
        for step in tqdm(range(steps), desc=f"epoch {epoch}", leave=False, disable=bar_off):
            frac = step_no / (epochs * steps)
            if budget_s:
                frac = max(frac, (time.time() - train_start) / budget_s)
            scale = cfg.lr_floor + (1 - cfg.lr_floor) * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
            if cfg.warmup:
                scale *= min(1.0, (step_no + 1) / cfg.warmup)
            for g in opt.param_groups:
                g["lr"] = (cfg.lr * 10 if kind == "sgd" else cfg.lr) * scale
            loss = hooks.loss(model, hooks.batch(rng, cfg))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            opt.step()
            hooks.after_step(model)
            losses.append(float(loss.detach()))
            patches, step_no = patches + cfg.batch_size, step_no + 1
            if progress:
                progress({"kind": "step", "epoch": epoch, "step": step, "steps": steps, "epochs": epochs,
                          "loss": losses[-1]})
            if should_stop and should_stop():
                cancelled = True
                break
        train_loss = float(np.mean(losses))
        timed_out = bool(budget_s and time.time() - train_start >= budget_s)
        last = cancelled or timed_out or epoch == epochs - 1
        rec = {"epoch": epoch, "train_loss": train_loss}
        if last or cfg.val_every is None or time.time() - last_val >= cfg.val_every * 60 or best_v is None:
            v = hooks.validate(hooks.judged(model), train_loss)
            last_val = time.time()
            rec.update({k: x for k, x in v.items() if k != "tie"})
            rec.setdefault(hooks.score_key, v["score"])
            improved = _better(v, best_v)
            if improved:
                best, best_v, best_epoch, bad = v["score"], {k: v[k] for k in ("score", "tie") if k in v}, epoch, 0
            else:
                bad += 1
        else:
            improved = False
        rec.update({"lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - ep_t0, 1),
                    "minutes": round((time.time() - train_start) / 60, 2), "steps": step_no})
        history.append(rec)
        if improved:
            save(hooks.judged(model), hooks.meta(cfg, {"settings": settings, "epochs_run": epoch + 1,
                                                      "best_epoch": epoch, "score": best, "history": history}))
        save_state(state_path, model, opt, kind, {"epoch": epoch, "history": history, "best": best,
                                                   "best_v": best_v, "best_epoch": best_epoch, "bad": bad,
                                                   "freeze_bn": frozen, "steps": step_no,
                                                   "elapsed": time.time() - train_start})
        shown = "  ".join(f"{k} {x:.4f}" for k, x in rec.items() if k.startswith("val_") and isinstance(x, float))
        log(f"epoch {epoch:3d}  loss {train_loss:.4f}  {shown or 'score ' + format(rec.get('score', math.nan), '.4f')}"
            f"  lr {rec['lr']:.2e}  {rec['seconds']:.0f}s{'  *best*' if improved else ''}")
        if progress:
            progress({"kind": "epoch", **rec, "best_score": best, f"best_{hooks.score_key}": best, "epochs": epochs,
                      "validate_on_train": desc.get("validate_on_train", False)})
        if cancelled:
            stop, message = "cancelled", "stopped by request"
            break
        if bad >= cfg.patience:
            stop, message = "patience", f"early stopping (no better validation score for {cfg.patience} validations)"
            break
        if timed_out:
            stop, message = "time", f"time budget of {cfg.time_budget} min reached"
            break
    summary = {"task": hooks.task, "checkpoint": str(out), "best_epoch": best_epoch, "best_score": best,
               f"best_{hooks.score_key}": best, "epochs_run": len(history), "steps": step_no, "stop_reason": stop,
               "stop_message": message, "seconds": round(time.time() - train_start, 1),
               "patches_per_s": round(patches / max(time.time() - run_start, 1e-9), 3), "parameters": n_params,
               "trainable_parameters": n_trainable, "freeze_bn": frozen, "history": history, **hooks.summary()}
    if out.is_file():
        summary.update(hooks.finish(cfg, out, save, summary, log))
    summary["total_seconds"] = round(time.time() - t0, 1)
    log(f"done: {message}; best validation score {best:.4f} at epoch {best_epoch}; "
        f"{summary['patches_per_s']} patches/s; checkpoint {out}")
    return summary
