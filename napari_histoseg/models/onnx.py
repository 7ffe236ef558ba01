"""Run a :class:`Segmenter` through ONNX Runtime on the CPU, in fp32 or int8.

ONNX Runtime fuses convolutions with batch norm and activations and runs them with its own CPU
kernels. ``precision="int8"`` quantises the network statically (QDQ format, per-channel int8
weights, uint8 activations whose ranges were calibrated on H&E tiles), which on CPUs with
AVX-512 VNNI or AVX-VNNI runs several times faster than fp32; the segmentation head stays in
fp32. Where the checkpoint's ``NAME.int8.json`` names the part of the graph to quantise
(``int8_nodes``, chosen by measuring each block's int8 error), only that part is int8: for the
bundled U-Net the decoder and the deep encoder, which hold most of the arithmetic, while the
first encoder stages, whose int8 error moved the map most, stay fp32 (BENCHMARKS.md › Inference). The network is exported once per checkpoint (and quantised once per calibration
set) into a cache folder keyed by a hash of its weights. Requires the ``onnx`` extra
(``pip install napari-histoseg[onnx]``).
"""

from __future__ import annotations

import copy
import hashlib
import os
import threading
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch

PRECISIONS = ("fp32", "int8")
CALIBRATION_TILE = 256


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


def _export(module: torch.nn.Module, path: Path) -> None:
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    dummy = torch.zeros(1, 3, 256, 256)
    torch.onnx.export(
        module, (dummy,), str(tmp), input_names=["x"], output_names=["logits"],
        dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}},
        opset_version=17, dynamo=False,
    )
    tmp.replace(path)


def sample_calibration_tiles(tile: int = CALIBRATION_TILE) -> list[np.ndarray]:
    """uint8 RGB tiles cut from the images bundled with the plugin (the default calibration set)."""
    from PIL import Image

    here = Path(__file__).resolve().parent.parent / "sample_data"
    tiles = []
    for name in ("tiatoolbox_target_image.png", "stardist_histo.jpg"):
        rgb = np.asarray(Image.open(here / name).convert("RGB"))
        for y in range(0, rgb.shape[0] - tile + 1, tile):
            for x in range(0, rgb.shape[1] - tile + 1, tile):
                tiles.append(rgb[y:y + tile, x:x + tile])
    return tiles


def _reader(inputs: list[np.ndarray]):
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(inputs)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {"x": x}

    return Reader()


def collect_ranges(fp32: Path, inputs: list[np.ndarray]) -> dict[str, list[float]]:
    """Min and max of every float tensor of the network over ``inputs`` (normalised NCHW batches)."""
    import tempfile

    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    with tempfile.TemporaryDirectory(prefix="histoseg-calib-") as tmp:
        cal = create_calibrator(Path(fp32), None, augmented_model_path=str(Path(tmp) / "augmented.onnx"),
                                calibrate_method=CalibrationMethod.MinMax)
        cal.collect_data(_reader(inputs))
        data = cal.compute_data()
    return {k: [float(np.min(v.range_value[0])), float(np.max(v.range_value[1]))] for k, v in data.data.items()}


#: Operators quantised where ``int8_nodes`` names their part of the graph.
QUANTISED_OPS = ("Conv", "Add", "Concat", "Resize", "Clip", "Relu")


