"""Settings of tumour-segmentation training (``histoseg train --task segmentation``); no torch."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Optional

from napari_histoseg.io.checks import float_arg, int_arg
from napari_histoseg.training.config import TrainConfig, option

#: µm per pixel of the shared training folders whose tiles record none, estimated from the
#: size of lymphocyte and tumour nuclei against MoNuSeg (0.25 µm/px, recorded): BCSS was
#: annotated at 0.25 µm/px and its nuclei match; camelyon's lymphocyte nuclei are about 6.5 px
#: across against about 19 px in MoNuSeg, so about 0.75 µm/px (± 30 %). Unlabelled folders:
#: BreakHis at 100x about 0.5 µm/px (same comparison).
DATA_MPP = {"camelyon": 0.75, "bcss": 0.25, "breakhis": 0.5}


@dataclass
class TumourConfig(TrainConfig):
    """Defaults: what the bundled tumour model was trained with (MODEL_CARD.md)."""

    arch: str = option("unet-mobilenet_v2", "registered architecture")
    arch_kwargs: dict = option({}, "JSON of extra architecture arguments", type=json.loads)
    loss: str = option("soft", "Dice term: soft Dice or generalised Dice, plus class-weighted cross-entropy",
                       choices=("soft", "generalized"))
    val_fraction: float = option(0.15, "fraction of the train tiles held out by group for validation")
    name: str = option("histoseg-model", "model name written into the checkpoint")
    mpp: Optional[float] = option(0.5, "µm per pixel the model is trained (and later run) at: every tile is "
                                  "resampled to it from its own mpp or --data-mpp (0: no resampling)",
                                  type=float_arg(0, 20), flag="--train-mpp", metavar="MPP")
    data_mpp: dict = option(dict(DATA_MPP), "JSON {folder name: µm per pixel} for folders whose tiles "
                            "record no mpp", type=json.loads, metavar="JSON")
    augment: str = option("heavy", "augmentation: heavy (stain vectors, normalisation, gamma, blur, JPEG) "
                          "or light (geometry, HED jitter, brightness/contrast)", choices=("heavy", "light"))
    background: float = option(0.08, "fraction of training patches replaced by synthetic glass or fat "
                               "(all not tumour)", type=float_arg(0, 0.9))
    folder_weights: dict = option({}, "JSON {folder name: weight}: a tile of that folder is drawn this many times "
                                  "as often as a tile of an unnamed folder (weight 1)", type=json.loads,
                                  metavar="JSON")
    unlabelled: list = option([], "JSON list of folders of unlabelled H&E (any dataset.json with images/) "
                              "for the colour-consistency term", type=json.loads, metavar="JSON")
    consistency: float = option(0.0, "weight of the consistency term: the prediction on a heavily "
                                "re-stained view follows the prediction on the plain view", type=float_arg(0, 10))
    unlabelled_batch: int = option(2, "unlabelled patches per step (each seen twice)", type=int_arg(1, 64))
    calibrate: bool = option(True, "fit a temperature on the validation tiles after training",
                             action="bool")
    device: str = option("cpu", "where the network trains: cpu, cuda, or auto (cuda where there is one)",
                         choices=("cpu", "cuda", "auto"), flag="--train-device")
    workers: int = option(0, "processes that cut and augment the patches, one batch ahead (0: the training "
                          "process itself; a GPU wants several)", type=int_arg(0, 64))
