"""Settings of nucleus-detector training (``histoseg train --task instances``); no torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from napari_histoseg.io.checks import int_arg
from napari_histoseg.training.config import TrainConfig, option


def _ids(text: str) -> list[str]:
    return [s for s in text.split(",") if s]


@dataclass
class NucleiConfig(TrainConfig):
    """Defaults: what the bundled nucleus model was trained with (NUCLEI_MODEL_CARD.md): AdamW,
    100 warm-up steps, a cosine to 5 % of lr, gradient norm clipped at 10, BatchNorm frozen
    (batches of two patches are too small to estimate its statistics), validation every 8 min."""

    arch: str = option("maskrcnn-mobilenet_v2", "registered architecture (a maskrcnn-* one)")
    arch_kwargs: dict = option({}, "JSON of extra architecture arguments", type=json.loads)
    patch_size: int = option(256, "training patch size in px")
    batch_size: int = option(2, "patches per batch")
    lr: float = option(2e-4, "learning rate (peak of the cosine schedule)")
    optimizer: str = option("adamw", "adam, adamw or sgd-adam", choices=("adam", "adamw", "sgd-adam"))
    lr_floor: float = option(0.05, "the cosine ends at lr x this", cli=False)
    warmup: int = option(100, "instances: steps of linear learning-rate warm-up (a fine-tune from a trained "
                              "detector wants fewer: v2 took 30)", type=int_arg(0, 1_000_000),
                         flag="--nuclei-warmup", metavar="STEPS")
    clip_grad: Optional[float] = option(10.0, "clip the gradient norm to this", cli=False)
    patience: int = option(1000, "early stopping: validations without a better (AJI + PQ) / 2")
    val_every: Optional[float] = option(8.0, "instances: validate on the held-out tiles every MIN minutes",
                                        type=float, flag="--nuclei-val-every", metavar="MIN")
    val_ids: Optional[list] = option(None, "instances: train tiles held out for validation (default: a "
                                     "breast tile and one of another organ)", type=_ids,
                                     flag="--nuclei-val-ids", metavar="ID,ID")
    scale_min: float = option(0.8, "instances: smallest zoom of a training patch (log-uniform; 1 = the model's mpp)",
                              flag="--nuclei-scale-min")
    scale_max: float = option(1.25, "instances: largest zoom (above 1 nuclei grow: large tumour nuclei)",
                              flag="--nuclei-scale-max")
    breast_weight: float = option(1.0, "instances: breast tiles are drawn this many times as often (per pixel)",
                                  flag="--nuclei-breast-weight")
    merged_folders: list = option([], "instances: folders (by name) whose labels merge touching nuclei; their "
                                  "instances of solidity < 0.85 are not trained on", type=_ids,
                                  flag="--nuclei-merged-folders", metavar="NAME,NAME")
    augment: str = option("light", "instances: colour augmentation: light (HED jitter of 0.05, v1's) or stain "
                          "(another lab's stain: HED jitter of 0.3, moved stain vectors, gamma, JPEG)",
                          choices=("light", "stain"),
                          flag="--nuclei-augment")
    model_mpp: float = option(0.25, "instances: mpp the model works at (MoNuSeg's 40x)", flag="--nuclei-mpp")
    name: str = option("histoseg-nuclei", "model name written into the checkpoint")
