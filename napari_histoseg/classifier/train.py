"""Train the benign/malignant classifier, then calibrate it on validation patients.

The task's hooks for the shared loop (:func:`napari_histoseg.training.loop.fit`).
:func:`train` (also :func:`train_classifier`) trains ``classifier-mobilenet_v2`` on the ``train`` records of a
classification folder minus whole validation patients (:func:`data.patient_split`,
stratified by label), on augmented random crops of the images resized by ``scale`` (0.5:
BreakHis 100X at 0.197 µm/px is read at 0.394 µm/px, about a 20-25x scan). After every
epoch the validation images are classified exactly as at inference (tiles, mean of
logits, :mod:`.tiles`) and the checkpoint with the best validation score
(image AUC + image balanced accuracy; ties: lower NLL) is kept. The run stops at
``epochs``, after ``time_budget`` minutes, after ``patience`` epochs without
improvement, or when ``should_stop()`` says so (settings and defaults:
:class:`~napari_histoseg.classifier.config.ClassifierConfig`). With ``ema`` > 0 an exponential moving
average of the weights (decay ``ema`` per step) is what is validated and kept. Finally the best weights get a
temperature fitted on the validation patients' image logits (:mod:`.calibration`); the
temperature and the ECE before/after on those patients go into the checkpoint's
``training["calibration"]``.

Example
-------
>>> train_classifier("../shared/data/breakhis", "runs/cls.safetensors",
...                  init_encoder="../shared/weights/mobilenet_v2_imagenet.safetensors",
...                  time_budget=30, threads=1)                       # doctest: +SKIP
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from napari_histoseg.classifier.calibration import expected_calibration_error, fit_temperature, nll, softmax
from napari_histoseg.classifier.config import ClassifierConfig
from napari_histoseg.classifier.data import augmented_crop, load_classification, patient_split
from napari_histoseg.classifier.magnification import BREAKHIS_MPP
from napari_histoseg.classifier.metrics import binary_metrics, per_patient
from napari_histoseg.classifier.tiles import aggregate, tile_logits, to_input
from napari_histoseg.classifier.zoom import BLUR, blur, simulate_field
from napari_histoseg.core.resize import resize
from napari_histoseg.models import ModelMeta, build_model, load_checkpoint
from napari_histoseg.training.augment import AugmentConfig
from napari_histoseg.training.loop import TaskHooks, fit, load_start_checkpoint

ARCH = "classifier-mobilenet_v2"


def load_encoder(net, path) -> None:
    """Load ``features.*`` MobileNetV2 weights (torchvision layout) into ``net.features``."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    state = {k[len("features."):] if k.startswith("features.") else k: v for k, v in state.items()}
    net.features.load_state_dict(state, strict=True)


def _images(ds, idx, factor: float = 1.0):
    return [resize(ds.load(i), factor) for i in idx]


def fine_crop(image, size: int, zoom: float, rng, hed_sigma: float = 0.08) -> np.ndarray:
    """A training patch at the fine scale: a window of ``size / zoom`` px of a native image,
    enlarged to ``size`` (scale jitter 0.87-1.15) and blurred as the optics of a high-power
    field (:mod:`.zoom`), then rotated, flipped, stain- and intensity-jittered."""
    from napari_histoseg.training.augment import AugmentConfig, random_patch

    cfg = AugmentConfig(scale=(zoom * 0.87, zoom * 1.15), hed_sigma=hed_sigma, hed_bias=0.015, hed_prob=0.9)
    patch, _ = random_patch(image, np.zeros(image.shape[:2], np.uint8), size, rng, cfg)
    return blur(patch, float(rng.uniform(0.1, 2.2 * BLUR * zoom)))


def fine_validation_images(images, zoom: float):
    """The centre high-power field (4x the magnification) of each native image, read at the
    fine scale (``zoom`` times the native one), as inference reads a 400X field."""
    return [resize(simulate_field(im, 4.0), zoom / 4.0) for im in images]


def validate(net, images, labels, groups, tile: int, batch: int = 8) -> dict:
    """Image logits (mean over tiles) and figures on held-out images."""
    net.eval()
    logits = np.stack([aggregate(*tile_logits(net, im, tile, batch=batch)[:2]) for im in images])
    probs = softmax(logits)
    m = binary_metrics(probs[:, 1], labels)
    _, pm = per_patient(probs[:, 1], labels, groups)
    return {"logits": logits, "auc": m["auc"], "balanced_accuracy": m["balanced_accuracy"],
            "accuracy": m["accuracy"], "nll": nll(probs, labels),
            "patient_balanced_accuracy": pm["balanced_accuracy"]}


