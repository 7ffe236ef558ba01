"""Where the work runs.

The widgets reach models through one small backend object and never through torch
directly. :class:`LocalBackend` runs the core in this process on cuda, mps or cpu;
:class:`~napari_histoseg.backends.remote.RemoteBackend` sends the same calls to ``histoseg serve``
on another machine (:func:`make_backend` picks one from a setting).
"""

from __future__ import annotations

import threading

from napari_histoseg.core.tiling import iter_predict
from napari_histoseg.models.bundled import BUNDLED


def make_backend(url: str | None = None, token: str | None = None):
    """:class:`LocalBackend` for None, ``""`` or ``"local"``; a RemoteBackend for a URL."""
    if not url or str(url).strip().lower() in ("local", "this computer"):
        return LocalBackend()
    from napari_histoseg.backends.remote import RemoteBackend

    return RemoteBackend(str(url).strip(), token=token or None)


class LocalBackend:
    """Runs models in this process; loaded models are cached per (model, device, engine)."""

    name = "this computer"

    def __init__(self):
        self._models: dict[tuple[str, str, str], object] = {}
        self._known: list[str] = []
        self._lock = threading.Lock()

    def list_models(self) -> list[str]:
        return [BUNDLED, *self._known]

    def model(self, model_ref: str = BUNDLED, device: str = "auto", engine: str = "torch"):
        """The loaded model for ``model_ref`` (loading it on first use)."""
        from napari_histoseg.models.segmenter import load_segmenter as load_model

        key = (str(model_ref), str(device), str(engine))
        with self._lock:
            if key not in self._models:
                path = None if model_ref in (None, "", BUNDLED) else model_ref
                self._models[key] = load_model(path, device=device, engine=engine)
                if path is not None and str(path) not in self._known:
                    self._known.append(str(path))
            return self._models[key]

    def describe(self, model_ref: str = BUNDLED, device: str = "auto", engine: str = "torch") -> str:
        m = self.model(model_ref, device, engine)
        return f"{m.description} on {m.device.type}"

    def segment(self, image, model_ref: str = BUNDLED, *, device: str = "auto", engine: str = "torch", tile=None, **options):
        model = self.model(model_ref, device, engine)
        tile = tile or model.meta.tile_size
        return (yield from iter_predict(image, model, tile=tile, **options))

    def explain(self, image, model_ref: str = BUNDLED, method: str = "gradcam", *, device: str = "auto",
                tile=None, **options):
        from napari_histoseg.explanations import iter_explain

        model = self.model(model_ref, device, "torch")
        tile = tile or model.meta.tile_size
        return (yield from iter_explain(image, model, method, tile=tile, **options))

    def fine_tune(self, dataset, out, init_checkpoint: str = BUNDLED, *, progress=None, should_stop=None,
                  **settings) -> dict:
        from napari_histoseg.training.plan import training_plan
        from napari_histoseg.tumour.train import train

        # the data is checked first: a folder that cannot train is refused with the reason
        plan = training_plan(dataset, settings.get("val_fraction", 0.15), settings.get("seed", 0))
        if init_checkpoint in (None, "", BUNDLED):
            from napari_histoseg.models.bundled import bundled_model_path

            init_checkpoint = str(bundled_model_path())
        return train(dataset, out, init_checkpoint=init_checkpoint, half_weights=True, progress=progress,
                     should_stop=should_stop, log=lambda *_: None, show_bar=False, plan=plan, **settings)
