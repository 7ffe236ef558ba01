"""Uncertainty maps: predictive entropy and Monte-Carlo dropout.

* **Predictive entropy** of the tumour probability ``p``:
  ``H = -p log2 p - (1 - p) log2 (1 - p)`` bits, 0 where the model is sure, 1 at
  ``p = 0.5``. For C classes the entropy of the class distribution divided by
  ``log2 C``, so it stays in [0, 1]. It costs one prediction.
* **Monte-Carlo dropout** (Gal & Ghahramani 2016): N forward passes with only the
  dropout layers in training mode (BatchNorm keeps its running statistics, as in
  eval); the map is the standard deviation of the tumour probability over the passes,
  in [0, 0.5]. It shows where the network's answer hangs on a few features.

When a model has exactly one dropout layer (``unet-mobilenet_v2``: Dropout2d before
the head), everything before it runs once and only the rest runs N times (a forward
pre-hook repeats the dropout's input N times along the batch); if the network cannot
take that (a skip connection after the dropout), N full passes are run instead.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from napari_histoseg.explanations.maps import (  # noqa: F401 (the maps' home; named here too)
    BOUNDARY_PX,
    boundary_proximity,
    calibrated,
    either,
    entropy_bits,
    temperature,
)
from napari_histoseg.explanations.methods import ExplainError


class FlipTta:
    """Per-tile test-time-augmentation moments: the tumour probability under the 8 flips and
    quarter turns of the tile (the dihedral group; H&E has no up or left), as ``(E[p], E[p^2])``
    for the tiled driver; the map is their standard deviation, in [0, 0.5]."""

    combine, depth, margin, always = "blend", 2, 0, True  # see explain.tiled

    def __init__(self, model, channel: int = 0, samples: int = 8):
        self.model, self.channel, self.samples = model, int(channel), max(1, min(int(samples), 8))

    def __call__(self, tile: np.ndarray, weights=None, use_prediction=False, index: int = 0) -> np.ndarray:
        x = self.model.to_tensor(tile[None])
        square = x.shape[-1] == x.shape[-2]
        views = [(k, f) for f in (False, True) for k in ((0, 1, 2, 3) if square else (0, 2))][: self.samples]
        probs = []
        with torch.no_grad():
            for k, f in views:
                z = torch.flip(x, (-1,)) if f else x
                z = torch.rot90(z, k, (-2, -1))
                p = self.model.activate(self.model.logits(z).float())[:, self.channel]
                p = torch.rot90(p, -k, (-2, -1))
                probs.append(torch.flip(p, (-1,)) if f else p)
        probs = torch.cat(probs)
        return torch.stack([probs.mean(0), (probs * probs).mean(0)]).cpu().numpy().astype(np.float32)


def dropout_layers(module: nn.Module) -> list[nn.Module]:
    """The dropout modules of ``module`` that drop something (p > 0)."""
    return [m for m in module.modules() if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0]


class McDropout:
    """Per-tile MC-dropout moments for the tiled driver.

    Returns ``(E[p], E[p^2])`` per pixel so that tiles blend like probabilities and the
    standard deviation is taken once after blending.

    Parameters
    ----------
    model : Segmenter
        A torch segmenter with at least one dropout layer.
    channel : int
        Output channel of the tumour class.
    samples : int
        Stochastic passes N (default 16 in :func:`napari_histoseg.explanations.explain`).
    seed : int
        Seed of the dropout masks; tile ``i`` uses ``seed + i``.
    """

    combine, depth, margin, always = "blend", 2, 0, True  # see explain.tiled

    def __init__(self, model, channel: int = 0, samples: int = 16, seed: int = 0):
        self.layers = dropout_layers(model.module)
        if not self.layers:
            raise ExplainError(
                f"Monte-Carlo dropout needs dropout layers, and this model "
                f"({model.description}) has none; use "
                "method='entropy' for its uncertainty, or a model trained with dropout "
                "(unet-mobilenet_v2 has Dropout2d(p=0.3) before its head)"
            )
        self.model, self.channel, self.samples, self.seed = model, int(channel), int(samples), int(seed)
        self._fast = len(self.layers) == 1

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return self.model.activate(logits.float())[:, self.channel]

    def _replicated(self, x: torch.Tensor) -> torch.Tensor | None:
        """One pass up to the dropout, N after it; None when the network cannot take it."""
        n = self.samples

        def repeat(mod, args):
            return (args[0].repeat_interleave(n, dim=0),) + tuple(args[1:])

        handle = self.layers[0].register_forward_pre_hook(repeat)
        try:
            out = self.model.logits(x)
        except RuntimeError:
            return None
        finally:
            handle.remove()
        return self._probs(out) if out.shape[0] == n * x.shape[0] else None

    def __call__(self, tile: np.ndarray, weights=None, use_prediction=False, index: int = 0) -> np.ndarray:
        x = self.model.to_tensor(tile[None])
        devices = [self.model.device.index or 0] if self.model.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            torch.manual_seed(self.seed + index)
            for layer in self.layers:
                layer.train(True)
            try:
                probs = self._replicated(x) if self._fast else None
                if probs is None:
                    self._fast = False
                    probs = torch.cat([self._probs(self.model.logits(x)) for _ in range(self.samples)])
            finally:
                for layer in self.layers:
                    layer.train(False)
        m1 = probs.mean(0)
        m2 = (probs * probs).mean(0)
        return torch.stack([m1, m2]).cpu().numpy().astype(np.float32)