class ClassifierHooks(TaskHooks):
    task, score_key = "classification", "val_score"

    def __init__(self, dataset):
        self.dataset = dataset

    def setup(self, cfg, log):
        if not cfg.arch.startswith("classifier"):
            raise ValueError(f"--task classification trains classifier-* architectures, not {cfg.arch!r}")
        ds = load_classification(self.dataset)
        train_ds = ds.subset("train")
        if len(train_ds) == 0:
            train_ds = ds.subset("all")  # a folder without splits: hold out patients from all
        tr_mask, va_mask = patient_split(train_ds.groups, train_ds.labels, cfg.val_fraction, cfg.seed)
        tr, va = np.flatnonzero(tr_mask), np.flatnonzero(va_mask)
        if len(va) == 0 or len(tr) == 0:
            raise ValueError("need at least two patients (groups) per class to hold out validation patients")
        groups, labels = np.array(train_ds.groups), train_ds.labels
        self.tr_patients, self.va_patients = sorted(set(groups[tr])), sorted(set(groups[va]))
        log(f"train: {len(tr)} images of {len(self.tr_patients)} patients; validation: {len(va)} images of "
            f"{len(self.va_patients)} patients ({', '.join(self.va_patients)})")
        self.tr_images, self.va_images = _images(train_ds, tr, cfg.scale), _images(train_ds, va, cfg.scale)
        self.fine = float(cfg.fine_scale or 0)
        self.tr_native, self.va_fine = [], []
        if self.fine > 0:  # the second scale: native images for enlarged crops; 400X-like validation fields
            self.tr_native = _images(train_ds, tr)
            self.va_fine = fine_validation_images(_images(train_ds, va), self.fine)
            log(f"second scale: crops enlarged {self.fine:g}x ({cfg.fine_share:.0%} of each batch); validation "
                f"also on the centre 400X-like field of each validation image")
        self.tr_labels, self.va_labels, self.va_groups = labels[tr], labels[va], groups[va]
        # Sample patients more evenly: weight 1/sqrt(images of the patient), balanced per class.
        counts = {g: int((groups[tr] == g).sum()) for g in self.tr_patients}
        w = np.array([1 / math.sqrt(counts[g]) for g in groups[tr]])
        for c in (0, 1):
            w[self.tr_labels == c] /= w[self.tr_labels == c].sum()
        self.w = w / w.sum()
        self.patch_size = cfg.patch_size
        self.classes = {str(k): v for k, v in ds.classes.items()}
        self.mags = sorted({r.get("magnification") for r in train_ds.records} - {None})
        mpp = cfg.mpp
        if mpp is None and len(self.mags) == 1 and self.mags[0] in BREAKHIS_MPP:
            mpp = BREAKHIS_MPP[self.mags[0]]
        self.mpp = round(mpp / cfg.scale, 4) if mpp is not None else None  # the images are read resized
        self.fine_mpp = round(mpp / self.fine, 5) if mpp is not None and self.fine > 0 else None

    def describe(self):
        n, v = len(self.tr_images), len(self.va_images)
        return {"message": f"{n} images of {len(self.tr_patients)} patients to train on, {v} images of "
                           f"{len(self.va_patients)} patients held out", "train_tiles": n, "val_tiles": v,
                "validate_on_train": False, "warnings": []}

    def build_model(self, cfg, log):
        self.kwargs, self.start = {**cfg.arch_kwargs, "classes": len(self.classes), "dropout": cfg.dropout}, None
        if cfg.init_checkpoint:
            net, src, self.start = load_start_checkpoint(cfg.init_checkpoint, "classification")
            self.kwargs = dict(src.arch_kwargs)
            log(f"fine-tuning {src.name} v{src.model_version} from {self.start}")
        else:
            net = build_model(cfg.arch, **self.kwargs)
        if cfg.init_encoder:
            load_encoder(net, cfg.init_encoder)
            log(f"encoder initialised from {cfg.init_encoder}")
        self.averaged = None
        if cfg.ema > 0:  # validate and keep an exponential moving average of the weights
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.averaged = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        return net

    def default_freeze_bn(self, cfg):  # keep the ImageNet encoder's (folded) BatchNorm statistics
        return cfg.init_encoder is not None or bool(cfg.init_checkpoint)

    def steps_per_epoch(self, cfg):
        return cfg.steps_per_epoch or max(1, len(self.tr_images) // cfg.batch_size)

    def batch(self, rng, cfg):
        pick = rng.choice(len(self.tr_images), size=cfg.batch_size, p=self.w)
        n_fine = int(round(cfg.fine_share * cfg.batch_size)) if self.fine > 0 else 0
        aug = AugmentConfig(hed_sigma=cfg.hed_sigma, hed_bias=0.015, hed_prob=0.9)
        crops = [fine_crop(self.tr_native[i], cfg.patch_size, self.fine, rng, cfg.hed_sigma) if k < n_fine
                 else augmented_crop(self.tr_images[i], cfg.patch_size, rng, aug) for k, i in enumerate(pick)]
        x = to_input(np.stack(crops))
        return x, torch.as_tensor(self.tr_labels[pick])

    def loss(self, model, batch):
        return F.cross_entropy(model(batch[0]), batch[1])

    def after_step(self, model):
        if self.averaged is not None:
            self.averaged.update_parameters(model)

    def judged(self, model):
        return model if self.averaged is None else self.averaged.module

    def validate(self, model, train_loss):
        v = validate(model, self.va_images, self.va_labels, self.va_groups, self.patch_size)
        out = {"score": (v["auc"] if not math.isnan(v["auc"]) else 0) + v["balanced_accuracy"], "tie": v["nll"],
               "val_auc": v["auc"], "val_balanced_accuracy": v["balanced_accuracy"], "val_nll": v["nll"],
               "val_patient_balanced_accuracy": v["patient_balanced_accuracy"]}
        if self.va_fine:  # the score is the mean over the two scales
            f = validate(model, self.va_fine, self.va_labels, self.va_groups, self.patch_size)
            fine_score = (f["auc"] if not math.isnan(f["auc"]) else 0) + f["balanced_accuracy"]
            out.update({"score": (out["score"] + fine_score) / 2, "tie": (v["nll"] + f["nll"]) / 2,
                        "val_fine_auc": f["auc"], "val_fine_balanced_accuracy": f["balanced_accuracy"],
                        "val_fine_nll": f["nll"], "val_fine_patient_balanced_accuracy": f["patient_balanced_accuracy"]})
        return out

    def meta(self, cfg, training):
        last = training["history"][-1]
        return ModelMeta(
            arch=cfg.arch, task="classification", arch_kwargs=self.kwargs, classes=self.classes,
            tile_size=cfg.patch_size, mpp=self.mpp, name=cfg.name, model_version=cfg.model_version,
            preprocessing={"fine_mpp": self.fine_mpp} if self.fine_mpp else {},
            metrics={"validation": {k: last[k] for k in last if k.startswith("val_")}, "epoch": last["epoch"]},
            training={"dataset": str(self.dataset), "train_patients": self.tr_patients,
                      "validation_patients": self.va_patients, "settings": training["settings"],
                      "patch_size": cfg.patch_size, "batch_size": cfg.batch_size, "lr": cfg.lr, "seed": cfg.seed,
                      "freeze_bn": training["settings"]["freeze_bn"], "ema": cfg.ema, "scale": cfg.scale,
                      "fine_scale": self.fine, "fine_share": cfg.fine_share if self.fine else 0,
                      "hed_sigma": cfg.hed_sigma,
                      "magnification": self.mags, "init_encoder": Path(cfg.init_encoder).name if cfg.init_encoder
                      else None, "init_checkpoint": str(self.start) if self.start else None,
                      "aggregation": "mean of tile logits, then softmax(logits / temperature)"})

    def finish(self, cfg, out, save, summary, log):
        """Calibrate the best checkpoint on the validation patients (temperature scaling)."""
        net, meta = load_checkpoint(out)
        v = validate(net, self.va_images, self.va_labels, self.va_groups, cfg.patch_size)
        T = fit_temperature(v["logits"], self.va_labels)
        before = expected_calibration_error(softmax(v["logits"]), self.va_labels)
        after = expected_calibration_error(softmax(v["logits"] / T), self.va_labels)
        meta.training["calibration"] = {
            "temperature": T, "fitted_on": "validation patients (image logits, mean over tiles)",
            "ece_before": before, "ece_after": after, "bins": 10,
            "nll_before": nll(softmax(v["logits"]), self.va_labels),
            "nll_after": nll(softmax(v["logits"] / T), self.va_labels)}
        if self.va_fine:  # one temperature per scale: each scale calibrated on its own fields
            f = validate(net, self.va_fine, self.va_labels, self.va_groups, cfg.patch_size)
            Tf = fit_temperature(f["logits"], self.va_labels)
            meta.training["calibration"]["temperatures"] = {str(self.mpp): T, str(self.fine_mpp): Tf}
            meta.training["calibration"]["fine"] = {
                "temperature": Tf, "fitted_on": "centre 400X-like field of each validation image",
                "ece_before": expected_calibration_error(softmax(f["logits"]), self.va_labels),
                "ece_after": expected_calibration_error(softmax(f["logits"] / Tf), self.va_labels)}
        meta.training.update({"epochs": summary["epochs_run"], "best_epoch": summary["best_epoch"],
                              "stop_reason": summary["stop_reason"], "minutes": round(summary["seconds"] / 60, 2),
                              "history": summary["history"]})
        save(net, meta)
        log(f"temperature {T:.3f}; validation ECE {before:.3f} -> {after:.3f}")
        return {"output": str(out), "temperature": T, "ece_before": before, "ece_after": after}


def train(dataset, out, cfg: Optional[ClassifierConfig] = None, *, progress=None, should_stop=None,
          log: Callable[[str], None] = print, show_bar=None, **settings) -> dict:
    """Train, keep the best checkpoint at ``out``, calibrate it; returns the loop's summary plus
    ``temperature``, ``ece_before``, ``ece_after``."""
    cfg = (cfg or ClassifierConfig()).replace(**settings)
    return fit(ClassifierHooks(dataset), cfg, out, progress=progress, should_stop=should_stop, log=log, show_bar=show_bar)


train_classifier = train
