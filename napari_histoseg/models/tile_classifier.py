"""The loaded benign/malignant classifier: network, metadata, device and calibration.

:class:`Classifier` is a :class:`~napari_histoseg.models.loaded.LoadedModel` of task
``"classification"``; it runs in float32, or under bfloat16 autocast (``precision="bf16"``,
the default of the widgets on a CPU with bfloat16 instructions; the server and evaluation run float32). Its logits are (N, C), one row per tile; the
calibrated probability is ``softmax(logits / temperature)`` with the temperature fitted on
validation patients (``meta.training["calibration"]``; one per trained scale where
``"temperatures"`` holds them, :meth:`Classifier.temperature_at`). Reading regions at the model's
scale, tiling and the H&E check are in :mod:`napari_histoseg.classifier.infer`.
"""

from __future__ import annotations

import math

from napari_histoseg.models.loaded import LoadedModel


class Classifier(LoadedModel):
    """A loaded classifier: network, metadata, device and calibration temperature."""

    task = "classification"
    explainable = True
    supports_bf16 = True   # held-out image AUC 0.742 against float32's 0.739, patient AUC unchanged

    def __init__(self, module, meta, device="cpu", half=None, source="", precision=None):
        super().__init__(module, meta, device=device, half=half, source=source, precision=precision)
        cal = meta.training.get("calibration", {}) if isinstance(meta.training, dict) else {}
        self.temperature = float(cal.get("temperature", 1.0))
        self.temperatures = {float(k): float(v) for k, v in (cal.get("temperatures") or {}).items()}

    @property
    def out_channels(self) -> int:
        return len(self.class_names)

    @property
    def tile(self) -> int:
        """Side of the tiles it classifies, in px at the model's mpp."""
        return int(self.meta.tile_size)

    @property
    def scales(self) -> list[float]:
        """The µm/px it was trained at, coarsest first: the model's ``mpp`` and, for a
        model also trained on enlarged fields, ``preprocessing["fine_mpp"]`` (empty: unknown)."""
        pre = self.meta.preprocessing if isinstance(self.meta.preprocessing, dict) else {}
        out = [float(m) for m in (self.meta.mpp, pre.get("fine_mpp")) if m]
        return sorted(set(out), reverse=True)

    def temperature_at(self, mpp) -> float:
        """The calibration temperature of the scale ``mpp`` (one per trained scale, when fitted
        per scale; else the one temperature)."""
        if mpp is None or not self.temperatures:
            return self.temperature
        near = min(self.temperatures, key=lambda k: abs(math.log(k / float(mpp))))
        return self.temperatures[near] if abs(math.log(near / float(mpp))) < 0.1 else self.temperature

    def explain_target(self, logits, channel, weights, use_prediction):
        """The tile's logit of class ``channel`` (the blended map is restricted to the
        region by the caller)."""
        return logits[:, channel]
