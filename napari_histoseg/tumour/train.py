"""Train a segmentation network on one or more training-data folders.

:func:`train` is the plain function the CLI (``histoseg train``) and, later, the GUI
call. It reads the folders (:mod:`napari_histoseg.io.dataset`), trains on the ``train``
tiles minus a validation hold-out chosen by ``group`` (never on ``test``), samples
augmented random patches (:mod:`napari_histoseg.training.augment`), minimises soft Dice +
class-weighted cross-entropy (:mod:`napari_histoseg.tumour.losses`), validates on whole tiles
after every epoch, keeps the checkpoint of the best validation Dice (safetensors, via
:func:`~napari_histoseg.models.save_checkpoint`) and stops early after ``patience``
epochs without improvement, at ``epochs``, at ``time_budget`` minutes, or when
``should_stop()`` returns True. A resumable state (last weights + optimiser moments,
also safetensors) is written next to the checkpoint after every epoch.

The learning rate follows a cosine from ``lr`` to ``lr * 0.01`` over the run, where
the run's progress is the larger of the epoch fraction and the time-budget fraction,
so a time-limited run still anneals. ``optimizer="sgd-adam"`` is the main paper's
schedule: SGD with momentum for ``sgd_epochs`` epochs, then Adam.

Example
-------
>>> summary = train(["../shared/data/camelyon"], "runs/x.safetensors",
...                 epochs=2, time_budget=1)                       # doctest: +SKIP
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file

from napari_histoseg.core.scores import dice as dice_score
from napari_histoseg.io.dataset import class_frequencies
from napari_histoseg.models import ModelMeta, build_model, load_checkpoint, save_checkpoint
from napari_histoseg.training.augment import AugmentConfig, random_patch
from napari_histoseg.training.loop import seed_everything, set_train_mode
from napari_histoseg.training.plan import TrainingPlan, check_init_checkpoint, training_plan
from napari_histoseg.training.state import load_state, make_optimizer, save_state
from napari_histoseg.tumour.losses import SegmentationLoss, class_weights

MEAN = STD = 127.5  # inputs scaled to [-1, 1], as the ImageNet MobileNetV2 encoder expects


def to_input(batch: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    return (x - MEAN) / STD


def _main_output(out):
    return out[0] if isinstance(out, (list, tuple)) else out


def _load_plan(plan):
    """Train and validation image/mask lists of a :class:`~napari_histoseg.training.plan.TrainingPlan`,
    plus provenance. Validation on the training tiles reuses the same arrays."""
    tr_imgs, tr_masks, va_imgs, va_masks, prov = [], [], [], [], []
    for f in plan.folders:
        a, b = f["train"].load_all()
        c, e = (a, b) if f["validate_on_train"] else f["val"].load_all()
        tr_imgs += a; tr_masks += b; va_imgs += c; va_masks += e  # noqa: E702
        prov.append({"dataset": f["dataset"], "name": f["name"], "train_tiles": len(f["train"]),
                     "val_tiles": len(f["val"]), "validation": f["how"], "val_ids": f["val"].ids(),
                     "validate_on_train": f["validate_on_train"]})
    return tr_imgs, tr_masks, va_imgs, va_masks, prov


@torch.no_grad()
def validate(model, images, masks, threshold=0.5, batch=2, ignore_index=255) -> tuple[float, float]:
    """``(pooled Dice, mean per-image Dice)`` of whole tiles of any size, in eval mode.

    Pooled Dice sums true/false positives and negatives over all validation tiles
    before dividing; it is what early stopping and checkpoint selection use, because
    the per-image mean swings with tiles that hold almost no tumour (a handful of
    pixels decide their Dice).
    """
    from napari_histoseg.core.scores import confusion

    model.eval()
    scores, tp, fp, fn = [], 0, 0, 0
    runs, i = [], 0  # consecutive tiles of one size go through the model together
    while i < len(images):
        j = i + 1
        while j < len(images) and j - i < batch and images[j].shape == images[i].shape:
            j += 1
        runs.append((i, j))
        i = j
    for i, j in runs:
        x = to_input(np.stack(images[i:j]))
        out = _main_output(model(x))
        prob = torch.sigmoid(out[:, 0]) if out.shape[1] == 1 else out.argmax(1).float()
        for p, m in zip(prob.numpy(), masks[i:j]):
            pred = (p >= threshold).astype(np.uint8)
            a, b, c, _ = confusion(pred, m, ignore_index=ignore_index)
            tp, fp, fn = tp + a, fp + b, fn + c
            scores.append(dice_score(pred, m, ignore_index=ignore_index))
    if not scores:
        return math.nan, math.nan
    pooled = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return float(pooled), float(np.mean(scores))


def train(
    dataset_dirs: Sequence[str | Path] | str | Path,
    out_path: str | Path,
    arch: str = "unet-mobilenet_v2",
    arch_kwargs: Optional[dict] = None,
    epochs: int = 100,
    init_encoder: Optional[str | Path] = None,
    resume: bool = False,
    init_checkpoint: Optional[str | Path] = None,
    time_budget: Optional[float] = None,
    patch_size: int = 256,
    batch_size: int = 8,
    steps_per_epoch: Optional[int] = None,
    lr: float = 1e-3,
    optimizer: str = "adam",
    sgd_epochs: int = 10,
    loss: str = "soft",
    val_fraction: float = 0.15,
    patience: int = 10,
    seed: int = 0,
    threads: Optional[int] = None,
    name: str = "histoseg-model",
    model_version: str = "0",
    half_weights: bool = False,
    freeze_bn: Optional[bool] = None,
    progress: Optional[Callable[[dict], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    log: Callable[[str], None] = print,
    show_bar: Optional[bool] = None,
    plan: Optional[TrainingPlan] = None,
) -> dict:
    """Train a network and keep the best checkpoint by validation Dice.

    Parameters
    ----------
    dataset_dirs : path or list of paths
        Training-data folders (DESIGN.md layout), tiles of any size. Their ``train`` tiles
        are used; a fraction ``val_fraction`` of them is held out by group for validation,
        or, in a folder of fewer than 4 tiles, none (validated on the training tiles; see
        :func:`~napari_histoseg.training.plan.training_plan`, which raises a ValueError before
        training when the data cannot train a model).
    out_path : path
        ``.safetensors`` file for the best checkpoint (a sidecar JSON is written too);
        the resumable state goes to ``NAME.state.safetensors`` beside it.
    arch, arch_kwargs : str, dict
        Registered architecture and its arguments (``classes`` is set from the data).
    epochs : int
        Maximum epochs; an epoch is ``steps_per_epoch`` batches (default: enough
        patches to cover every training tile's area once).
    init_encoder : path or None
        safetensors state dict loaded into ``model.encoder`` (e.g. the ImageNet
        MobileNetV2 of ``../shared/weights``); None = random start.
    init_checkpoint : path, "bundled" or None
        A whole histoseg segmentation checkpoint to fine-tune ("bundled": the bundled model) (its architecture and arguments are
        used; ``arch``/``arch_kwargs`` are ignored). Its name and version are recorded
        in the new checkpoint's training provenance.
    resume : bool
        Continue from the state file of an earlier run with the same ``out_path``
        (weights, optimiser moments, history, best score, elapsed time).
    time_budget : float or None
        Minutes of training wall time, counting the earlier runs of a resumed job;
        training stops cleanly after the epoch that passes it.
    optimizer : {"adam", "sgd-adam"}
        Adam throughout, or SGD (momentum 0.9, lr × 10) for ``sgd_epochs`` then Adam.
    loss : {"soft", "generalized"}
        Soft Dice or generalised Dice, each plus class-weighted cross-entropy.
    patience : int
        Early stopping: epochs without a better validation Dice (pooled over the
        validation tiles, see :func:`validate`).
    progress : callable or None
        Called with a dict: once before the first step (``kind="start"``: the plan's
        ``message``, ``train_tiles``, ``val_tiles``, ``validate_on_train``, ``warnings``,
        ``epochs``, ``steps``), after every step (``kind="step"``: ``epoch``, ``step``,
        ``steps``, ``epochs``, ``loss``) and after every epoch (``kind="epoch"``: its
        history record with ``val_dice``, plus ``best_val_dice``).
    plan : TrainingPlan or None
        The result of :func:`~napari_histoseg.training.plan.training_plan` for these folders,
        ``val_fraction`` and ``seed`` (computed here when None or made for others).
    should_stop : callable or None
        Polled every step; returning True ends training cleanly (best checkpoint kept).
    half_weights : bool
        Store the checkpoint's floating tensors as float16 (half the file size).
    freeze_bn : bool or None
        Keep BatchNorm layers in eval mode while training (running statistics stay those
        of the start model; their affine weights still train). None (default): on when
        fine-tuning from ``init_checkpoint`` (a resumed run keeps its first run's choice),
        off when training from scratch or from ``init_encoder``. Fine-tuning with
        statistics re-estimated from small batches of a few corrected tiles lowered
        held-out Dice (BENCHMARKS.md, "Correction to a better model").

    Returns
    -------
    dict
        Summary: best epoch and validation Dice, epochs run, stop reason, history,
        seconds, patches/s, the checkpoint path.
    """
    if optimizer not in ("adam", "sgd-adam"):
        raise ValueError(f"optimizer must be 'adam' or 'sgd-adam', got {optimizer!r}")
    t0 = time.time()
    if threads:
        torch.set_num_threads(int(threads))
    seed_everything(seed)
    dirs = [dataset_dirs] if isinstance(dataset_dirs, (str, Path)) else list(dataset_dirs)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    state_path = out_path.with_name(out_path.stem + ".state.safetensors")
    if plan is None or plan.key != (tuple(str(d) for d in dirs), val_fraction, seed):
        plan = training_plan(dirs, val_fraction, seed)
        log(plan.message)
    classes, ignore = plan.classes, plan.ignore_index
    codes = sorted(int(k) for k in classes)
    n_out = 1 if len(codes) == 2 else len(codes)
    kwargs = {**(arch_kwargs or {}), "classes": n_out}
    if init_checkpoint:  # checked before any pixel is read
        init_checkpoint, _ = check_init_checkpoint(init_checkpoint, len(codes))
    tr_imgs, tr_masks, va_imgs, va_masks, prov = _load_plan(plan)
    if init_checkpoint:
        model, src = load_checkpoint(init_checkpoint)
        arch, kwargs = src.arch, dict(src.arch_kwargs)
        log(f"fine-tuning {src.name} v{src.model_version} ({src.arch}) from {init_checkpoint}")
    else:
        model = build_model(arch, **kwargs)
    if init_encoder:
        model.encoder.load_state_dict(load_file(str(init_encoder)))
        log(f"encoder initialised from {init_encoder}")
    freq = class_frequencies(tr_masks, codes, ignore)
    weights = class_weights([freq[c] for c in codes])
    criterion = SegmentationLoss(dice=loss, weights=weights, ignore_index=ignore)
    params = [p for p in model.parameters() if p.requires_grad]
    n_params = sum(p.numel() for p in model.parameters())
    n_trainable = sum(p.numel() for p in params)
    if steps_per_epoch is None:
        area = sum(m.size for m in tr_masks)
        steps_per_epoch = max(1, math.ceil(area / patch_size**2 / batch_size))
    kind = "sgd" if optimizer == "sgd-adam" else "adam"
    opt = make_optimizer(kind, params, lr)
    history, start_epoch, best, best_epoch, bad, elapsed = [], 0, -1.0, -1, 0, 0.0
    if resume and state_path.is_file():
        info, opt, kind = load_state(state_path, model, params)
        history, start_epoch = info["history"], info["epoch"] + 1
        best, best_epoch, bad = info["best"], info["best_epoch"], info["bad"]
        elapsed = float(info.get("elapsed", sum(h.get("seconds", 0) for h in history)))
        log(f"resumed from {state_path} at epoch {start_epoch} ({elapsed / 60:.1f} min trained)")
        if freeze_bn is None and "freeze_bn" in info:
            freeze_bn = bool(info["freeze_bn"])
    if freeze_bn is None:
        freeze_bn = bool(init_checkpoint)
    if freeze_bn:
        log("BatchNorm running statistics frozen (BN layers in eval mode)")
    rng = np.random.default_rng(seed + 1000 * start_epoch)
    aug = AugmentConfig()
    meta = ModelMeta(arch=arch, arch_kwargs=kwargs, classes=classes, mean=[MEAN] * 3, std=[STD] * 3,
                     tile_size=512, name=name, model_version=model_version)
    settings = dict(arch=arch, arch_kwargs=kwargs, patch_size=patch_size, batch_size=batch_size,
                    steps_per_epoch=steps_per_epoch, lr=lr, optimizer=optimizer, sgd_epochs=sgd_epochs,
                    loss=f"{loss} dice + class-weighted cross-entropy", class_weights=weights,
                    patience=patience, seed=seed, init_encoder=str(init_encoder) if init_encoder else None,
                    init_checkpoint=str(init_checkpoint) if init_checkpoint else None,
                    augmentation=aug.__dict__, freeze_bn=freeze_bn, max_epochs=epochs, time_budget_min=time_budget)
    log(f"{arch}: {n_params:,} parameters ({n_trainable:,} trainable); {steps_per_epoch} steps of "
        f"{batch_size}x{patch_size}² per epoch; class weights {[round(w, 3) for w in weights]}")
    stop_reason, patches = "max epochs", 0
    run_start = time.time()
    train_start = run_start - elapsed  # the time budget counts earlier runs of a resumed job
    bar_off = (not sys.stderr.isatty()) if show_bar is None else (not show_bar)
    from tqdm.auto import tqdm

    if progress:
        progress({"kind": "start", "message": plan.message, "train_tiles": plan.train_tiles,
                  "val_tiles": plan.val_tiles, "validate_on_train": plan.validate_on_train,
                  "warnings": list(plan.warnings), "epoch": start_epoch, "epochs": epochs,
                  "steps": steps_per_epoch})
    for epoch in range(start_epoch, epochs):
        if optimizer == "sgd-adam" and kind == "sgd" and epoch >= sgd_epochs:
            kind, opt = "adam", make_optimizer("adam", params, lr)
            log(f"epoch {epoch}: switching from SGD to Adam")
        set_train_mode(model, freeze_bn)
        losses, ep_t0 = [], time.time()
        stopped = False
        for step in tqdm(range(steps_per_epoch), desc=f"epoch {epoch}", leave=False, disable=bar_off):
            frac = epoch / epochs + step / (steps_per_epoch * epochs)
            if time_budget:
                frac = max(frac, (time.time() - train_start) / (time_budget * 60))
            scale = 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0)))
            for g in opt.param_groups:
                g["lr"] = (lr * 10 if kind == "sgd" else lr) * scale
            idx = rng.integers(0, len(tr_imgs), size=batch_size)
            pairs = [random_patch(tr_imgs[i], tr_masks[i], patch_size, rng, aug, ignore) for i in idx]
            x = to_input(np.stack([p[0] for p in pairs]))
            y = torch.from_numpy(np.stack([p[1] for p in pairs])).long()
            out = model(x)
            loss_t = criterion(out, y)
            opt.zero_grad(set_to_none=True)
            loss_t.backward()
            opt.step()
            losses.append(float(loss_t.detach()))
            patches += batch_size
            if progress:
                progress({"kind": "step", "epoch": epoch, "step": step, "steps": steps_per_epoch,
                          "epochs": epochs, "loss": losses[-1]})
            if should_stop and should_stop():
                stopped = True
                break
        if va_imgs:
            val, val_mean = validate(model, va_imgs, va_masks, ignore_index=ignore)
        else:  # no validation tiles: select by training loss
            val, val_mean = -float(np.mean(losses)), math.nan
        rec = {"epoch": epoch, "train_loss": float(np.mean(losses)), "val_dice": val,
               "val_dice_mean_per_image": val_mean,
               "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - ep_t0, 1)}
        history.append(rec)
        improved = val > best
        if improved:
            best, best_epoch, bad = val, epoch, 0
            meta.training = {"data": prov, "settings": settings, "epochs_run": epoch + 1,
                             "best_epoch": epoch, "val_dice": val, "history": history}
            to_save = model
            if half_weights:
                import copy
                to_save = copy.deepcopy(model).half()
            save_checkpoint(to_save, out_path, meta, sidecar=True)
        else:
            bad += 1
        save_state(state_path, model, opt, kind, {"epoch": epoch, "history": history, "best": best,
                                                   "best_epoch": best_epoch, "bad": bad, "freeze_bn": freeze_bn,
                                                   "elapsed": time.time() - train_start})
        log(f"epoch {epoch:3d}  loss {rec['train_loss']:.4f}  val Dice {val:.4f} (per-image {val_mean:.4f})  lr {rec['lr']:.2e}  "
            f"{rec['seconds']:.0f}s{'  *best*' if improved else ''}")
        if progress:
            progress({"kind": "epoch", **rec, "best_val_dice": best, "epochs": epochs,
                      "validate_on_train": plan.validate_on_train})
        if stopped:
            stop_reason = "stopped by request"
            break
        if bad >= patience:
            stop_reason = f"early stopping (no better validation Dice for {patience} epochs)"
            break
        if time_budget and time.time() - train_start >= time_budget * 60:
            stop_reason = f"time budget of {time_budget} min reached"
            break
    seconds = time.time() - train_start
    summary = {"checkpoint": str(out_path), "arch": arch, "best_epoch": best_epoch, "best_val_dice": best,
               "epochs_run": len(history), "stop_reason": stop_reason, "seconds": round(seconds, 1),
               "patches_per_s": round(patches / max(time.time() - run_start, 1e-9), 3), "parameters": n_params,
               "trainable_parameters": n_trainable, "history": history, "data": prov,
               "plan": plan.message, "validate_on_train": plan.validate_on_train,
               "total_seconds": round(time.time() - t0, 1)}
    log(f"done: {stop_reason}; best val Dice {best:.4f} at epoch {best_epoch}; "
        f"{summary['patches_per_s']} patches/s; checkpoint {out_path}")
    return summary


def export_checkpoint(src: str | Path, dst: str | Path, half: bool = True, **meta_updates) -> Path:
    """Copy a trained checkpoint to ``dst`` (+ sidecar JSON), optionally as float16.

    ``meta_updates`` replace :class:`ModelMeta` fields (``name``, ``model_version``,
    ``metrics``, ...). float16 halves the file; :func:`load_checkpoint` loads it into the
    float32 module (``load_state_dict`` copies, and so casts, each tensor), so users
    get float32 weights that differ from the trained ones by float16 rounding only.
    """
    module, meta = load_checkpoint(src)
    for k, v in meta_updates.items():
        if not hasattr(meta, k):
            raise ValueError(f"ModelMeta has no field {k!r}")
        setattr(meta, k, v)
    if half:
        module = module.half()
        meta.preprocessing = {**meta.preprocessing, "stored_dtype": "float16"}
    return save_checkpoint(module, dst, meta, sidecar=True)