def _quantise(fp32: Path, out: Path, inputs: Optional[list[np.ndarray]] = None,
              ranges: Optional[dict] = None, int8_nodes: Optional[list[str]] = None) -> None:
    """Quantise ``fp32`` into ``out``: activation ranges from ``ranges`` (name -> [min, max]) or
    calibrated on ``inputs``. ``int8_nodes``: prefixes of the node names to quantise (the rest
    stays fp32); None: every node but the segmentation head."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import CalibrationMethod, TensorsData, save_tensors_data
    from onnxruntime.quantization.shape_inference import quant_pre_process

    tag = f".{os.getpid()}"
    pre, tmp, cache = (out.with_name(out.name + tag + ext) for ext in (".pre", ".tmp", ".ranges.json"))
    try:
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        graph = onnx.load(str(pre)).graph
        convs = [n.name for n in graph.node if n.op_type == "Conv"]
        kwargs = {"nodes_to_exclude": convs[-1:]}   # the segmentation head stays fp32
        if int8_nodes is not None:
            chosen = [n.name for n in graph.node if n.op_type in QUANTISED_OPS and n.name != convs[-1]
                      and any(n.name.startswith(p) for p in int8_nodes)]
            if not chosen:
                raise ValueError(f"no node of the network matches the int8 part {int8_nodes!r}")
            kwargs = {"nodes_to_quantize": chosen}
        if ranges is not None:
            save_tensors_data(TensorsData(CalibrationMethod.MinMax, {k: (np.float32(lo), np.float32(hi))
                                                                     for k, (lo, hi) in ranges.items()}), cache)
            kwargs["calibration_cache_path"] = str(cache)
        quantize_static(str(pre), str(tmp), None if ranges is not None else _reader(inputs),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, **kwargs)
        tmp.replace(out)
    finally:
        for p in (pre, tmp, cache):
            p.unlink(missing_ok=True)
        for p in out.parent.glob(out.name + "*.data"):
            p.unlink(missing_ok=True)


def ranges_path(source) -> Optional[Path]:
    """Where the int8 ranges of a checkpoint (a path, or ``"bundled"``) are kept: ``NAME.int8.json``."""
    from napari_histoseg.models.bundled import BUNDLED, bundled_path

    if not source:
        return None
    if str(source) == BUNDLED:
        try:
            source = bundled_path("segmentation")
        except Exception:  # noqa: BLE001 - no bundled file: no shipped ranges
            return None
    return Path(str(source)).with_suffix(".int8.json")


def shipped_int8(source, weights_hash: str) -> Optional[dict]:
    """What ships beside a checkpoint for its int8 engine (``NAME.int8.json``, written by
    tools/calibrate_int8.py on the training tiles), if it was measured on these weights:
    ``ranges`` (tensor -> [min, max]) and optionally ``int8_nodes`` (the prefixes of the node
    names quantised; the others, the layers whose int8 error moved the map, stay fp32)."""
    import json

    path = ranges_path(source)
    if path is None:
        return None
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("weights_hash") != weights_hash or not isinstance(data.get("ranges"), dict):
        return None
    nodes = data.get("int8_nodes")
    if nodes is not None and not (isinstance(nodes, list) and nodes and all(isinstance(n, str) for n in nodes)):
        nodes = None
    return {"ranges": data["ranges"], "int8_nodes": nodes, "int8_part": str(data.get("int8_part") or "")}


def shipped_ranges(source, weights_hash: str) -> Optional[dict]:
    """The activation ranges of :func:`shipped_int8`, or None."""
    found = shipped_int8(source, weights_hash)
    return None if found is None else found["ranges"]


def checked_int8(segmenter) -> Optional[dict]:
    """What :func:`shipped_int8` found for this model's weights where its int8 engine was measured
    to keep its accuracy (ONNX Runtime installed, a ``NAME.int8.json`` for these very weights that
    names the part to quantise: ``int8_nodes``; written by tools/calibrate_int8.py, checked on the
    held-out splits for the bundled model), with the weights' ``"weights_hash"``; else None.
    Pass it to :class:`OnnxSegmenter` as ``checked`` so the weights are hashed and the file read
    once per load."""
    import importlib.util

    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        return None
    path = ranges_path(segmenter.source)
    if path is None or not path.is_file():
        return None
    weights = _weights_hash(segmenter.module)
    found = shipped_int8(segmenter.source, weights)
    return {**found, "weights_hash": weights} if found and found["int8_nodes"] else None


def _reloadable(source) -> bool:
    from napari_histoseg.models.bundled import BUNDLED

    return bool(source) and (str(source) == BUNDLED or Path(str(source)).is_file())


class OnnxSegmenter:
    """Same interface as :class:`Segmenter` (``predict``, ``meta``, ``out_channels``),
    running on ONNX Runtime's CPU execution provider.

    ``precision="int8"`` quantises the network; ``calibration`` is an iterable of uint8 RGB
    tiles whose activations set the int8 ranges (default: tiles of the bundled sample images);
    ``checked``: what :func:`checked_int8` returned for ``segmenter`` (its weights are then not
    hashed again, nor ``NAME.int8.json`` read again).

    It does not keep the PyTorch network it was exported from when that network can be read
    again from ``segmenter.source`` (the bundled model or a checkpoint file): segmenting needs
    only the ONNX session, and :attr:`torch_model`, which gradients and dropout (explanations)
    need, loads the torch copy on the first ask and keeps it. A network with no file behind it
    is kept.
    """

    def __init__(self, segmenter, threads: int | None = None, precision: str = "fp32",
                 calibration: Optional[Iterable[np.ndarray]] = None, *, checked: Optional[dict] = None):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise ImportError(
                "the ONNX engine needs onnxruntime: pip install 'napari-histoseg[onnx]'"
            ) from e
        self.meta = segmenter.meta
        self.source = segmenter.source
        self.device = torch.device("cpu")
        self.precision = precision
        self.calibration = None
        self._mean = np.asarray(self.meta.mean, np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(self.meta.std, np.float32).reshape(1, 3, 1, 1)
        # the segmenter without its network: its activation, and what reloading the network needs
        self._shell = copy.copy(segmenter)
        self._shell.module = None
        self._torch = None if _reloadable(segmenter.source) else segmenter
        self._torch_lock = threading.Lock()
        module = segmenter.module.float().eval()
        if segmenter.device.type != "cpu":   # the export runs on the cpu; the segmenter stays where it is
            module = copy.deepcopy(module).cpu()
        weights = checked["weights_hash"] if checked is not None else _weights_hash(module)
        self._weights = weights
        stem = f"{segmenter.meta.arch}-{weights}"
        path = _cache_dir() / f"{stem}.onnx"
        if not path.is_file():
            _export(module, path)
        if precision == "int8":
            shipped = None if calibration is not None else (
                checked if checked is not None else shipped_int8(segmenter.source, weights))
            ranges = int8_nodes = None
            if shipped is not None:
                ranges, int8_nodes = shipped["ranges"], shipped["int8_nodes"]
                h = hashlib.sha256(repr((sorted(ranges.items()), int8_nodes)).encode())
                part = f"; int8: {shipped['int8_part'] or ', '.join(int8_nodes)}, the rest fp32" if int8_nodes else ""
                self.calibration = f"ranges measured on the training tiles ({ranges_path(segmenter.source).name}){part}"
                inputs = None
            else:
                tiles = list(calibration) if calibration is not None else sample_calibration_tiles()
                if not tiles:
                    raise ValueError("int8 quantisation needs at least one calibration tile")
                inputs = [self._normalise(np.asarray(t, np.uint8)[None]) for t in tiles]
                h = hashlib.sha256()
                for x in inputs:
                    h.update(x.tobytes())
                self.calibration = f"{len(tiles)} {'given' if calibration is not None else 'bundled sample'} tiles"
            qpath = _cache_dir() / f"{stem}-int8-{h.hexdigest()[:12]}.onnx"
            if not qpath.is_file():
                _quantise(path, qpath, inputs, ranges, int8_nodes)
            path = qpath
        self.path = path
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    @property
    def torch_model(self):
        """The PyTorch model this one was exported from (explanations and fine-tuning need its
        gradients): read again from :attr:`source` on the first ask and kept. A file whose weights
        changed since this model was loaded is refused (:class:`CheckpointError`)."""
        with self._torch_lock:
            if self._torch is None:
                from napari_histoseg.models.bundled import BUNDLED
                from napari_histoseg.models.checkpoint import CheckpointError

                shell, cls = self._shell, type(self._shell)
                twin = (cls.bundled(device=shell.device) if str(self.source) == BUNDLED
                        else cls.from_checkpoint(self.source, device=shell.device, source=self.source))
                if _weights_hash(twin.module) != self._weights:
                    raise CheckpointError(f"{self.source}: its weights changed on disk since this model was "
                                          "loaded; load the model again")
                twin.precision, twin.engine, twin.engine_reason = shell.precision, "torch", "the network behind the ONNX engine"
                self._torch = twin
            return self._torch

    @property
    def out_channels(self) -> int:
        return self.meta.out_channels

    @property
    def description(self) -> str:
        m = self.meta   # not the torch twin's precision: the twin only explains and fine-tunes
        return f"{m.name} v{m.model_version} ({m.arch}) [ONNX Runtime {self.precision}]"

    def _normalise(self, batch: np.ndarray) -> np.ndarray:
        x = (batch.transpose(0, 3, 1, 2).astype(np.float32) - self._mean) / self._std
        return np.ascontiguousarray(x)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities float32 (N, C, H, W) for uint8 RGB (N, H, W, 3)."""
        (logits,) = self.session.run(None, {"x": self._normalise(batch)})
        return self._shell.activate(torch.from_numpy(logits)).numpy()
