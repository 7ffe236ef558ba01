"""The loaded tumour segmentation model: uint8 RGB batches in, probability maps out.

:class:`Segmenter` is what the inference engine, the backend and the public API hand
around. It takes uint8 RGB batches and returns float32 class probabilities, so callers
never touch normalisation, devices or dtypes. It is a
:class:`~napari_histoseg.models.loaded.LoadedModel` of task ``"segmentation"``.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_histoseg.models.checkpoint import ModelMeta
from napari_histoseg.models.loaded import LoadedModel
from napari_histoseg.models.registry import build_model


def predicted_mask(logits: torch.Tensor, channel: int) -> torch.Tensor:
    """Boolean (N, h, w) of the pixels predicted as ``channel`` (p >= 0.5 or argmax)."""
    if logits.shape[1] == 1:
        return logits[:, 0] >= 0
    return logits.argmax(1) == channel


class Segmenter(LoadedModel):
    """A segmentation network plus the metadata needed to use it.

    Parameters are those of :class:`~napari_histoseg.models.loaded.LoadedModel`; half
    precision is on by default on cuda. Any module mapping (N, 3, H, W) to (N, C, H, W)
    logits is accepted.
    """

    task = "segmentation"
    supports_half = True
    supports_bf16 = True   # held-out Dice within 0.005 of fp32 (BENCHMARKS.md › Inference)
    channels_last = True
    explainable = True

    @classmethod
    def random(cls, arch: str = "unet-mobilenet_v2", seed: int = 0, device="cpu", **kwargs):
        """A randomly initialised model (for tests and benchmarks only)."""
        torch.manual_seed(seed)
        meta = ModelMeta(arch=arch, arch_kwargs={"classes": 1, **kwargs}, name=f"random {arch}")
        return cls(build_model(arch, **meta.arch_kwargs), meta, device=device, source="random")

    @property
    def temperature(self) -> float:
        """The calibration temperature the checkpoint carries (``preprocessing.temperature``,
        fitted on validation tiles), 1.0 when it has none."""
        t = (self.meta.preprocessing or {}).get("temperature") or 1.0
        return float(t) if np.isfinite(t) and t > 0 else 1.0

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits -> probabilities (calibrated by :attr:`temperature`): sigmoid for one
        channel, softmax for several."""
        if self.temperature != 1.0:
            logits = logits / self.temperature
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
        with self.autocast():   # float16 on cuda, bfloat16 for engine torch-bf16, else nothing
            out = self.module(x)
        return self.activate(out.float()).cpu().numpy()

    def explain_target(self, logits, channel, weights, use_prediction):
        """The ``channel`` logit summed over the pixels weighted by ``weights`` (and, with
        ``use_prediction``, predicted as ``channel``)."""
        mask = weights
        if use_prediction:
            mask = weights * predicted_mask(logits.detach(), channel)
        return (logits[:, channel] * mask).sum(dim=(1, 2))


#: Inference engines: ``auto`` (the fastest checked for this machine, see :func:`choose_engine`),
#: eager PyTorch (fp16 on cuda, fp32 elsewhere), PyTorch under bfloat16 autocast, ONNX Runtime
#: fp32 and int8 (CPU).
ENGINES = ("auto", "torch", "torch-bf16", "onnx", "onnx-int8")


def choose_engine(device="auto") -> tuple[str, str]:
    """What ``"auto"`` runs in PyTorch on ``device``, and why: ``"torch-bf16"`` on a CPU that
    computes bfloat16 in hardware (about twice float32's speed, held-out Dice within 0.005), else
    ``"torch"`` (float32 on other CPUs, float16 on cuda). :func:`load_segmenter` prefers
    ONNX Runtime int8 to either where :func:`~napari_histoseg.models.onnx.checked_int8` says
    the model's int8 part was measured and the CPU has VNNI."""
    from napari_histoseg.core.device import torch_precision

    precision, reason = torch_precision(device, bf16_checked=Segmenter.supports_bf16)
    return ("torch-bf16" if precision == "bf16" else "torch"), reason


def _auto_int8(model):
    """The ONNX int8 twin of ``model`` where ``"auto"`` should run it (a CPU with int8 dot
    products, ONNX Runtime installed, the model's int8 part measured), else None. A failed
    export or quantisation (no writable cache, ...) leaves PyTorch in charge."""
    from napari_histoseg.core.device import cpu_has_vnni

    if model.device.type != "cpu" or not cpu_has_vnni():
        return None
    from napari_histoseg.models.onnx import OnnxSegmenter, checked_int8

    checked = checked_int8(model)
    if checked is None:
        return None
    try:
        return OnnxSegmenter(model, precision="int8", checked=checked)
    except (ImportError, OSError, RuntimeError, ValueError) as e:
        model.engine_reason += f"; not ONNX Runtime int8: {e}"
        return None


def load_segmenter(path=None, device: str = "auto", engine: str = "torch"):
    """A :class:`Segmenter` (``engine="torch"``, ``"torch-bf16"``) or its ONNX Runtime twin
    (``"onnx"`` fp32, ``"onnx-int8"`` quantised) from a checkpoint path, or the bundled default
    model for None. ``"auto"`` picks the fastest engine measured to keep the held-out Dice on
    this machine: ONNX Runtime int8 (its checked part) on a CPU with VNNI, else PyTorch bfloat16
    on a CPU with bfloat16 instructions, else PyTorch (:func:`choose_engine`); the choice is in
    the model's ``engine`` and ``engine_reason``. See :func:`napari_histoseg.load_model`."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    reason, auto = f"engine {engine!r} asked for", engine == "auto"
    if auto:
        engine, reason = choose_engine(device)
    precision = "bf16" if engine == "torch-bf16" else None
    model = (Segmenter.bundled(device=device, precision=precision) if path is None
             else Segmenter.from_checkpoint(path, device=device, precision=precision))
    model.engine, model.engine_reason = engine, reason
    if auto:
        int8 = _auto_int8(model)
        if int8 is not None:
            int8.engine = "onnx-int8"
            int8.engine_reason = ("this CPU has int8 dot products (VNNI): ONNX Runtime int8 on the part of the "
                                  "network measured to keep the Dice")
            return int8
    if engine in ("onnx", "onnx-int8"):
        from napari_histoseg.models.onnx import OnnxSegmenter

        model = OnnxSegmenter(model, precision="int8" if engine == "onnx-int8" else "fp32")
        model.engine, model.engine_reason = engine, reason
    return model
