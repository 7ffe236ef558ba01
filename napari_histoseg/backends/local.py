"""Where the work runs.

The widgets reach models through one small backend object and never through torch
directly. :class:`LocalBackend` runs the core in this process on cuda, mps or cpu;
:class:`~napari_histoseg.backends.remote.RemoteBackend` sends the same calls to ``histoseg serve``
on another machine (:func:`make_backend` picks one from a setting). Both offer every task of
the registry (:mod:`napari_histoseg.tasks`) through :meth:`~LocalBackend.infer` and
:meth:`~LocalBackend.fine_tune`; ``segment`` and ``explain`` are the tumour task's shortcuts.
"""

from __future__ import annotations

import threading

from napari_histoseg.models.bundled import BUNDLED
from napari_histoseg.tasks import check_infer_options, dataset_task, get_task


def make_backend(url: str | None = None, token: str | None = None):
    """:class:`LocalBackend` for None, ``""`` or ``"local"``; a RemoteBackend for a URL."""
    if not url or str(url).strip().lower() in ("local", "this computer"):
        return LocalBackend()
    from napari_histoseg.backends.remote import RemoteBackend

    return RemoteBackend(str(url).strip(), token=token or None)


class LocalBackend:
    """Runs models in this process; loaded models are cached per (task, model, device, engine)."""

    name = "this computer"

    def __init__(self):
        self._models: dict[tuple[str, str, str, str], object] = {}
        self._known: dict[str, str] = {}   # checkpoint path -> its task
        self._lock = threading.Lock()

    def list_models(self, task: str | None = None) -> list[str]:
        """``"bundled"`` and the checkpoints loaded so far (of ``task`` when given)."""
        return [BUNDLED, *(p for p, t in self._known.items() if task is None or t == task)]

    def model(self, model_ref: str = BUNDLED, device: str = "auto", engine: str = "torch", *,
              task: str = "segmentation"):
        """The loaded model of ``task`` for ``model_ref`` (loading it on first use)."""
        t = get_task(task)
        key = (task, str(model_ref), str(device), str(engine))
        with self._lock:
            if key not in self._models:
                path = None if model_ref in (None, "", BUNDLED) else model_ref
                self._models[key] = t.load_model(path, device=device, engine=engine)
                if path is not None:
                    self._known.setdefault(str(path), task)
            return self._models[key]

    def describe(self, model_ref: str = BUNDLED, device: str = "auto", engine: str = "torch", *,
                 task: str = "segmentation") -> str:
        model = self.model(model_ref, device, engine, task=task)
        return f"{model.description} on {model.device.type}"

    def infer(self, task: str, image, model_ref: str = BUNDLED, *, device: str = "auto", engine: str = "torch",
              **options):
        """Generator: yields ``(done, total)``, returns ``task``'s result (a Prediction for
        ``"segmentation"``, ``(labels, table)`` for ``"instances"``, a Classification for
        ``"classification"``); ``options`` are the task's ``INFER_OPTIONS``."""
        t = get_task(task)
        check_infer_options(t, options)
        model = self.model(model_ref, device, engine, task=task)
        return (yield from t.iter_infer(model, image, **options))

    def segment(self, image, model_ref: str = BUNDLED, *, device: str = "auto", engine: str = "torch", tile=None,
                **options):
        return (yield from self.infer("segmentation", image, model_ref, device=device, engine=engine, tile=tile,
                                      **options))

    def detect_nuclei(self, image, model_ref: str = BUNDLED, *, device: str = "auto", **options):
        """``infer("instances", ...)``: returns ``(labels uint32, table or None)``."""
        return (yield from self.infer("instances", image, model_ref, device=device, **options))

    def classify(self, image, model_ref: str = BUNDLED, *, device: str = "auto", **options):
        """``infer("classification", ...)``: returns the Classification of ``region``."""
        return (yield from self.infer("classification", image, model_ref, device=device, **options))

    def explain(self, image, model_ref: str = BUNDLED, method: str = "gradcam", *, device: str = "auto",
                tile=None, task: str = "segmentation", **options):
        """Generator: yields ``(done, total)``, returns the float32 heat map. ``task`` other than
        segmentation: that task's ``iter_explain`` (classification: Grad-CAM of ``region``)."""
        t = get_task(task)
        if not t.EXPLAIN_OPTIONS:
            raise ValueError(f"{t.title} ({task}) has no explanations")
        if tile is not None:
            options["tile"] = tile
        check_infer_options(t, options, t.EXPLAIN_OPTIONS)
        return (yield from t.iter_explain(self._explained(task, model_ref, device), image, method, **options))

    def _explained(self, task: str, model_ref, device):
        """The model an explanation runs on: one already held for ``(task, model_ref)`` on that
        device by any engine, PyTorch first (its network serves gradients as it is; explanations
        run in float32 whatever its inference precision); else an ONNX one, whose torch network is
        read again on this first explanation (:attr:`OnnxSegmenter.torch_model`) and then held
        beside its session; else the model loaded with engine ``torch``. So the Segment widget's
        ``auto`` model and the Explain widget share one copy of the network."""
        from napari_histoseg.core.device import resolve_device
        from napari_histoseg.models.loaded import LoadedModel

        where = resolve_device(device).type
        with self._lock:
            held = [m for (t, ref, _, _), m in self._models.items()
                    if t == task and ref == str(model_ref) and m.device.type == where]
        torch_first = sorted(held, key=lambda m: not isinstance(m, LoadedModel))
        if not torch_first:
            return self.model(model_ref, device, task=task)
        if not isinstance(torch_first[0], LoadedModel):
            from napari_histoseg.models.checkpoint import CheckpointError

            try:
                torch_first[0].torch_model  # noqa: B018  (read again now: a changed file is refused here)
            except CheckpointError as e:  # forget the stale engine, so the next run loads the file anew
                with self._lock:
                    for key in [k for k in self._models if k[0] == task and k[1] == str(model_ref)]:
                        del self._models[key]
                raise CheckpointError(f"{e}. Run the segmentation again (it loads the new weights), "
                                      "then explain it") from e
        return torch_first[0]

    def fine_tune(self, dataset, out, init_checkpoint: str = BUNDLED, *, task: str | None = None, progress=None,
                  should_stop=None, **settings) -> dict:
        """Train ``task``'s model (default: the task the folder's dataset.json names) from
        ``init_checkpoint`` on a training-data folder; see :class:`~napari_histoseg.backends.protocol.Backend`."""
        task = task or dataset_task(dataset)
        return get_task(task).fine_tune(dataset, out, init_checkpoint, progress=progress, should_stop=should_stop,
                                        **settings)
