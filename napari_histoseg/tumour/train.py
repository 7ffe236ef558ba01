"""Train a tumour-segmentation network on one or more training-data folders: the task's hooks
for the shared loop (:func:`napari_histoseg.training.loop.fit`).

:func:`train` is what ``histoseg train``, the backends' ``fine_tune`` and the server's jobs
call. The hooks read the folders (:func:`~napari_histoseg.training.plan.training_plan`: the
``train`` tiles minus a hold-out by ``group``, never ``test``), sample augmented random patches
(:mod:`napari_histoseg.training.augment`), minimise soft (or generalised) Dice + class-weighted
cross-entropy (:mod:`napari_histoseg.tumour.losses`) and validate on whole tiles (pooled Dice,
:func:`validate`). Settings and their defaults: :class:`~napari_histoseg.tumour.config.TumourConfig`.

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

from napari_histoseg.core.resize import resize
from napari_histoseg.core.scores import dice as dice_score
from napari_histoseg.io.dataset import class_frequencies
from napari_histoseg.models import ModelMeta, build_model, load_checkpoint, save_checkpoint
from napari_histoseg.training.augment import (AugmentConfig, augment_colour, background_patch, geometric,
                                              random_patch, random_window)
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


def resample_mask(mask: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 code mask (codes, ignore included, stay codes)."""
    if tuple(mask.shape) == tuple(shape):
        return mask
    m = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
    return F.interpolate(m, size=tuple(shape), mode="nearest")[0, 0].to(torch.uint8).numpy()


def to_model_scale(images, masks, src_mpp, model_mpp):
    """Images (antialiased bilinear) and masks (nearest) resampled from ``src_mpp`` to ``model_mpp``
    (both in µm per pixel; either None or 0: unchanged)."""
    if not src_mpp or not model_mpp or abs(src_mpp / model_mpp - 1) < 0.02:
        return list(images), list(masks)
    out_i, out_m = [], []
    for img, m in zip(images, masks):
        r = resize(img, src_mpp / model_mpp)
        out_i.append(r)
        out_m.append(resample_mask(m, r.shape[:2]) if m is not None else None)
    return out_i, out_m


def tile_mpp(ds, cfg, log=None, warned=None) -> Optional[float]:
    """µm per pixel of a folder's tiles: recorded per tile (the first that has one), else
    ``cfg.data_mpp[name]``; None (and a note through ``log`` once) when neither is known."""
    recorded = [t.get("mpp") for t in ds.tiles if t.get("mpp")]
    if recorded:
        return float(np.median(recorded))
    name = ds.name or Path(ds.root).name
    mpp = (cfg.data_mpp or {}).get(name) or (cfg.data_mpp or {}).get(Path(ds.root).name)
    if mpp is None and log and cfg.mpp and (warned is None or name not in warned):
        log(f"{name}: no mpp recorded and none in --data-mpp; its tiles are used at their own scale, "
            f"which may not be the model's {cfg.mpp} µm/px")
        if warned is not None:
            warned.add(name)
    return float(mpp) if mpp else None


def _load_plan(plan, cfg=None, log=print):
    """Train and validation image/mask lists of a :class:`~napari_histoseg.training.plan.TrainingPlan`
    at the model's scale (``cfg.mpp``), plus provenance. Validation on the training tiles reuses
    the same arrays."""
    tr_imgs, tr_masks, va_imgs, va_masks, prov = [], [], [], [], []
    model_mpp = getattr(cfg, "mpp", None)
    for f in plan.folders:
        src = tile_mpp(f["train"], cfg, log) if cfg is not None else None
        a, b = to_model_scale(*f["train"].load_all(), src, model_mpp)
        c, e = (a, b) if f["validate_on_train"] else to_model_scale(*f["val"].load_all(), src, model_mpp)
        tr_imgs += a; tr_masks += b; va_imgs += c; va_masks += e  # noqa: E702
        prov.append({"dataset": f["dataset"], "name": f["name"], "train_tiles": len(f["train"]),
                     "val_tiles": len(f["val"]), "validation": f["how"], "val_ids": f["val"].ids(),
                     "validate_on_train": f["validate_on_train"], "mpp": src,
                     "resampled_to": model_mpp if src and model_mpp else None})
    return tr_imgs, tr_masks, va_imgs, va_masks, prov


