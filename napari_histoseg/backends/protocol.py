"""The Backend protocol: what a widget may ask of where the work runs."""

from __future__ import annotations

from typing import Generator, Protocol

from napari_histoseg.core.tiling import Prediction
from napari_histoseg.models.bundled import BUNDLED


class Backend(Protocol):
    """What a widget may ask of the place where models run."""

    name: str

    def list_models(self) -> list[str]:
        """Model references a user can choose (``"bundled"`` and checkpoint paths)."""

    def describe(self, model_ref: str, device: str = "auto", engine: str = "torch") -> str:
        """One line naming the model, its version and where it runs."""

    def segment(self, image, model_ref: str = BUNDLED, **options) -> Generator[tuple[int, int], None, Prediction]:
        """Generator: yields ``(done, total)`` tiles, returns the :class:`Prediction`."""

    def explain(self, image, model_ref: str = BUNDLED, method: str = "gradcam", **options):
        """Generator: yields ``(done, total)`` tiles, returns the float32 heat map."""

    def fine_tune(self, dataset, out, init_checkpoint: str = BUNDLED, *, progress=None, should_stop=None,
                  **settings) -> dict:
        """Fine-tune ``init_checkpoint`` on a training-data folder; the new checkpoint is
        written to ``out``; returns the training summary (``stop_reason`` and ``plan``, the
        message of :func:`napari_histoseg.training.plan.training_plan`, among it). Data that cannot
        train a model raises that function's ValueError before training starts."""
