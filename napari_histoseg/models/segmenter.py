"""A loaded model ready to predict: normalisation, device, precision and engine.

:class:`Segmenter` is what the inference engine, the backend and the public API hand
around. It takes uint8 RGB batches and returns float32 class probabilities, so callers
never touch normalisation, devices or dtypes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from napari_histoseg.core.device import resolve_device
from napari_histoseg.models.checkpoint import ModelMeta, load_checkpoint
from napari_histoseg.models.registry import build_model


class Segmenter:
    """A network plus the metadata needed to use it.

    Parameters
    ----------
    module : torch.nn.Module
        The network; it is put in eval mode on ``device``.
    meta : ModelMeta
        Normalisation, classes, tile size, ...
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"mps"``.
    half : bool or None
        Half precision; by default on for cuda only.
    source : str
        Where the model came from (a path, ``"bundled"``, ``"random"``), for display.
    """

    def __init__(self, module: nn.Module, meta: ModelMeta, device="auto", half=None, source=""):
        self.device = resolve_device(device)
        self.half = (self.device.type == "cuda") if half is None else bool(half)
        self.meta = meta
        self.source = source
        memory_format = torch.channels_last if self.device.type != "mps" else torch.contiguous_format
        self.module = module.eval().to(self.device, memory_format=memory_format)
        self._memory_format = memory_format
        mean = torch.tensor(meta.mean, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(meta.std, dtype=torch.float32).view(1, 3, 1, 1)
        self._mean, self._std = mean.to(self.device), std.to(self.device)

    @classmethod
    def from_checkpoint(cls, path: str | Path, device="auto", half=None) -> "Segmenter":
        """Load a safetensors checkpoint (see :func:`load_checkpoint`)."""
        from napari_histoseg.models.checkpoint import CheckpointError, read_meta

        meta = read_meta(path)  # the header only: refuse another task before loading weights
        if meta.task != "segmentation":
            use = {"classification": "classify with napari_histoseg.classify / `histoseg classify`",
                   "instances": "find nuclei with napari_histoseg.detect_nuclei / `histoseg nuclei`"}
            kind = {"classification": "benign/malignant classifier", "instances": "nucleus detection model"}
            raise CheckpointError(
                f"{path}: this is a {kind.get(meta.task, repr(meta.task) + ' model')} ({meta.name}), "
                f"not a tumour segmentation model; {use.get(meta.task, 'it cannot segment tumour')}"
            )
        module, meta = load_checkpoint(path)
        return cls(module, meta, device=device, half=half, source=str(path))

    @classmethod
    def random(cls, arch: str = "unet-mobilenet_v2", seed: int = 0, device="cpu", **kwargs):
        """A randomly initialised model (for tests and benchmarks only)."""
        torch.manual_seed(seed)
        meta = ModelMeta(arch=arch, arch_kwargs={"classes": 1, **kwargs}, name=f"random {arch}")
        return cls(build_model(arch, **meta.arch_kwargs), meta, device=device, source="random")

    @property
    def out_channels(self) -> int:
        return self.meta.out_channels

    @property
    def description(self) -> str:
        return f"{self.meta.name} v{self.meta.model_version} ({self.meta.arch})"

    def to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> normalised float tensor (N, 3, H, W) on the device."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        x = x.permute(0, 3, 1, 2).float()
        x = (x - self._mean) / self._std
        return x.contiguous(memory_format=self._memory_format)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Raw network output for a normalised tensor (gradients allowed)."""
        return self.module(x)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> probabilities: sigmoid for one channel, softmax for several."""
        if logits.shape[1] == 1:
            return torch.sigmoid(logits)
        return torch.softmax(logits, dim=1)

    @torch.inference_mode()
    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities, float32 (N, C, H, W), for a uint8 RGB batch (N, H, W, 3).

        H and W should be multiples of 32 (the encoder's stride); the tiled engine
        guarantees that.
        """
        x = self.to_tensor(batch)
        if self.half:
            with torch.autocast(device_type=self.device.type, dtype=torch.float16):
                out = self.module(x)
        else:
            out = self.module(x)
        return self.activate(out.float()).cpu().numpy()


def load_segmenter(path=None, device: str = "auto", engine: str = "torch"):
    """A :class:`Segmenter` (``engine="torch"``) or its ONNX Runtime twin (``"onnx"``) from a checkpoint
    path, or the bundled default model for None; see :func:`napari_histoseg.load_model`."""
    from napari_histoseg.models.bundled import bundled_model_path

    model = Segmenter.from_checkpoint(path if path is not None else bundled_model_path(), device=device)
    if path is None:
        model.source = "bundled"
    if engine == "onnx":
        from napari_histoseg.models.onnx import OnnxSegmenter

        return OnnxSegmenter(model)
    if engine != "torch":
        raise ValueError(f"engine must be 'torch' or 'onnx', not {engine!r}")
    return model
