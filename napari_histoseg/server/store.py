"""The models a server holds, of every registered task: loaded once on its device; a tumour
model's forward passes go through a :class:`Batcher`, the other tasks' runs take turns.

The models the server was started with are pinned; uploaded and fine-tuned ones are held up to
``max_models``, the least recently used unloaded first (an unloaded upload's file is removed;
a client that names it again uploads it again). A checkpoint is served only if its tile size,
normalisation and weights are usable (:func:`check_served`).
"""

from __future__ import annotations

import copy
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from napari_histoseg.backends.wire import bundled_ref
from napari_histoseg.core.hashing import file_sha256
from napari_histoseg.models.bundled import BUNDLED
from napari_histoseg.server.batching import Batcher
from napari_histoseg.tasks import get_task, task_names


@dataclass
class Entry:
    ref: str
    path: Path
    sha256: str
    model: object                  # the task's loaded model on the server's device
    batcher: Batcher | None        # tumour models only
    task: str = "segmentation"
    pinned: bool = True            # started with: never unloaded
    owned: bool = False            # its file is the server's own (an upload): removed when unloaded
    _explainer: object = None
    explain_lock: threading.Lock = field(default_factory=threading.Lock)
    run_lock: threading.Lock = field(default_factory=threading.Lock)   # runs of the other tasks take turns

    @property
    def meta(self):
        return self.model.meta

    def explainer(self):
        """A private copy of the network for explanations (their hooks and gradients must
        not meet the batched forward passes of other requests)."""
        if self._explainer is None:
            from napari_histoseg.models.segmenter import Segmenter

            m = self.model
            self._explainer = Segmenter(copy.deepcopy(m.module), m.meta, device=m.device, half=m.half,
                                        source=m.source)
        return self._explainer

    def engine_model(self):
        """What the tiled engine needs of a model, with the forward pass through the batcher."""
        from types import SimpleNamespace

        m = self.model
        return SimpleNamespace(meta=m.meta, device=m.device, out_channels=m.out_channels, predict=self.batcher)

    def info(self) -> dict:
        meta = self.meta
        return {"ref": self.ref, "name": meta.name, "version": meta.model_version, "arch": meta.arch,
                "task": self.task, "tile_size": meta.tile_size, "classes": meta.classes,
                "sha256": self.sha256, "device": self.model.device.type,
                "half": bool(getattr(self.model, "half", False)), "meta": meta.to_json()}


