"""The loaded benign/malignant classifier: network, metadata, device and calibration.

:class:`Classifier` is a :class:`~napari_histoseg.models.loaded.LoadedModel` of task
``"classification"``; it runs in float32. Its logits are (N, C), one row per tile; the
calibrated probability is ``softmax(logits / temperature)`` with the temperature fitted on
validation patients (``meta.training["calibration"]``). Reading regions at the model's
scale, tiling and the H&E check are in :mod:`napari_histoseg.classifier.infer`.
"""

from __future__ import annotations

from napari_histoseg.models.loaded import LoadedModel


class Classifier(LoadedModel):
    """A loaded classifier: network, metadata, device and calibration temperature."""

    task = "classification"
    explainable = True

    def __init__(self, module, meta, device="cpu", half=None, source=""):
        super().__init__(module, meta, device=device, half=half, source=source)
        cal = meta.training.get("calibration", {}) if isinstance(meta.training, dict) else {}
        self.temperature = float(cal.get("temperature", 1.0))

    @property
    def out_channels(self) -> int:
        return len(self.class_names)

    @property
    def tile(self) -> int:
        """Side of the tiles it classifies, in px at the model's mpp."""
        return int(self.meta.tile_size)

    def explain_target(self, logits, channel, weights, use_prediction):
        """The tile's logit of class ``channel`` (the blended map is restricted to the
        region by the caller)."""
        return logits[:, channel]