def load_unlabelled(dirs, cfg, log=print, per_folder: int = 160, seed: int = 0) -> tuple[list, list]:
    """Images (at the model's scale) of folders of unlabelled H&E: any ``dataset.json`` folder
    (its tiles' ``image``), at most ``per_folder`` each (a seeded choice); plus provenance."""
    import json

    from napari_histoseg.io.dataset import read_rgb

    rng = np.random.default_rng(seed)
    images, prov = [], []
    for d in dirs:
        root = Path(d)
        meta = json.loads((root / "dataset.json").read_text())
        tiles = [t for t in meta.get("tiles", []) if t.get("image")]
        if len(tiles) > per_folder:
            tiles = [tiles[i] for i in sorted(rng.choice(len(tiles), per_folder, replace=False))]
        name = meta.get("name") or root.name
        fallback = (cfg.data_mpp or {}).get(name) or (cfg.data_mpp or {}).get(root.name)
        for t in tiles:
            img = read_rgb(root / t["image"])
            src = t.get("mpp") or fallback
            images.append(to_model_scale([img], [None], src, cfg.mpp)[0][0])
        prov.append({"dataset": str(d), "name": name, "images": len(tiles), "mpp": t.get("mpp") or fallback})
        log(f"unlabelled: {len(tiles)} images of {name} ({prov[-1]['mpp'] or 'unknown'} µm/px)")
    return images, prov


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


@torch.no_grad()
def validation_logits(model, images, masks, ignore_index=255, max_pixels: int = 400_000, seed: int = 0):
    """Raw tumour logits and 0/1 targets of up to ``max_pixels`` valid pixels (a seeded sample)."""
    model.eval()
    zs, ts = [], []
    for img, m in zip(images, masks):
        out = _main_output(model(to_input(img[None])))[0, 0].numpy()
        ok = m != ignore_index
        zs.append(out[ok]); ts.append((m[ok] == 1).astype(np.uint8))  # noqa: E702
    z, t = np.concatenate(zs), np.concatenate(ts)
    if z.size > max_pixels:
        pick = np.random.default_rng(seed).choice(z.size, max_pixels, replace=False)
        z, t = z[pick], t[pick]
    return z.astype(np.float32), t


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
        self.tr_imgs, self.tr_masks, self.va_imgs, self.va_masks, self.prov = _load_plan(self.plan, cfg, log)
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
        size, pairs = cfg.patch_size, []
        for i in idx:
            if self.background and rng.random() < self.background:
                pairs.append((background_patch(size, rng), np.zeros((size, size), np.uint8)))
            else:
                pairs.append(random_patch(self.tr_imgs[i], self.tr_masks[i], size, rng, self.aug,
                                          self.plan.ignore_index))
        x, y = to_input(np.stack([p[0] for p in pairs])), torch.from_numpy(np.stack([p[1] for p in pairs])).long()
        if not self.consistency:
            return x, y
        plain, strong = [], []
        for i in rng.integers(0, len(self.unlabelled), size=cfg.unlabelled_batch):
            img = self.unlabelled[i]
            p, _ = random_window(img, np.zeros(img.shape[:2], np.uint8), size, rng, self.aug)
            p, _ = geometric(p, p[..., 0], rng, self.aug)
            plain.append(p)
            strong.append(augment_colour(p, rng, self.aug))
        return x, y, to_input(np.stack(plain)), to_input(np.stack(strong))

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

    def validate(self, model, train_loss):
        if not self.va_imgs:  # no validation tiles: select by training loss
            return {"score": -train_loss, "val_dice": -train_loss, "val_dice_mean_per_image": math.nan}
        pooled, mean = validate(model, self.va_imgs, self.va_masks, ignore_index=self.plan.ignore_index)
        return {"score": pooled, "val_dice": pooled, "val_dice_mean_per_image": mean}

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
        logits, targets = validation_logits(module, self.va_imgs, self.va_masks, self.plan.ignore_index)
        cal = fit_temperature(logits, targets)
        log(f"temperature {cal['temperature']:.3f} on {cal['pixels']:,} validation pixels: "
            f"ECE {cal['ece_before']:.4f} -> {cal['ece_after']:.4f}")
        meta.preprocessing = {**meta.preprocessing, "temperature": cal["temperature"]}
        meta.training = {**meta.training, "calibration": {**cal, "applied_as": "preprocessing.temperature",
                                                          "on": "validation tiles"}}
        save(module, meta)
        return {"calibration": cal}

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

