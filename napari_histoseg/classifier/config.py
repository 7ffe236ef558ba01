"""Settings of benign/malignant classifier training (``histoseg train --task classification``); no torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from napari_histoseg.io.checks import float_arg
from napari_histoseg.training.config import TrainConfig, option


@dataclass
class ClassifierConfig(TrainConfig):
    """Defaults: what the bundled classifier was trained with (CLASSIFIER_MODEL_CARD.md)."""

    arch: str = option("classifier-mobilenet_v2", "registered architecture (a classifier-* one)")
    arch_kwargs: dict = option({}, "JSON of extra architecture arguments", type=json.loads)
    batch_size: int = option(16, "crops per batch")
    patch_size: int = option(192, "training crop size in px (also the inference tile)")
    lr: float = option(3e-4, "learning rate (peak of the cosine schedule)")
    optimizer: str = option("adamw", "adam, adamw or sgd-adam", choices=("adam", "adamw", "sgd-adam"))
    val_fraction: float = option(0.2, "fraction of the patients held out (by label) for validation")
    patience: int = option(12, "early stopping: epochs without a better validation score")
    scale: float = option(0.5, "classification: resize the training images by F (0.5: BreakHis 100X "
                          "0.197 µm/px is read at 0.394 µm/px)", flag="--cls-scale", metavar="F")
    dropout: float = option(0.2, "classification: dropout before the head", flag="--cls-dropout")
    ema: float = option(0.0, "classification: validate and keep a moving average of the weights "
                        "(the bundled model: 0.99)", flag="--cls-ema", metavar="DECAY")
    mpp: Optional[float] = option(None, "classification: µm/px of the training images (default: from "
                                  "BreakHis magnification)", type=float, flag="--cls-mpp", metavar="UM")
    fine_scale: float = option(0.0, "classification: also train at a second, finer scale: the training images "
                               "enlarged by F with optical blur (2: BreakHis 100X read at 0.0985 µm/px, the "
                               "scale of 200X-400X fields); 0: one scale", flag="--cls-fine-scale", metavar="F",
                               type=float_arg(lo=0, hi=8))
    fine_share: float = option(0.4, "classification: share of the training crops at the fine scale",
                               flag="--cls-fine-share", metavar="P",
                               type=float_arg(lo=0, hi=1))
    hed_sigma: float = option(0.08, "classification: HED stain jitter (each stain scaled by U(1-S, 1+S))",
                              flag="--cls-hed-sigma", metavar="S",
                              type=float_arg(lo=0, hi=0.5))
    name: str = option("histoseg-classifier", "model name written into the checkpoint")