class ModelStore:
    def __init__(self, device: str = "auto", *, batching: bool = True, wait_ms: float = 5.0, max_tiles: int = 16,
                 max_pixels: int | None = None, max_models: int = 8):
        from napari_histoseg.core.device import resolve_device

        self.device = resolve_device(device)
        self.batching, self.wait_ms, self.max_tiles = batching, wait_ms, max_tiles
        # the tiled engine's measured budget: on a CPU big batches run slower per pixel
        # (BENCHMARKS.md, Inference), so stacking pays on a GPU only
        self.max_pixels = max_pixels or (1 << (22 if self.device.type in ("cuda", "mps") else 18))
        self.max_models = int(max_models)
        self.entries: OrderedDict[str, Entry] = OrderedDict()   # least recently used first
        self.unloaded = 0
        self.in_use = set   # () -> checkpoint files that must stay (set by the app: running jobs' own)
        self._lock = threading.RLock()

    def add(self, path, ref: str | None = None, *, pinned: bool = True, owned: bool = False) -> Entry:
        """Load the checkpoint ``path`` of any registered task (CheckpointError if it is none,
        or if :func:`check_served` refuses it). ``pinned``: never unloaded; otherwise held
        among the ``max_models`` most recently used; ``owned``: remove the file when unloaded."""
        from napari_histoseg.models.checkpoint import CheckpointError, read_meta

        path = Path(path)
        sha = file_sha256(path)
        with self._lock:
            known = self.by_hash(sha)
            if known is not None:
                self.entries.move_to_end(known.ref)
                return known
        task = read_meta(path).task
        if task not in task_names():
            raise CheckpointError(f"a {task!r} model; this server serves {', '.join(task_names())}")
        model = get_task(task).load_model(path, device=str(self.device))
        check_served(model)
        batcher = None
        if task == "segmentation":
            batcher = Batcher(model.predict, enabled=self.batching, max_tiles=self.max_tiles,
                              max_pixels=self.max_pixels, wait_ms=self.wait_ms)
        with self._lock:
            ref = ref or _unique(path.stem, self.entries)
            entry = Entry(ref, path, sha, model, batcher, task, pinned=pinned, owned=owned)
            self.entries[ref] = entry
            self._unload_beyond_cap()
            return entry

    def _unload_beyond_cap(self) -> None:
        held = [e for e in self.entries.values() if not e.pinned]
        for entry in held[:max(0, len(held) - self.max_models)]:
            del self.entries[entry.ref]
            self.unloaded += 1
            if entry.batcher is not None:
                entry.batcher.retire()       # requests in flight on it still finish
            if entry.owned and entry.path not in self.in_use():   # a running job may still read it
                entry.path.unlink(missing_ok=True)

    def add_bundled(self) -> list[Entry]:
        """The bundled model of every task this install has, as ``bundled`` (tumour) and
        ``bundled-instances``, ``bundled-classification``."""
        from napari_histoseg.models.bundled import bundled_path

        added = []
        for task in task_names():
            try:
                entry = self.add(bundled_path(task), ref=bundled_ref(task))
            except Exception:  # noqa: BLE001 - an install without some bundled weights serves the others
                continue
            if task == "segmentation":
                entry.model.source = BUNDLED
            added.append(entry)
        return added

    def get(self, ref: str | None, task: str | None = None) -> Entry:
        """The model ``ref`` (``"bundled"``: ``task``'s bundled one); ValueError if it is not of ``task``."""
        ref = ref or BUNDLED
        if ref == BUNDLED and task:
            ref = bundled_ref(task)
        with self._lock:
            entry = self.entries.get(ref)
            if entry is not None:
                self.entries.move_to_end(ref)
        if entry is None:
            raise KeyError(f"the server has no model {str(ref)[:80]!r}; it has {', '.join(self.entries) or 'none'}")
        if task and entry.task != task:
            raise ValueError(f"model {ref!r} is a model for {entry.task}, not for {task}")
        return entry

    def by_hash(self, sha: str) -> Entry | None:
        with self._lock:
            return next((e for e in self.entries.values() if e.sha256 == sha), None)

    def close(self):
        for e in self.entries.values():
            if e.batcher is not None:
                e.batcher.close()


def check_served(model) -> None:
    """Refuse a model whose answers would be meaningless: a tile size outside 64-4096 px,
    normalisation that is not finite or divides by zero, weights that are NaN or infinite."""
    import torch

    from napari_histoseg.io.checks import InputError, check_float, check_int
    from napari_histoseg.models.checkpoint import CheckpointError

    meta = model.meta
    try:
        check_int(meta.tile_size, "its tile_size", lo=64, hi=4096)
        for name, values, lo in (("mean", meta.mean, None), ("std", meta.std, 0)):
            if values is None:
                continue
            if not isinstance(values, (list, tuple)) or not values:
                raise InputError(f"its {name} must be a list of numbers")
            for v in values:
                check_float(v, f"its {name}", lo=lo, lo_open=lo is not None)
        if meta.mpp is not None:
            check_float(meta.mpp, "its mpp", lo=0, lo_open=True, hi=100)
    except InputError as e:
        raise CheckpointError(f"the checkpoint cannot be served: {e}") from None
    module = getattr(model, "module", None)
    if module is not None:
        with torch.no_grad():
            for name, t in [*module.named_parameters(), *module.named_buffers()]:
                if t.is_floating_point() and not torch.isfinite(t).all():
                    raise CheckpointError(f"the checkpoint cannot be served: its weights {name} hold NaN or infinity")


def _unique(stem: str, taken) -> str:
    ref, n = stem, 1
    while ref in taken:
        n += 1
        ref = f"{stem}-{n}"
    return ref
