"""Checkpoints: safetensors weights plus JSON metadata, never pickle.

A checkpoint is untrusted input. Weights are read with :mod:`safetensors` (no code
runs on load); the metadata is JSON stored in the safetensors header under the key
``"histoseg"`` and, for readability, optionally in a sidecar ``NAME.json`` beside it.

Metadata (``ModelMeta``) records everything needed to rebuild and use the network:
the architecture name and its arguments, the classes, the input normalisation, the
tile size and microns per pixel it was trained at, the preprocessing, and free-form
training provenance and metrics.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from safetensors import SafetensorError, safe_open

from napari_histoseg.io.checks import check_type

if TYPE_CHECKING:  # torch loads when weights are read or written, not for the metadata
    import torch
    import torch.nn as nn

FORMAT = "histoseg-model"
FORMAT_VERSION = 1
_META_KEY = "histoseg"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says why."""


@dataclass
class ModelMeta:
    """What a checkpoint says about its network.

    ``mean`` and ``std`` are in uint8 units: the network sees ``(rgb - mean) / std``.
    The default (127.5, 127.5) scales to [-1, 1], as the ImageNet MobileNetV2 encoder
    in ``../shared/weights`` expects.
    """

    arch: str
    task: str = "segmentation"  # or "instances" (nuclei), "classification" (benign/malignant)
    arch_kwargs: dict = field(default_factory=lambda: {"classes": 1})
    classes: dict = field(default_factory=lambda: {"0": "not tumour", "1": "tumour"})
    mean: list = field(default_factory=lambda: [127.5, 127.5, 127.5])
    std: list = field(default_factory=lambda: [127.5, 127.5, 127.5])
    tile_size: int = 512
    mpp: float | None = None
    preprocessing: dict = field(default_factory=dict)
    name: str = "untitled"
    model_version: str = "0"
    training: dict = field(default_factory=dict)
    metrics: dict = field(default_factory=dict)

    @property
    def out_channels(self) -> int:
        return int(self.arch_kwargs.get("classes", 1))

    def to_json(self) -> dict:
        return {"format": FORMAT, "version": FORMAT_VERSION, **asdict(self)}

    @classmethod
    def from_json(cls, data: dict, source: str = "checkpoint") -> "ModelMeta":
        if not isinstance(data, dict):
            raise CheckpointError(f"{source}: its metadata must be a JSON object; got {type(data).__name__}")
        if data.get("format") != FORMAT:
            raise CheckpointError(
                f"{source}: metadata format is {data.get('format')!r}, expected {FORMAT!r}"
            )
        version = _meta_field(data, "version", int, source, -1)
        if version > FORMAT_VERSION:
            raise CheckpointError(
                f"{source}: metadata version {data.get('version')} is newer than this "
                f"napari-histoseg understands ({FORMAT_VERSION}); upgrade the plugin"
            )
        known = set(cls.__dataclass_fields__)
        kwargs = {k: v for k, v in data.items() if k in known}
        if "arch" not in kwargs:
            raise CheckpointError(f"{source}: metadata names no architecture ('arch')")
        meta = cls(**kwargs)
        meta.validate(source)
        return meta

    def validate(self, source: str = "checkpoint") -> "ModelMeta":
        """Refuse metadata of the wrong types or values (CheckpointError naming the field):
        a tile size outside 32..8192, mean/std not three finite numbers, a std that is not
        positive, an mpp that is not a positive number."""
        d = asdict(self)
        for key, types in _META_TYPES.items():
            _meta_field(d, key, types, source)
        for key in ("mean", "std"):
            v = d[key]
            if len(v) != 3 or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                      and math.isfinite(x) for x in v):
                raise CheckpointError(f"{source}: metadata {key} must be three finite numbers (R, G, B); got {v!r}")
        if min(d["std"]) <= 0:
            raise CheckpointError(f"{source}: metadata std must be positive in every channel; got {d['std']!r}")
        if not 32 <= d["tile_size"] <= 8192:
            raise CheckpointError(f"{source}: metadata tile_size must be 32..8192 px; got {d['tile_size']}")
        if d["mpp"] is not None and not (math.isfinite(d["mpp"]) and 0 < d["mpp"] <= 100):
            raise CheckpointError(f"{source}: metadata mpp must be a positive number of µm per pixel "
                                  f"(at most 100); got {d['mpp']!r}")
        classes = d["arch_kwargs"].get("classes", 1)
        if isinstance(classes, bool) or not isinstance(classes, int) or not 1 <= classes <= 1000:
            raise CheckpointError(f"{source}: metadata arch_kwargs.classes must be an integer 1..1000; "
                                  f"got {classes!r}")
        return self


_META_TYPES = {"arch": str, "task": str, "arch_kwargs": dict, "classes": dict, "mean": list, "std": list,
               "tile_size": int, "mpp": (float, type(None)), "preprocessing": dict, "name": str,
               "model_version": (str, int, float), "training": dict, "metrics": dict}


