"""Training settings as one declared configuration per task (no torch here: the CLI parser is
built from these classes on every call of ``histoseg``).

:class:`TrainConfig` holds what the shared loop (:func:`napari_histoseg.training.loop.fit`) uses;
each task subclasses it with its own defaults and its own fields. A field's metadata gives its
command-line flag and help; ``histoseg train`` offers the union of the tasks' flags and refuses
any flag that the chosen task's configuration does not have.

Example
-------
>>> from napari_histoseg.tumour.config import TumourConfig
>>> cfg = TumourConfig(epochs=2)
>>> "freeze_bn" in TumourConfig.field_names(), cfg.batch_size
(True, 8)
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Optional

OPTIMIZERS = ("adam", "adamw", "sgd-adam")


def option(default, help: str, *, type=None, flag: Optional[str] = None, choices=None, action=None,
           metavar: Optional[str] = None, cli: bool = True):
    """A config field with its command-line flag (``--name-with-dashes`` unless ``flag``)."""
    meta = {"help": help, "type": type, "flag": flag, "choices": choices, "action": action,
            "metavar": metavar, "cli": cli}
    if isinstance(default, (dict, list)):
        value = default
        return dataclasses.field(default_factory=lambda: type_copy(value), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def type_copy(value):
    return json.loads(json.dumps(value))


def flag_of(f: dataclasses.Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


@dataclass
class TrainConfig:
    """What the shared training loop honours, for every task."""

    epochs: int = option(100, "maximum epochs")
    steps_per_epoch: Optional[int] = option(None, "batches per epoch (default: the task's)", type=int)
    lr: float = option(1e-3, "learning rate (peak of the cosine schedule)")
    batch_size: int = option(8, "samples per batch")
    patch_size: int = option(256, "training patch / crop size in px")
    optimizer: str = option("adam", "adam, adamw (weight decay 1e-4) or sgd-adam (SGD with momentum, "
                            "lr x 10, for --sgd-epochs, then Adam)", choices=OPTIMIZERS)
    sgd_epochs: int = option(10, "SGD epochs before Adam (sgd-adam)")
    lr_floor: float = option(0.01, "the cosine ends at lr x this", cli=False)
    warmup: int = option(0, "steps of linear learning-rate warm-up", cli=False)
    clip_grad: Optional[float] = option(None, "clip the gradient norm to this", cli=False)
    patience: int = option(10, "early stopping: validations without a better score")
    seed: int = option(0, "random seed (data split, sampling, initialisation)")
    threads: Optional[int] = option(None, "torch CPU threads", type=int)
    time_budget: Optional[float] = option(None, "stop after MIN minutes (counting earlier runs of a "
                                          "resumed job)", type=float, metavar="MIN")
    val_every: Optional[float] = option(None, "validate at most every MIN minutes (default: every epoch)",
                                        type=float, cli=False)
    freeze_bn: Optional[bool] = option(None, "keep BatchNorm running statistics fixed while training "
                                       "(default: the task's)", action="bool")
    resume: bool = option(False, "continue from OUTPUT's .state.safetensors", action="store_true")
    init_encoder: Optional[str] = option(None, "safetensors encoder weights to start from", type=str)
    init_checkpoint: Optional[str] = option(None, "fine-tune this checkpoint of the task ('bundled': the "
                                            "bundled model) instead of training from scratch; its architecture replaces --arch",
                                            type=str, metavar="PATH")
    name: str = option("histoseg-model", "model name written into the checkpoint")
    model_version: str = option("0", "model version written into the checkpoint")
    half_weights: bool = option(False, "store the checkpoint's weights as float16", action="store_true")

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)}

    @classmethod
    def cli_fields(cls) -> list[dataclasses.Field]:
        return [f for f in dataclasses.fields(cls) if f.metadata.get("cli", True)]

    def replace(self, **changes) -> "TrainConfig":
        unknown = set(changes) - self.field_names()
        if unknown:
            raise TypeError(f"{type(self).__name__} has no setting {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)
