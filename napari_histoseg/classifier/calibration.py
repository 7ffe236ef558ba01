"""Calibration: temperature scaling and the expected calibration error.

Temperature scaling (Guo et al., ICML 2017) divides every logit by one scalar T > 0
fitted on held-out data by minimising the negative log-likelihood; it changes no
decision (argmax is unchanged) and only how confident the probabilities are.

The expected calibration error (ECE) is the top-label variant with equal-width bins:
the predictions are binned by their confidence (the largest class probability) into
``bins`` intervals of [0, 1]; ECE = sum over bins of (n_bin / N) * |accuracy - mean
confidence|. 0.9 confidence in a calibrated model means right nine times in ten.

Example
-------
>>> rng = np.random.default_rng(0)
>>> y = rng.integers(0, 2, 2000)
>>> logits = np.stack([-(2 * y - 1) * 4.0, (2 * y - 1) * 4.0], 1) + rng.normal(0, 6, (2000, 2))
>>> T = fit_temperature(logits, y)
>>> T > 1, expected_calibration_error(softmax(logits / T), y) < expected_calibration_error(softmax(logits), y)
(True, True)
"""

from __future__ import annotations

import numpy as np
import torch


def softmax(logits) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def fit_temperature(logits, labels, max_iter: int = 100) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)`` on ``labels``.

    LBFGS on log T (so T stays positive), starting at T = 1. Returns a float in
    [0.05, 20] (clipped; a degenerate set such as one class only gives an extreme T).
    """
    z = torch.as_tensor(np.asarray(logits), dtype=torch.float64)
    y = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    if z.ndim != 2 or z.shape[0] != y.shape[0] or z.shape[0] == 0:
        raise ValueError(f"need logits (N, C) and labels (N,), got {tuple(z.shape)} and {tuple(y.shape)}")
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(np.clip(log_t.exp().item(), 0.05, 20.0))


def nll(probs, labels) -> float:
    """Mean negative log-likelihood of the true class."""
    p = np.asarray(probs, np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(p, 1e-12, 1)).mean())


def expected_calibration_error(probs, labels, bins: int = 10) -> float:
    """Top-label ECE with ``bins`` equal-width confidence bins (see the module text).

    ``probs`` is (N, C) class probabilities, or (N,) probabilities of class 1 of a
    binary problem.
    """
    p = np.asarray(probs, np.float64)
    if p.ndim == 1:
        p = np.stack([1 - p, p], axis=1)
    y = np.asarray(labels)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        sel = idx == b
        if sel.any():
            ece += sel.mean() * abs(correct[sel].mean() - conf[sel].mean())
    return float(ece)


def reliability(probs, labels, bins: int = 10) -> list[dict]:
    """Per-bin ``{"lo", "hi", "n", "accuracy", "confidence"}`` (the reliability diagram)."""
    p = np.asarray(probs, np.float64)
    if p.ndim == 1:
        p = np.stack([1 - p, p], axis=1)
    y = np.asarray(labels)
    conf = p.max(axis=1)
    correct = p.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    return [{"lo": float(edges[b]), "hi": float(edges[b + 1]), "n": int((idx == b).sum()),
             "accuracy": float(correct[idx == b].mean()) if (idx == b).any() else None,
             "confidence": float(conf[idx == b].mean()) if (idx == b).any() else None}
            for b in range(bins)]
