"""Train a tumour-segmentation network on one or more training-data folders: the task's hooks
for the shared loop (:func:`napari_histoseg.training.loop.fit`).

:func:`train` is what ``histoseg train``, the backends' ``fine_tune`` and the server's jobs
call. The hooks read the folders (:func:`~napari_histoseg.training.plan.training_plan`: the
``train`` tiles minus a hold-out by ``group``, never ``test``), sample augmented random patches
(:mod:`napari_histoseg.training.augment`), minimise soft (or generalised) Dice + class-weighted
cross-entropy (:mod:`napari_histoseg.tumour.losses`) and validate on whole tiles (pooled Dice,
:func:`validate`). Settings and their defaults: :class:`~napari_histoseg.tumour.config.TumourConfig`.
BatchNorm statistics are frozen by default when fine-tuning from ``init_checkpoint``
(re-estimating them from small batches of a few corrected tiles lowered held-out Dice,
BENCHMARKS.md "Correction to a better model").

Example
-------
>>> summary = train(["../shared/data/camelyon"], "runs/x.safetensors",
...                 epochs=2, time_budget=1)                       # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
from safetensors.torch import load_file

from napari_histoseg.core.scores import dice as dice_score
from napari_histoseg.io.dataset import class_frequencies
from napari_histoseg.models import ModelMeta, build_model, load_checkpoint, save_checkpoint
from napari_histoseg.training.augment import AugmentConfig, random_patch
from napari_histoseg.training.loop import TaskHooks, fit
from napari_histoseg.training.plan import TrainingPlan, check_init_checkpoint, training_plan
from napari_histoseg.tumour.config import TumourConfig
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


class TumourHooks(TaskHooks):
    task, score_key = "segmentation", "val_dice"

    def __init__(self, dirs, plan: Optional[TrainingPlan] = None):
        self.dirs, self.plan = dirs, plan

    def setup(self, cfg, log):
        if self.plan is None or self.plan.key != (tuple(str(d) for d in self.dirs), cfg.val_fraction, cfg.seed):
            self.plan = training_plan(self.dirs, cfg.val_fraction, cfg.seed)
            log(self.plan.message)
        self.codes = sorted(int(k) for k in self.plan.classes)
        self.init = None
        if cfg.init_checkpoint:  # checked before any pixel is read
            self.init, _ = check_init_checkpoint(cfg.init_checkpoint, len(self.codes))
        self.tr_imgs, self.tr_masks, self.va_imgs, self.va_masks, self.prov = _load_plan(self.plan)
        freq = class_frequencies(self.tr_masks, self.codes, self.plan.ignore_index)
        self.weights = class_weights([freq[c] for c in self.codes])
        self.criterion = SegmentationLoss(dice=cfg.loss, weights=self.weights, ignore_index=self.plan.ignore_index)
        self.aug = AugmentConfig()

    def describe(self):
        p = self.plan
        return {"message": p.message, "train_tiles": p.train_tiles, "val_tiles": p.val_tiles,
                "validate_on_train": p.validate_on_train, "warnings": list(p.warnings)}

    def build_model(self, cfg, log):
        self.arch, self.kwargs = cfg.arch, {**cfg.arch_kwargs, "classes": 1 if len(self.codes) == 2 else len(self.codes)}
        if self.init:
            model, src = load_checkpoint(self.init)
            self.arch, self.kwargs = src.arch, dict(src.arch_kwargs)
            log(f"fine-tuning {src.name} v{src.model_version} ({src.arch}) from {self.init}")
        else:
            model = build_model(self.arch, **self.kwargs)
        if cfg.init_encoder:
            model.encoder.load_state_dict(load_file(str(cfg.init_encoder)))
            log(f"encoder initialised from {cfg.init_encoder}")
        log(f"{self.arch}; class weights {[round(w, 3) for w in self.weights]}")
        return model

    def default_freeze_bn(self, cfg):
        return bool(cfg.init_checkpoint)

    def steps_per_epoch(self, cfg):
        area = sum(m.size for m in self.tr_masks)
        return cfg.steps_per_epoch or max(1, math.ceil(area / cfg.patch_size**2 / cfg.batch_size))

    def batch(self, rng, cfg):
        idx = rng.integers(0, len(self.tr_imgs), size=cfg.batch_size)
        pairs = [random_patch(self.tr_imgs[i], self.tr_masks[i], cfg.patch_size, rng, self.aug,
                              self.plan.ignore_index) for i in idx]
        return to_input(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs])).long()

    def loss(self, model, batch):
        return self.criterion(model(batch[0]), batch[1])

    def validate(self, model, train_loss):
        if not self.va_imgs:  # no validation tiles: select by training loss
            return {"score": -train_loss, "val_dice": -train_loss, "val_dice_mean_per_image": math.nan}
        pooled, mean = validate(model, self.va_imgs, self.va_masks, ignore_index=self.plan.ignore_index)
        return {"score": pooled, "val_dice": pooled, "val_dice_mean_per_image": mean}

    def meta(self, cfg, training):
        settings = {**training["settings"], "arch": self.arch, "arch_kwargs": self.kwargs,
                    "loss": f"{cfg.loss} dice + class-weighted cross-entropy", "class_weights": self.weights,
                    "init_checkpoint": str(self.init) if self.init else None, "augmentation": self.aug.__dict__,
                    "max_epochs": cfg.epochs, "time_budget_min": cfg.time_budget}
        return ModelMeta(arch=self.arch, arch_kwargs=self.kwargs, classes=self.plan.classes, mean=[MEAN] * 3,
                         std=[STD] * 3, tile_size=512, name=cfg.name, model_version=cfg.model_version,
                         training={"data": self.prov, "settings": settings, "epochs_run": training["epochs_run"],
                                   "best_epoch": training["best_epoch"], "val_dice": training["score"],
                                   "history": training["history"]})

    def summary(self):
        return {"arch": self.arch, "data": self.prov, "plan": self.plan.message,
                "validate_on_train": self.plan.validate_on_train}


def train(dataset_dirs: Sequence[str | Path] | str | Path, out_path: str | Path, cfg: Optional[TumourConfig] = None,
          *, progress: Optional[Callable[[dict], None]] = None, should_stop: Optional[Callable[[], bool]] = None,
          log: Callable[[str], None] = print, show_bar: Optional[bool] = None, plan: Optional[TrainingPlan] = None,
          **settings) -> dict:
    """Train a network and keep the best checkpoint by pooled validation Dice at ``out_path``
    (resumable state beside it: ``NAME.state.safetensors``); returns the loop's summary plus
    ``best_val_dice``, ``arch``, ``data``, ``plan`` and ``validate_on_train``.

    ``cfg`` (a :class:`~napari_histoseg.tumour.config.TumourConfig`) and/or its fields as keywords
    (``epochs=2, time_budget=1``, ...). ``plan``: the result of
    :func:`~napari_histoseg.training.plan.training_plan` for these folders, ``val_fraction`` and
    ``seed`` (computed here when None or made for others). A ValueError, before training, when
    the data or ``init_checkpoint`` cannot train a model.
    """
    cfg = (cfg or TumourConfig()).replace(**settings)
    dirs = [dataset_dirs] if isinstance(dataset_dirs, (str, Path)) else list(dataset_dirs)
    return fit(TumourHooks(dirs, plan), cfg, out_path, progress=progress, should_stop=should_stop, log=log,
               show_bar=show_bar)


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

