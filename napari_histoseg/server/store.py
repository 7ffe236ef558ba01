"""The models a server holds, of every registered task: loaded once on its device; a tumour
model's forward passes go through a :class:`Batcher`, the other tasks' runs take turns."""

from __future__ import annotations

import copy
import threading
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
                 max_pixels: int | None = None):
        from napari_histoseg.core.device import resolve_device

        self.device = resolve_device(device)
        self.batching, self.wait_ms, self.max_tiles = batching, wait_ms, max_tiles
        # the tiled engine's measured budget: on a CPU big batches run slower per pixel
        # (BENCHMARKS.md, Inference), so stacking pays on a GPU only
        self.max_pixels = max_pixels or (1 << (22 if self.device.type in ("cuda", "mps") else 18))
        self.entries: dict[str, Entry] = {}
        self._lock = threading.Lock()

    def add(self, path, ref: str | None = None) -> Entry:
        """Load the checkpoint ``path`` of any registered task (CheckpointError if it is none)."""
        from napari_histoseg.models.checkpoint import CheckpointError, read_meta

        path = Path(path)
        sha = file_sha256(path)
        with self._lock:
            known = self.by_hash(sha)
            if known is not None:
                return known
        task = read_meta(path).task
        if task not in task_names():
            raise CheckpointError(f"{path.name}: a {task!r} model; this server serves {', '.join(task_names())}")
        model = get_task(task).load_model(path, device=str(self.device))
        batcher = None
        if task == "segmentation":
            batcher = Batcher(model.predict, enabled=self.batching, max_tiles=self.max_tiles,
                              max_pixels=self.max_pixels, wait_ms=self.wait_ms)
        with self._lock:
            ref = ref or _unique(path.stem, self.entries)
            entry = Entry(ref, path, sha, model, batcher, task)
            self.entries[ref] = entry
            return entry

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
        try:
            entry = self.entries[ref]
        except KeyError:
            raise KeyError(f"the server has no model {ref!r}; it has {', '.join(self.entries) or 'none'}") from None
        if task and entry.task != task:
            raise ValueError(f"model {ref!r} is a model for {entry.task}, not for {task}")
        return entry

    def by_hash(self, sha: str) -> Entry | None:
        return next((e for e in self.entries.values() if e.sha256 == sha), None)

    def close(self):
        for e in self.entries.values():
            if e.batcher is not None:
                e.batcher.close()


def _unique(stem: str, taken) -> str:
    ref, n = stem, 1
    while ref in taken:
        n += 1
        ref = f"{stem}-{n}"
    return ref
