"""One base for a loaded model: task check, device, precision, metadata.

:class:`LoadedModel` is a network plus its :class:`~napari_histoseg.models.checkpoint.ModelMeta`,
on a device, in eval mode. Each task's model subclasses it and sets :attr:`LoadedModel.task`:

* :class:`~napari_histoseg.models.segmenter.Segmenter` (``segmentation``): ``predict``
  gives probability maps;
* :class:`~napari_histoseg.models.detector.NucleusDetector` (``instances``): ``detect_batch``
  gives boxes, scores and masks;
* :class:`~napari_histoseg.models.tile_classifier.Classifier` (``classification``): the
  calibration ``temperature`` and the ``tile`` size.

:meth:`LoadedModel.from_checkpoint` reads the header first and refuses a checkpoint of
another task before any weights are read, with a message naming both tasks and what to
use instead. Explanations ask the model, never its shape: :meth:`~LoadedModel.gradcam_layer`,
:meth:`~LoadedModel.explain_target`, :meth:`~LoadedModel.private_copy`.
"""

from __future__ import annotations

import contextlib
import copy
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn as nn

from napari_histoseg.core.device import resolve_device
from napari_histoseg.models import architectures  # noqa: F401  (every network registered for the subclasses)
from napari_histoseg.models.checkpoint import CheckpointError, ModelMeta, load_checkpoint, read_meta

#: Inference precisions: float32, float16 autocast (cuda), bfloat16 autocast.
PRECISIONS = ("fp32", "fp16", "bf16")

#: What a model of each task is called, and how to use one.
TASK_KINDS = {
    "segmentation": ("tumour segmentation model", "segment with napari_histoseg.segment / `histoseg segment`"),
    "instances": ("nucleus detection model", "find nuclei with napari_histoseg.detect_nuclei / `histoseg nuclei`"),
    "classification": ("benign/malignant classifier", "classify with napari_histoseg.classify / `histoseg classify`"),
}


def check_task(meta: ModelMeta, task: str, source="") -> None:
    """:class:`CheckpointError` unless ``meta`` is a model of ``task``; the message names both."""
    if meta.task == task:
        return
    kind, use = TASK_KINDS.get(meta.task, (f"{meta.task!r} model", "this install has no use for it"))
    raise CheckpointError(
        f"{source or meta.name}: this is a {kind} ({meta.name}; task {meta.task!r}), not a "
        f"{TASK_KINDS.get(task, (repr(task) + ' model',))[0]} (task {task!r}); {use}"
    )


