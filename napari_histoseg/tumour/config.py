"""Settings of tumour-segmentation training (``histoseg train --task segmentation``); no torch."""

from __future__ import annotations

import json
from dataclasses import dataclass

from napari_histoseg.training.config import TrainConfig, option


@dataclass
class TumourConfig(TrainConfig):
    """Defaults: what the bundled tumour model was trained with (MODEL_CARD.md)."""

    arch: str = option("unet-mobilenet_v2", "registered architecture")
    arch_kwargs: dict = option({}, "JSON of extra architecture arguments", type=json.loads)
    loss: str = option("soft", "Dice term: soft Dice or generalised Dice, plus class-weighted cross-entropy",
                       choices=("soft", "generalized"))
    val_fraction: float = option(0.15, "fraction of the train tiles held out by group for validation")
    name: str = option("histoseg-model", "model name written into the checkpoint")
