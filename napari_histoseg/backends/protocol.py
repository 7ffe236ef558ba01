"""The Backend protocol: what a widget may ask of where the work runs."""

from __future__ import annotations

from typing import Any, Generator, Protocol

from napari_histoseg.core.tiling import Prediction
from napari_histoseg.models.bundled import BUNDLED


class Backend(Protocol):
    """What a widget may ask of the place where models run.

    ``task`` is a name of the registry (:func:`napari_histoseg.tasks.task_names`):
    ``"segmentation"`` (tumour), ``"instances"`` (nuclei) or ``"classification"``.
    """

    name: str

    def list_models(self, task: str | None = None) -> list[str]:
        """Model references a user can choose (``"bundled"`` and checkpoint paths), of ``task`` when given."""

    def describe(self, model_ref: str = BUNDLED, device: str = "auto", engine: str = "torch", *,
                 task: str = "segmentation") -> str:
        """One line naming the model, its version and where it runs."""

    def infer(self, task: str, image, model_ref: str = BUNDLED, **options) -> Generator[tuple[int, int], None, Any]:
        """Generator: yields ``(done, total)``, returns the task's result: a :class:`Prediction`
        (segmentation), ``(labels uint32, table or None)`` (instances, as
        :func:`~napari_histoseg.nuclei.infer.detect_nuclei`), a
        :class:`~napari_histoseg.classifier.infer.Classification` (classification, of ``region``)."""

    def segment(self, image, model_ref: str = BUNDLED, **options) -> Generator[tuple[int, int], None, Prediction]:
        """``infer("segmentation", ...)``: yields ``(done, total)`` tiles, returns the :class:`Prediction`."""

    def detect_nuclei(self, image, model_ref: str = BUNDLED, **options):
        """``infer("instances", ...)`` (options ``mpp``, ``score_threshold``, ``features``, ...)."""

    def classify(self, image, model_ref: str = BUNDLED, **options):
        """``infer("classification", ...)`` (options ``region``, ``mpp``, ``check``, ``what``)."""

    def explain(self, image, model_ref: str = BUNDLED, method: str = "gradcam", **options):
        """Generator: yields ``(done, total)`` tiles, returns the float32 heat map."""

    def fine_tune(self, dataset, out, init_checkpoint: str = BUNDLED, *, task: str | None = None, progress=None,
                  should_stop=None, **settings) -> dict:
        """Fine-tune ``init_checkpoint`` of ``task`` (default: the task in the folder's
        dataset.json) on a training-data folder; the new checkpoint is written to ``out``;
        returns the training summary (``stop_reason`` among it). Data that cannot train a
        model raises ValueError before training starts."""