class LoadedModel:
    """A network plus the metadata needed to use it, on a device, in eval mode.

    Parameters
    ----------
    module : torch.nn.Module
        The network.
    meta : ModelMeta
        Task, normalisation, classes, tile size, mpp, ...; its ``task`` must be the class's.
    device : str or torch.device
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    half : bool or None
        Half precision (float16 autocast) where the class supports it; None: on for cuda only.
    source : str
        Where the model came from (a path, ``"bundled"``, ``"random"``), for display.
    precision : {"fp32", "fp16", "bf16"}, optional
        Overrides ``half``: ``"bf16"`` runs inference under bfloat16 autocast (classes with
        :attr:`supports_bf16`; fast on CPUs with AVX512-BF16 or AMX, see
        :func:`~napari_histoseg.core.device.cpu_has_bf16`). Gradients (explanations) always
        run in float32 through :meth:`logits`.
    """

    #: The ``ModelMeta.task`` this class serves.
    task: ClassVar[str] = ""
    #: Whether inference may run in float16 (autocast); others always run float32.
    supports_half: ClassVar[bool] = False
    #: Whether inference may run under bfloat16 autocast (measured not to move its held-out scores).
    supports_bf16: ClassVar[bool] = False
    #: Channels-last memory layout for the network (convolutional nets on cuda/cpu).
    channels_last: ClassVar[bool] = False
    #: Whether :mod:`napari_histoseg.explanations` can explain it (Grad-CAM, SHAP, MC dropout).
    explainable: ClassVar[bool] = False
    #: The engine it runs on and why it was chosen (set by the loader, e.g. ``load_segmenter``).
    engine: str = "torch"
    engine_reason: str = ""

    def __init__(self, module: nn.Module, meta: ModelMeta, device="auto", half=None, source: str = "",
                 precision: str | None = None):
        check_task(meta, self.task, source)
        self.device = resolve_device(device)
        if precision is not None and precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        if precision == "bf16" and not self.supports_bf16:
            raise ValueError(f"a {TASK_KINDS[self.task][0]} has not been checked in bfloat16; use fp32")
        if precision is not None:
            half = precision == "fp16"
        if half and not self.supports_half:
            raise ValueError(f"a {TASK_KINDS[self.task][0]} runs in float32 only; pass half=False")
        half = (self.supports_half and self.device.type == "cuda") if half is None else bool(half)
        self.precision = "fp16" if half else (precision or "fp32")
        self.meta = meta
        self.source = source
        fmt = torch.channels_last if self.channels_last and self.device.type != "mps" else torch.contiguous_format
        self._memory_format = fmt
        self.module = module.eval().float().to(self.device, memory_format=fmt)
        mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1)
        self._mean, self._std = mean.to(self.device), std.to(self.device)

    # -- loading ---------------------------------------------------------------------------
    @classmethod
    def from_checkpoint(cls, path: str | Path, device="auto", half=None, source: str | None = None,
                        precision: str | None = None):
        """Load a safetensors checkpoint of this class's task (see :func:`load_checkpoint`).

        The header is read first: a checkpoint of another task is refused before its
        weights are read (:class:`CheckpointError` naming both tasks).
        """
        check_task(read_meta(path), cls.task, str(path))
        module, meta = load_checkpoint(path)
        return cls(module, meta, device=device, half=half, source=str(path) if source is None else source,
                   precision=precision)

    @classmethod
    def bundled(cls, device="auto", half=None, precision: str | None = None):
        """The checkpoint of this task that ships with the package (``source == "bundled"``)."""
        from napari_histoseg.models.bundled import BUNDLED, bundled_path

        return cls.from_checkpoint(bundled_path(cls.task), device=device, half=half, source=BUNDLED,
                                   precision=precision)

    @property
    def half(self) -> bool:
        """Whether inference runs under float16 autocast (``precision == "fp16"``); setting it
        switches between float16 and float32."""
        return self.precision == "fp16"

    @half.setter
    def half(self, value: bool) -> None:
        if value and not self.supports_half:
            raise ValueError(f"a {TASK_KINDS[self.task][0]} runs in float32 only")
        self.precision = "fp16" if value else "fp32"

    # -- what it is ------------------------------------------------------------------------
    @property
    def out_channels(self) -> int:
        return self.meta.out_channels

    @property
    def class_names(self) -> list[str]:
        """Class names by output index (``meta.classes``)."""
        return [self.meta.classes[k] for k in sorted(self.meta.classes, key=int)]

    @property
    def description(self) -> str:
        extra = "" if self.precision == "fp32" else f" [PyTorch {self.precision}]"
        return f"{self.meta.name} v{self.meta.model_version} ({self.meta.arch}){extra}"

    @property
    def torch_model(self) -> "LoadedModel":
        """The torch model behind this one: itself (an ONNX twin returns its torch model)."""
        return self

    # -- running ---------------------------------------------------------------------------
    def to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised float tensor (N, 3, H, W) on the device:
        ``(rgb - meta.mean) / meta.std``."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        x = x.permute(0, 3, 1, 2).float()
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=self._memory_format)

    def autocast(self):
        """The context inference runs in: float16 or bfloat16 autocast, or nothing (fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.float16 if self.precision == "fp16" else torch.bfloat16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw network output for a normalised tensor (gradients allowed)."""
        return self.module(x)

    # -- what explanations ask ---------------------------------------------------------------
    def gradcam_layer(self) -> str:
        """Dotted name of the default Grad-CAM layer in :attr:`module` (the architecture's
        ``gradcam_layer``, else the last block at the coarsest stride)."""
        from napari_histoseg.models.layers import default_layer

        return default_layer(self.module, self.device)

    def explain_target(self, logits: torch.Tensor, channel: int, weights: torch.Tensor,
                       use_prediction: bool) -> torch.Tensor:
        """The scalar per sample (N,) that attribution methods explain, from ``logits`` of a
        tile batch; ``weights`` (h, w) weigh its pixels, ``use_prediction`` restricts them to
        the pixels predicted as ``channel``."""
        raise NotImplementedError(f"a {TASK_KINDS[self.task][0]} has no explanation target")

    def private_copy(self) -> "LoadedModel":
        """This model with its own copy of the network (hooks and dropout switched on in it
        leave a run on this model in another thread untouched)."""
        twin = copy.copy(self)
        twin.module = copy.deepcopy(self.module).eval()
        return twin
