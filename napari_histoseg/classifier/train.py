"""Train the benign/malignant classifier, then calibrate it on validation patients.

:func:`train_classifier` trains ``classifier-mobilenet_v2`` on the ``train`` records of a
classification folder minus whole validation patients (:func:`data.patient_split`,
stratified by label), on augmented random crops of the images resized by ``scale`` (0.5:
BreakHis 100X at 0.197 µm/px is read at 0.394 µm/px, about a 20-25x scan). After every
epoch the validation images are classified exactly as at inference (tiles, mean of
logits, :mod:`.tiles`) and the checkpoint with the best validation score
(image AUC + image balanced accuracy; ties: lower NLL) is kept. The run stops at
``epochs``, after ``time_budget`` minutes, after ``patience`` epochs without
improvement, or when ``should_stop()`` says so. With ``ema`` > 0 an exponential moving
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
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F

from napari_histoseg.classifier.calibration import expected_calibration_error, fit_temperature, nll, softmax
from napari_histoseg.classifier.data import augmented_crop, load_classification, patient_split
from napari_histoseg.classifier.metrics import binary_metrics, per_patient
from napari_histoseg.classifier.tiles import aggregate, tile_logits, to_input
from napari_histoseg.core.resize import resize
from napari_histoseg.models import ModelMeta, build_model, save_checkpoint

ARCH = "classifier-mobilenet_v2"
# BreakHis "100X" = 10x objective x 3.3x relay lens onto a 6.5 um camera pixel
# (Spanhol et al. 2016): 6.5 / 33 = 0.197 um per pixel. See CLASSIFIER_MODEL_CARD.md.
BREAKHIS_MPP = {40: 0.49, 100: 0.197, 200: 0.098, 400: 0.049}


def load_encoder(net, path) -> None:
    """Load ``features.*`` MobileNetV2 weights (torchvision layout) into ``net.features``."""
    from safetensors.torch import load_file

    state = load_file(str(path))
    state = {k[len("features."):] if k.startswith("features.") else k: v for k, v in state.items()}
    net.features.load_state_dict(state, strict=True)


def _images(ds, idx, factor: float = 1.0):
    return [resize(ds.load(i), factor) for i in idx]


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


def train_classifier(
    dataset, output, *, epochs: int = 100, time_budget: Optional[float] = None,
    init_encoder=None, batch_size: int = 16, patch_size: int = 192, lr: float = 3e-4,
    scale: float = 0.5,
    steps_per_epoch: Optional[int] = None, val_fraction: float = 0.2, patience: int = 12,
    seed: int = 0, threads: Optional[int] = None, dropout: float = 0.2,
    name: str = "histoseg-classifier", model_version: str = "0", mpp: Optional[float] = None,
    half_weights: bool = False, freeze_bn: Optional[bool] = None, ema: float = 0.0, log: Callable[[str], None] = print,
    progress: Optional[Callable[[dict], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
) -> dict:
    """Train, keep the best checkpoint at ``output``, calibrate it; return a summary dict."""
    t0 = time.monotonic()
    if freeze_bn is None:  # keep the ImageNet encoder's (folded) BatchNorm statistics
        freeze_bn = init_encoder is not None
    if threads:
        torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)

    ds = load_classification(dataset)
    train_ds = ds.subset("train")
    if len(train_ds) == 0:
        train_ds = ds.subset("all")  # a folder without splits: hold out patients from all
    tr_mask, va_mask = patient_split(train_ds.groups, train_ds.labels, val_fraction, seed)
    tr_idx, va_idx = np.flatnonzero(tr_mask), np.flatnonzero(va_mask)
    if len(va_idx) == 0 or len(tr_idx) == 0:
        raise ValueError("need at least two patients (groups) per class to hold out validation patients")
    groups = np.array(train_ds.groups)
    assert not set(groups[tr_idx]) & set(groups[va_idx])
    labels = train_ds.labels
    log(f"train: {len(tr_idx)} images of {len(set(groups[tr_idx]))} patients; "
        f"validation: {len(va_idx)} images of {len(set(groups[va_idx]))} patients "
        f"({', '.join(sorted(set(groups[va_idx])))})")
    tr_images, va_images = _images(train_ds, tr_idx, scale), _images(train_ds, va_idx, scale)
    tr_labels, va_labels = labels[tr_idx], labels[va_idx]

    # Sample patients more evenly: weight 1/sqrt(images of the patient), balanced per class.
    counts = {g: int((groups[tr_idx] == g).sum()) for g in set(groups[tr_idx])}
    w = np.array([1 / math.sqrt(counts[g]) for g in groups[tr_idx]])
    for c in (0, 1):
        w[tr_labels == c] /= w[tr_labels == c].sum()
    w /= w.sum()

    classes = {str(k): v for k, v in ds.classes.items()}
    net = build_model(ARCH, classes=len(classes), dropout=dropout)
    if init_encoder:
        load_encoder(net, init_encoder)
        log(f"encoder initialised from {init_encoder}")
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    averaged = None
    if ema > 0:  # validate and keep an exponential moving average of the weights
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        averaged = AveragedModel(net, multi_avg_fn=get_ema_multi_avg_fn(ema), use_buffers=True)
    steps = steps_per_epoch or max(1, len(tr_idx) // batch_size)
    budget_s = time_budget * 60 if time_budget else None

    mags = {r.get("magnification") for r in train_ds.records}
    if mpp is None and len(mags) == 1 and next(iter(mags)) in BREAKHIS_MPP:
        mpp = BREAKHIS_MPP[next(iter(mags))]
    if mpp is not None:
        mpp = round(mpp / scale, 4)  # the images are read resized by `scale`
    meta = ModelMeta(
        arch=ARCH, task="classification", arch_kwargs={"classes": len(classes), "dropout": dropout},
        classes=classes, tile_size=patch_size, mpp=mpp, name=name, model_version=model_version,
        training={"dataset": str(dataset), "train_patients": sorted(set(groups[tr_idx])),
                  "validation_patients": sorted(set(groups[va_idx])), "patch_size": patch_size,
                  "batch_size": batch_size, "lr": lr, "seed": seed, "freeze_bn": freeze_bn, "ema": ema,
                  "scale": scale,
                  "magnification": sorted(m for m in mags if m is not None),
                  "init_encoder": Path(init_encoder).name if init_encoder else None,
                  "aggregation": "mean of tile logits, then softmax(logits / temperature)"},
    )
    best, best_epoch, history, epoch = None, -1, [], 0
    stop_reason = "epochs"
    for epoch in range(1, epochs + 1):
        net.train()
        if freeze_bn:
            for m in net.modules():
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()  # keep the encoder's (folded) statistics; batches of 16 are too small
        losses = []
        for step in range(steps):
            frac = min(1.0, max(((epoch - 1) * steps + step) / (epochs * steps),
                                (time.monotonic() - t0) / budget_s if budget_s else 0.0))
            for g in opt.param_groups:
                g["lr"] = lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * frac)))
            pick = rng.choice(len(tr_idx), size=batch_size, p=w)
            x = to_input(np.stack([augmented_crop(tr_images[i], patch_size, rng) for i in pick]))
            y = torch.as_tensor(tr_labels[pick])
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if averaged is not None:
                averaged.update_parameters(net)
            losses.append(loss.item())
            if should_stop is not None and should_stop():
                break
        judged = net if averaged is None else averaged.module
        v = validate(judged, va_images, va_labels, groups[va_idx], patch_size)
        score = (v["auc"] if not math.isnan(v["auc"]) else 0) + v["balanced_accuracy"]
        row = {"epoch": epoch, "loss": float(np.mean(losses)), "val_auc": v["auc"],
               "val_balanced_accuracy": v["balanced_accuracy"], "val_nll": v["nll"],
               "val_patient_balanced_accuracy": v["patient_balanced_accuracy"],
               "minutes": (time.monotonic() - t0) / 60}
        improved = best is None or score > best[0] + 1e-6 or (abs(score - best[0]) <= 1e-6 and v["nll"] < best[1])
        if improved:
            best, best_epoch = (score, v["nll"]), epoch
            meta.metrics = {"validation": {k: row[k] for k in row if k.startswith("val_")}, "epoch": epoch}
            save_checkpoint(judged, output, meta)
        history.append(row)
        log(f"epoch {epoch:3d}  loss {row['loss']:.4f}  val AUC {v['auc']:.3f}  bal.acc "
            f"{v['balanced_accuracy']:.3f}  patient bal.acc {v['patient_balanced_accuracy']:.3f}  "
            f"NLL {v['nll']:.3f}  {row['minutes']:.1f} min{'  *best' if improved else ''}")
        if progress is not None:
            progress(row)
        if should_stop is not None and should_stop():
            stop_reason = "stopped"
            break
        if budget_s and time.monotonic() - t0 > budget_s:
            stop_reason = "time budget"
            break
        if epoch - best_epoch >= patience:
            stop_reason = "patience"
            break

    # Calibrate the best checkpoint on the validation patients.
    from napari_histoseg.models import load_checkpoint

    net, meta = load_checkpoint(output)
    v = validate(net, va_images, va_labels, groups[va_idx], patch_size)
    T = fit_temperature(v["logits"], va_labels)
    before = expected_calibration_error(softmax(v["logits"]), va_labels)
    after = expected_calibration_error(softmax(v["logits"] / T), va_labels)
    meta.training["calibration"] = {
        "temperature": T, "fitted_on": "validation patients (image logits, mean over tiles)",
        "ece_before": before, "ece_after": after, "bins": 10,
        "nll_before": nll(softmax(v["logits"]), va_labels),
        "nll_after": nll(softmax(v["logits"] / T), va_labels)}
    meta.training.update({"epochs": epoch, "best_epoch": best_epoch, "stop_reason": stop_reason,
                          "minutes": round((time.monotonic() - t0) / 60, 2), "history": history})
    if half_weights:
        net = net.half()
    save_checkpoint(net, output, meta, sidecar=True)
    log(f"best epoch {best_epoch}; temperature {T:.3f}; validation ECE {before:.3f} -> {after:.3f}; "
        f"stopped by {stop_reason}")
    return {"output": str(output), "best_epoch": best_epoch, "temperature": T,
            "ece_before": before, "ece_after": after, "history": history, "stop_reason": stop_reason}
