"""Run a :class:`Segmenter` through ONNX Runtime on the CPU.

ONNX Runtime fuses convolutions with batch norm and activations and runs them with its
own CPU kernels, which is often faster than eager PyTorch for inference. The network is
exported once per checkpoint into a cache folder keyed by a hash of its weights.
Requires the ``onnx`` extra (``pip install napari-histoseg[onnx]``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import torch


def _cache_dir() -> Path:
    base = os.environ.get("HISTOSEG_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "napari-histoseg"
    )
    path = Path(base) / "onnx"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _weights_hash(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in module.state_dict().items():
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


class OnnxSegmenter:
    """Same interface as :class:`Segmenter` (``predict``, ``meta``, ``out_channels``),
    running on ONNX Runtime's CPU execution provider."""

    def __init__(self, segmenter, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise ImportError(
                "the ONNX engine needs onnxruntime: pip install 'napari-histoseg[onnx]'"
            ) from e
        self.torch_model = segmenter
        self.meta = segmenter.meta
        self.source = segmenter.source
        self.device = torch.device("cpu")
        module = segmenter.module.float().cpu().eval()
        path = _cache_dir() / f"{segmenter.meta.arch}-{_weights_hash(module)}.onnx"
        if not path.is_file():
            tmp = path.with_suffix(".tmp")
            dummy = torch.zeros(1, 3, 256, 256)
            torch.onnx.export(
                module, (dummy,), str(tmp), input_names=["x"], output_names=["logits"],
                dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
                opset_version=17, dynamo=False,
            )
            tmp.replace(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self._mean = np.asarray(self.meta.mean, np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(self.meta.std, np.float32).reshape(1, 3, 1, 1)

    @property
    def out_channels(self) -> int:
        return self.meta.out_channels

    @property
    def description(self) -> str:
        return self.torch_model.description + " [ONNX Runtime]"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities float32 (N, C, H, W) for uint8 RGB (N, H, W, 3)."""
        x = (batch.transpose(0, 3, 1, 2).astype(np.float32) - self._mean) / self._std
        (logits,) = self.session.run(None, {"x": np.ascontiguousarray(x)})
        t = torch.from_numpy(logits)
        return self.torch_model.activate(t).numpy()
