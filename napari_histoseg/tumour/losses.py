"""Segmentation losses of the main paper: soft Dice + class-weighted cross-entropy.

All losses take raw logits ``(N, C, H, W)`` and integer targets ``(N, H, W)`` (class
codes, ``ignore_index`` pixels count for nothing). ``C == 1`` means a binary tumour map
(sigmoid, binary cross-entropy); ``C > 1`` means classes with softmax.

* :func:`soft_dice_loss` — 1 - 2|P∩T| / (|P| + |T|) on probabilities, over the batch,
  averaged over the foreground classes (the tumour channel for C == 1).
* :func:`generalized_dice_loss` — Crum et al. / Sudre et al. 2017: classes (background
  included) weighted by 1 / (Σ target)², robust to class imbalance.
* :func:`weighted_cross_entropy` — cross-entropy with per-class weights (typically
  inverse class frequencies, see :func:`class_weights`).
* :class:`SegmentationLoss` — the combination used in training; it also accepts a
  list of outputs (main + deep-supervision side outputs, LightMuSeg V3), upsampling each
  side output to the target and weighting it by ``side_weight``.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-6


def _probs_onehot(logits: torch.Tensor, target: torch.Tensor, ignore_index: int):
    """Probabilities and one-hot targets (N, K, H, W) plus the valid-pixel mask (N, 1, H, W).

    For one channel, K = 2 (background, tumour) so both Dice variants can see both classes.
    """
    valid = (target != ignore_index).unsqueeze(1).float()
    t = torch.where(target == ignore_index, torch.zeros_like(target), target).long()
    if logits.shape[1] == 1:
        p1 = torch.sigmoid(logits)
        probs = torch.cat([1 - p1, p1], dim=1)
        k = 2
    else:
        probs = torch.softmax(logits, dim=1)
        k = logits.shape[1]
    onehot = F.one_hot(t.clamp(max=k - 1), k).permute(0, 3, 1, 2).float()
    return probs * valid, onehot * valid, valid


def soft_dice_loss(logits, target, ignore_index: int = 255) -> torch.Tensor:
    """Soft Dice loss averaged over the foreground classes (class 0 excluded)."""
    probs, onehot, _ = _probs_onehot(logits, target, ignore_index)
    dims = (0, 2, 3)
    inter = (probs * onehot).sum(dims)
    denom = probs.sum(dims) + onehot.sum(dims)
    dice = (2 * inter + EPS) / (denom + EPS)
    return 1 - dice[1:].mean()


def generalized_dice_loss(logits, target, ignore_index: int = 255) -> torch.Tensor:
    """Generalised Dice loss (all classes, weights 1 / (Σ target_k)²)."""
    probs, onehot, _ = _probs_onehot(logits, target, ignore_index)
    dims = (0, 2, 3)
    w = 1.0 / (onehot.sum(dims) ** 2 + EPS)
    w = torch.where(torch.isinf(w), torch.zeros_like(w), w)
    inter = (w * (probs * onehot).sum(dims)).sum()
    denom = (w * (probs + onehot).sum(dims)).sum()
    return 1 - (2 * inter + EPS) / (denom + EPS)


def weighted_cross_entropy(logits, target, weights: Sequence[float] | None = None, ignore_index: int = 255):
    """Class-weighted cross-entropy (binary for one channel), mean over valid pixels."""
    if logits.shape[1] > 1:
        w = None if weights is None else torch.as_tensor(weights, dtype=logits.dtype, device=logits.device)
        return F.cross_entropy(logits, target.long(), weight=w, ignore_index=ignore_index)
    valid = target != ignore_index
    t = (target == 1).float()
    if weights is None:
        pw = torch.ones_like(t)
    else:
        w0, w1 = float(weights[0]), float(weights[1])
        pw = torch.where(t > 0, torch.full_like(t, w1), torch.full_like(t, w0))
    per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], t, reduction="none") * pw
    denom = (pw * valid).sum().clamp_min(EPS)
    return (per_pixel * valid).sum() / denom


def class_weights(frequencies: Sequence[float], clip: float = 10.0) -> list[float]:
    """Inverse-frequency class weights, normalised to mean 1 and clipped to ``clip``."""
    inv = [1.0 / max(f, 1e-4) for f in frequencies]
    mean = sum(inv) / len(inv)
    return [min(v / mean, clip) for v in inv]


class SegmentationLoss(nn.Module):
    """Dice (soft or generalised) + weighted cross-entropy, with deep supervision.

    Parameters
    ----------
    dice : {"soft", "generalized"}
        Which Dice term.
    weights : sequence of float or None
        Per-class cross-entropy weights.
    dice_weight, ce_weight : float
        Weights of the two terms.
    side_weight : float
        Weight of each deep-supervision side output relative to the main output.
    ignore_index : int
        Target code that is ignored.
    """

    def __init__(self, dice="soft", weights=None, dice_weight=1.0, ce_weight=1.0,
                 side_weight=0.4, ignore_index=255):
        super().__init__()
        if dice not in ("soft", "generalized"):
            raise ValueError(f"dice must be 'soft' or 'generalized', got {dice!r}")
        self.dice_fn = soft_dice_loss if dice == "soft" else generalized_dice_loss
        self.weights = None if weights is None else list(weights)
        self.dice_weight, self.ce_weight = dice_weight, ce_weight
        self.side_weight = side_weight
        self.ignore_index = ignore_index

    def single(self, logits, target):
        """Loss of one output (upsampled to the target's size if smaller)."""
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(logits, size=target.shape[-2:], mode="bilinear", align_corners=False)
        return (self.dice_weight * self.dice_fn(logits, target, self.ignore_index)
                + self.ce_weight * weighted_cross_entropy(logits, target, self.weights, self.ignore_index))

    def forward(self, outputs, target):
        if isinstance(outputs, (list, tuple)):
            main, sides = outputs[0], outputs[1:]
            loss = self.single(main, target)
            for s in sides:
                loss = loss + self.side_weight * self.single(s, target)
            return loss
        return self.single(outputs, target)
