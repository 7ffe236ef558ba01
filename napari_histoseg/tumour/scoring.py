"""Scoring a tumour network on whole validation tiles: the input scaling it was trained with,
pooled and per-image Dice (:func:`validate`), the share called tumour in a folder without
tumour, and a seeded sample of raw logits for calibration. Used by :mod:`.train` (early
stopping, checkpoint choice, the temperature) and by :mod:`.adapt`."""

from __future__ import annotations

import math

import numpy as np
import torch

from napari_histoseg.core.scores import dice as dice_score

MEAN = STD = 127.5  # inputs scaled to [-1, 1], as the ImageNet MobileNetV2 encoder expects


def to_input(batch: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float()
    return (x - MEAN) / STD


def _main_output(out):
    return out[0] if isinstance(out, (list, tuple)) else out


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
    dev = next(model.parameters()).device
    for i, j in runs:
        x = to_input(np.stack(images[i:j])).to(dev)
        out = _main_output(model(x))
        prob = torch.sigmoid(out[:, 0]) if out.shape[1] == 1 else out.argmax(1).float()
        for p, m in zip(prob.cpu().numpy(), masks[i:j]):
            pred = (p >= threshold).astype(np.uint8)
            a, b, c, _ = confusion(pred, m, ignore_index=ignore_index)
            tp, fp, fn = tp + a, fp + b, fn + c
            scores.append(dice_score(pred, m, ignore_index=ignore_index))
    if not scores:
        return math.nan, math.nan
    pooled = 2 * tp / (2 * tp + fp + fn) if (tp + fp + fn) else 1.0
    return float(pooled), float(np.mean(scores))


@torch.no_grad()
def _called(model, images, masks, ignore_index=255, threshold=0.5) -> float:
    """Fraction of the valid pixels of ``images`` called tumour (for folders without tumour)."""
    model.eval()
    dev = next(model.parameters()).device
    hit = total = 0
    for img, m in zip(images, masks):
        out = _main_output(model(to_input(img[None]).to(dev)))[0]
        p = (torch.sigmoid(out[0]) if out.shape[0] == 1 else (out.argmax(0) == 1).float()).cpu().numpy()
        ok = m != ignore_index
        hit, total = hit + int((p[ok] >= threshold).sum()), total + int(ok.sum())
    return float(hit / total) if total else math.nan


@torch.no_grad()
def validation_logits(model, images, masks, ignore_index=255, max_pixels: int = 400_000, seed: int = 0):
    """Raw tumour logits and 0/1 targets of up to ``max_pixels`` valid pixels (a seeded sample)."""
    model.eval()
    zs, ts = [], []
    dev = next(model.parameters()).device
    for img, m in zip(images, masks):
        out = _main_output(model(to_input(img[None]).to(dev)))[0, 0].cpu().numpy()
        ok = m != ignore_index
        zs.append(out[ok]); ts.append((m[ok] == 1).astype(np.uint8))  # noqa: E702
    z, t = np.concatenate(zs), np.concatenate(ts)
    if z.size > max_pixels:
        pick = np.random.default_rng(seed).choice(z.size, max_pixels, replace=False)
        z, t = z[pick], t[pick]
    return z.astype(np.float32), t
