"""Train a tumour-segmentation network on one or more training-data folders: the task's hooks
for the shared loop (:func:`napari_histoseg.training.loop.fit`).

:func:`train` is what ``histoseg train``, the backends' ``fine_tune`` and the server's jobs
call. The hooks read the folders (:func:`~napari_histoseg.training.plan.training_plan`: the
``train`` tiles minus a hold-out by ``group``, never ``test``), sample augmented random patches
(:mod:`napari_histoseg.training.augment`), minimise soft (or generalised) Dice + class-weighted
cross-entropy (:mod:`napari_histoseg.tumour.losses`) and validate on whole tiles (pooled Dice,
:func:`~napari_histoseg.tumour.scoring.validate`). Settings and their defaults: :class:`~napari_histoseg.tumour.config.TumourConfig`.

The model has one scale: every tile is resampled to ``mpp`` µm per pixel (from the tile's
recorded ``mpp``, else its folder's entry in ``data_mpp``) and the checkpoint says so, so
inference resamples any image to it. Some patches are synthetic glass or fat (``background``);
with ``consistency`` > 0, unlabelled H&E (``unlabelled`` folders) adds a term that makes the
prediction on a heavily re-stained view follow the (detached) prediction on the plain view.
After training a temperature is fitted on the validation tiles (``calibrate``), stored as
``preprocessing.temperature`` (applied by :class:`~napari_histoseg.models.segmenter.Segmenter`)
with ECE before and after in ``training.calibration``.
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
import torch.nn.functional as F
from safetensors.torch import load_file

from napari_histoseg.io.dataset import class_frequencies
from napari_histoseg.models import ModelMeta, build_model, load_checkpoint, save_checkpoint
from napari_histoseg.training.augment import (
    AugmentConfig,
    augment_colour,
    background_patch,
    geometric,
    random_patch,
    random_window,
)
from napari_histoseg.training.loop import TaskHooks, fit
from napari_histoseg.training.plan import TrainingPlan, check_init_checkpoint, training_plan
from napari_histoseg.tumour.config import TumourConfig
from napari_histoseg.tumour.data import load_plan, load_unlabelled
from napari_histoseg.tumour.losses import SegmentationLoss, class_weights
from napari_histoseg.tumour.scoring import MEAN, STD, _called, to_input, validate, validation_logits

_POOL_DATA: tuple = ()  # (images, masks, unlabelled, augmentation, ignore index): inherited by forked workers


def _patch_job(job):
    """One patch in a worker: ``("l", tile, seed, size, background)`` a labelled patch (or a
    synthetic negative), ``("u", image, seed, size)`` an unlabelled (plain, re-stained) pair."""
    imgs, masks, unlabelled, aug, ignore = _POOL_DATA
    kind, i, seed, size = job[:4]
    rng = np.random.default_rng(seed)
    if kind == "u":
        img = unlabelled[i]
        p, _ = random_window(img, np.zeros(img.shape[:2], np.uint8), size, rng, aug)
        p, _ = geometric(p, p[..., 0], rng, aug)
        return p, augment_colour(p, rng, aug)
    if job[4] and rng.random() < job[4]:
        return background_patch(size, rng), np.zeros((size, size), np.uint8)
    return random_patch(imgs[i], masks[i], size, rng, aug, ignore)


def _worker_init():
    torch.set_num_threads(1)


class TumourHooks(TaskHooks):
    task, score_key = "segmentation", "val_dice"

    def __init__(self, dirs, plan: Optional[TrainingPlan] = None):
        self.dirs, self.plan = dirs, plan

    def setup(self, cfg, log):
        if self.plan is None or self.plan.key != (tuple(str(d) for d in self.dirs), cfg.val_fraction, cfg.seed):
            self.plan = training_plan(self.dirs, cfg.val_fraction, cfg.seed)
            log(self.plan.message)
        self.codes = sorted(int(k) for k in self.plan.classes)
        self.init, start = None, None
        if cfg.init_checkpoint:  # checked before any pixel is read
            self.init, start = check_init_checkpoint(cfg.init_checkpoint, len(self.codes))
        self.tr_imgs, self.tr_masks, self.va_imgs, self.va_masks, self.prov = load_plan(self.plan, cfg, log)
        freq = class_frequencies(self.tr_masks, self.codes, self.plan.ignore_index)
        self.weights = class_weights([freq[c] for c in self.codes])
        kept = (start.training.get("settings") or {}).get("class_weights") if start else None
        if kept and len(kept) == len(self.codes):  # a fine-tune keeps the objective its model was trained on
            self.weights = [float(w) for w in kept]
        self.criterion = SegmentationLoss(dice=cfg.loss, weights=self.weights, ignore_index=self.plan.ignore_index)
        self.aug = AugmentConfig.heavy() if getattr(cfg, "augment", "light") == "heavy" else AugmentConfig()
        self.background = float(getattr(cfg, "background", 0.0) or 0.0)
        self.consistency = float(getattr(cfg, "consistency", 0.0) or 0.0)
        self.unlabelled, self.unlabelled_prov = [], []
        if self.consistency > 0 and getattr(cfg, "unlabelled", None):
            self.unlabelled, self.unlabelled_prov = load_unlabelled(cfg.unlabelled, cfg, log, seed=cfg.seed)
        if not self.unlabelled:
            self.consistency = 0.0
        self.tile_p = self._tile_weights(getattr(cfg, "folder_weights", None) or {}, log)
        self.pool, self.pending = None, None
        from napari_histoseg.core.device import resolve_device

        self.device = resolve_device(getattr(cfg, "device", "cpu") or "cpu")

    def _tile_weights(self, weights, log):
        """Probability of drawing each training tile: uniform, unless ``folder_weights`` names a folder."""
        from napari_histoseg.io.checks import InputError, check_float

        if not isinstance(weights, dict):
            raise InputError(f"folder_weights must be a JSON object {{folder name: weight}}; got {weights!r}")
        names = [p["name"] for p in self.prov]
        unknown = sorted(set(weights) - set(names))
        if unknown:
            raise InputError(f"folder_weights names {', '.join(unknown)}, not among the folders {', '.join(names)}")
        if not weights:
            return None
        w = np.concatenate([np.full(p["train_tiles"], check_float(weights.get(p["name"], 1.0),
                                                                  f"folder_weights[{p['name']!r}]", lo=0))
                            for p in self.prov])
        if w.sum() <= 0:
            raise InputError("folder_weights: every folder has weight 0; nothing would be drawn")
        w = w / w.sum()
        shares, i = [], 0
        for p in self.prov:
            shares.append(f"{p['name']} {w[i:i + p['train_tiles']].sum():.0%}")
            i += p["train_tiles"]
        log("labelled patches drawn from " + ", ".join(shares))
        return w

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
        if cfg.init_encoder and self.init:  # the checkpoint's trained encoder wins over an ImageNet one
            log(f"--init-encoder {cfg.init_encoder} ignored: the encoder comes from {self.init}")
        elif cfg.init_encoder:
            model.encoder.load_state_dict(load_file(str(cfg.init_encoder)))
            log(f"encoder initialised from {cfg.init_encoder}")
        log(f"{self.arch}; class weights {[round(w, 3) for w in self.weights]}; on {self.device}")
        return model.to(self.device)

    def default_freeze_bn(self, cfg):
        return bool(cfg.init_checkpoint)

    def steps_per_epoch(self, cfg):
        area = sum(m.size for m in self.tr_masks)
        return cfg.steps_per_epoch or max(1, math.ceil(area / cfg.patch_size**2 / cfg.batch_size))

    def _jobs(self, rng, cfg):
        size = cfg.patch_size
        jobs = [("l", int(i), int(rng.integers(2**62)), size, self.background)
                for i in (rng.integers(0, len(self.tr_imgs), size=cfg.batch_size) if self.tile_p is None
                          else rng.choice(len(self.tr_imgs), size=cfg.batch_size, p=self.tile_p))]
        if self.consistency:
            jobs += [("u", int(i), int(rng.integers(2**62)), size)
                     for i in rng.integers(0, len(self.unlabelled), size=cfg.unlabelled_batch)]
        return jobs

    def _tensors(self, results, n):
        dev = self.device
        x = to_input(np.stack([r[0] for r in results[:n]])).to(dev)
        y = torch.from_numpy(np.stack([r[1] for r in results[:n]])).long().to(dev)
        if len(results) == n:
            return x, y
        u = results[n:]
        return x, y, to_input(np.stack([r[0] for r in u])).to(dev), to_input(np.stack([r[1] for r in u])).to(dev)

    def batch(self, rng, cfg):
        global _POOL_DATA
        if not getattr(cfg, "workers", 0):
            _POOL_DATA = (self.tr_imgs, self.tr_masks, self.unlabelled, self.aug, self.plan.ignore_index)
            return self._tensors([_patch_job(j) for j in self._jobs(rng, cfg)], cfg.batch_size)
        if self.pool is None:  # forked once the data is loaded; one batch is always being prepared
            import multiprocessing

            _POOL_DATA = (self.tr_imgs, self.tr_masks, self.unlabelled, self.aug, self.plan.ignore_index)
            self.pool = multiprocessing.get_context("fork").Pool(cfg.workers, initializer=_worker_init)
            self.pending = self.pool.map_async(_patch_job, self._jobs(rng, cfg))
        results = self.pending.get()
        self.pending = self.pool.map_async(_patch_job, self._jobs(rng, cfg))
        return self._tensors(results, cfg.batch_size)

    def loss(self, model, batch):
        if len(batch) == 2:
            return self.criterion(model(batch[0]), batch[1])
        x, y, plain, strong = batch  # one pass, so BatchNorm sees labelled and unlabelled alike
        n, k = len(x), len(plain)
        out = model(torch.cat([x, plain, strong]))
        outs = list(out) if isinstance(out, (list, tuple)) else [out]
        sup = self.criterion([o[:n] for o in outs] if len(outs) > 1 else outs[0][:n], y)
        main = outs[0]
        teacher, student = main[n:n + k].detach(), main[n + k:]
        if main.shape[1] == 1:
            cons = F.binary_cross_entropy_with_logits(student, torch.sigmoid(teacher))
        else:
            cons = -(teacher.softmax(1) * student.log_softmax(1)).sum(1).mean()
        return sup + self.consistency * cons

    def _parts(self):
        """``(folder name, first, end)`` of each folder's validation tiles, in the order load_plan stacked them."""
        parts, i = [], 0
        for p in self.prov:
            n = p["train_tiles"] if p["validate_on_train"] else p["val_tiles"]
            if n:
                parts.append((p["name"], i, i + n))
            i += n
        return parts

    def validate(self, model, train_loss):
        """Pooled validation Dice; over several folders, the mean of each folder's pooled Dice."""
        if not self.va_imgs:  # no validation tiles: select by training loss
            return {"score": -train_loss, "val_dice": -train_loss, "val_dice_mean_per_image": math.nan}
        parts = self._parts()
        # a folder whose validation truth holds no tumour (benign tissue) has no Dice: it is reported
        # as the fraction of its pixels called tumour and kept out of the score
        free = [(n, a, b) for n, a, b in parts if not any((m[:] == 1).any() for m in self.va_masks[a:b])]
        called = {f"val_called_{n}": _called(model, self.va_imgs[a:b], self.va_masks[a:b], self.plan.ignore_index)
                  for n, a, b in free}
        if len(free) < len(parts):
            parts = [p for p in parts if p not in free]
        else:
            called = {}
        if len(parts) < 2:
            a, b = (parts[0][1], parts[0][2]) if len(parts) == 1 else (0, len(self.va_imgs))
            pooled, mean = validate(model, self.va_imgs[a:b], self.va_masks[a:b], ignore_index=self.plan.ignore_index)
            return {"score": pooled, "val_dice": pooled, "val_dice_mean_per_image": mean, **called}
        # several folders: the mean of their pooled Dice, so that a folder of large tiles (camelyon
        # at 0.5 µm/px: 768 px) does not outweigh one of small tiles (bcss: 256 px) in selection
        res = {name: validate(model, self.va_imgs[a:b], self.va_masks[a:b], ignore_index=self.plan.ignore_index)
               for name, a, b in parts}
        score = float(np.mean([r[0] for r in res.values()]))
        mean = float(sum(r[1] * (b - a) for (_, a, b), r in zip(parts, res.values())) / sum(b - a for _, a, b in parts))
        return {"score": score, "val_dice": score, "val_dice_mean_per_image": mean,
                **{f"val_dice_{name}": r[0] for name, r in res.items()}, **called}

    def meta(self, cfg, training):
        settings = {**training["settings"], "arch": self.arch, "arch_kwargs": self.kwargs,
                    "loss": f"{cfg.loss} dice + class-weighted cross-entropy", "class_weights": self.weights,
                    "init_checkpoint": str(self.init) if self.init else None, "augmentation": dict(self.aug.__dict__),
                    "background_fraction": self.background, "consistency": self.consistency,
                    "max_epochs": cfg.epochs, "time_budget_min": cfg.time_budget}
        mpp = getattr(cfg, "mpp", None) or None
        if self.init and mpp is None:
            mpp = load_checkpoint(self.init)[1].mpp
        return ModelMeta(arch=self.arch, arch_kwargs=self.kwargs, classes=self.plan.classes, mean=[MEAN] * 3,
                         std=[STD] * 3, tile_size=512, mpp=mpp, name=cfg.name, model_version=cfg.model_version,
                         training={"data": self.prov, "unlabelled": self.unlabelled_prov, "settings": settings,
                                   "epochs_run": training["epochs_run"], "best_epoch": training["best_epoch"],
                                   "val_dice": training["score"], "history": training["history"]})

    def finish(self, cfg, out, save, summary, log):
        if not getattr(cfg, "calibrate", False) or not self.va_imgs or self.plan.validate_on_train:
            return {}
        from napari_histoseg.tumour.metrics import fit_temperature

        module, meta = load_checkpoint(out)
        if int(meta.arch_kwargs.get("classes", 1)) != 1:
            return {}
        # every folder gives the same share of the pixels, so that one of large images does not swamp the fit
        parts = self._parts() or [("", 0, len(self.va_imgs))]
        zs, ts = zip(*(validation_logits(module, self.va_imgs[a:b], self.va_masks[a:b], self.plan.ignore_index,
                                         max_pixels=400_000 // len(parts)) for _, a, b in parts))
        logits, targets = np.concatenate(zs), np.concatenate(ts)
        cal = fit_temperature(logits, targets)
        log(f"temperature {cal['temperature']:.3f} on {cal['pixels']:,} validation pixels: "
            f"ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}")
        meta.preprocessing = {**meta.preprocessing, "temperature": cal["temperature"]}
        meta.training = {**meta.training, "calibration": {**cal, "applied_as": "preprocessing.temperature",
                                                          "on": "validation tiles"}}
        save(module, meta)
        return {"calibration": cal}

    def summary(self):
        if getattr(self, "pool", None) is not None:
            self.pool.terminate()
            self.pool = None
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