def _meta_field(data: dict, key: str, types, source: str, default=None):
    try:
        return check_type(data.get(key, default), types, f"{source}: metadata {key}", error=CheckpointError)
    except CheckpointError:
        if key in data:
            raise
        return default


def save_checkpoint(
    model: "nn.Module", path: str | Path, meta: ModelMeta, sidecar: bool = False
) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` (a ``.safetensors`` file).

    The file is written next to its destination and renamed into place, so an
    interrupted save never leaves a half-written checkpoint. With ``sidecar=True``
    the metadata is also written as ``path.with_suffix('.json')``.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise CheckpointError(f"{path}: checkpoints are saved as .safetensors files")
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    text = json.dumps(meta.to_json())
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={_META_KEY: text})
    tmp.replace(path)
    if sidecar:
        path.with_suffix(".json").write_text(json.dumps(meta.to_json(), indent=2) + "\n")
    return path


def read_meta(path: str | Path) -> ModelMeta:
    """Read only the metadata of a checkpoint (cheap: the weights stay on disk)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix in {".pt", ".pth", ".ckpt", ".pkl", ".bin"}:
        raise CheckpointError(
            f"{path}: pickled PyTorch checkpoints are not loaded, because unpickling "
            "an untrusted file can run code. Convert it to .safetensors with "
            "histoseg metadata (napari_histoseg.models.save_checkpoint)."
        )
    try:
        with safe_open(str(path), framework="numpy") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a safetensors checkpoint ({e})") from None
    if _META_KEY in header:
        try:
            data = json.loads(header[_META_KEY])
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{path}: its metadata is not valid JSON ({e})") from None
    else:
        sidecar = path.with_suffix(".json")
        if not sidecar.is_file():
            raise CheckpointError(
                f"{path}: the file holds weights but no histoseg metadata (architecture, "
                "classes, normalisation), and there is no sidecar "
                f"{sidecar.name}; it cannot be used as a model"
            )
        try:
            data = json.loads(sidecar.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{sidecar}: its metadata is not valid JSON ({e})") from None
    return ModelMeta.from_json(data, source=str(path))


def load_checkpoint(
    path: str | Path, map_location: "str | torch.device" = "cpu"
) -> "tuple[nn.Module, ModelMeta]":
    """Rebuild the network a checkpoint describes and load its weights.

    Returns ``(module, meta)`` with the module in eval mode.

    Raises
    ------
    CheckpointError
        For a missing file, a pickle, a file without metadata, an unknown
        architecture, or weights that do not fit the architecture (the message names
        the missing, unexpected and mis-shaped tensors).
    """
    from safetensors.torch import load_file

    from napari_histoseg.models import architectures  # noqa: F401  (registers every network)
    from napari_histoseg.models.registry import build_model, list_architectures

    meta = read_meta(path)
    if meta.arch not in list_architectures():
        raise CheckpointError(
            f"{path}: architecture {meta.arch!r} is unknown to this napari-histoseg; "
            f"known: {', '.join(list_architectures())}"
        )
    try:
        module = build_model(meta.arch, **meta.arch_kwargs)
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: bad arguments for {meta.arch!r}: {e}") from None
    try:
        state = load_file(str(path), device=str(map_location))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: its weights cannot be read ({e})") from None
    check_state_dict(module, state, source=f"{path} ({meta.arch})")
    check_finite(state, source=str(path))
    module.load_state_dict(state, strict=True)
    module.eval()
    return module, meta


def check_finite(state: dict[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` when a floating-point tensor holds NaN or infinity (a
    diverged training run): such a model answers nonsense for every pixel."""
    import torch

    bad = [k for k, v in state.items() if torch.is_floating_point(v) and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{source}: {len(bad)} weight tensors hold NaN or infinite values "
                              f"({', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''}); the model is broken "
                              "(did its training diverge?)")


def check_state_dict(module: "nn.Module", state: dict[str, Any], source: str) -> None:
    """Raise :class:`CheckpointError` naming what does not fit between ``state`` and ``module``."""
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{k}: {tuple(state[k].shape)} in file, {tuple(v.shape)} expected"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if not (missing or unexpected or wrong):
        return

    def few(items):
        return ", ".join(items[:3]) + (f" and {len(items) - 3} more" if len(items) > 3 else "")

    parts = []
    if missing:
        parts.append(f"{len(missing)} tensors missing ({few(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected tensors ({few(unexpected)})")
    if wrong:
        parts.append(f"{len(wrong)} tensors of the wrong shape ({few(wrong)})")
    raise CheckpointError(
        f"{source}: the weights do not match the architecture named in the metadata: "
        + "; ".join(parts)
        + ". Was it saved from another architecture or class count?"
    )
