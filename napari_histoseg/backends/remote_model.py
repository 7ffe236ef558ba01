"""A model on a ``histoseg serve`` server as the tiled engine sees it (:class:`RemoteModel`),
and the :class:`~napari_histoseg.core.tiling.Prediction` of a probability it sent back."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from napari_histoseg.backends import wire

__all__ = ["RemoteModel", "prediction"]


class RemoteModel:
    """A server model as the tiled engine sees it: ``predict`` sends a batch of tiles."""

    def __init__(self, backend, ref: str):
        """``backend``: the :class:`~napari_histoseg.backends.remote.RemoteBackend` that talks to the server."""
        from napari_histoseg.models.checkpoint import ModelMeta

        info = backend.info(ref)
        self.backend, self.ref = backend, ref
        self.meta = ModelMeta.from_json(info["meta"], source=f"{backend.url} model {ref}")
        self.device = SimpleNamespace(type=info["device"])
        self.half = bool(info.get("half"))
        self.source = f"{backend.url}/{ref}"

    @property
    def out_channels(self) -> int:
        return self.meta.out_channels

    @property
    def description(self) -> str:
        return f"{self.meta.name} v{self.meta.model_version} ({self.meta.arch}) at {self.backend.url}"

    def predict(self, batch: np.ndarray) -> np.ndarray:
        body, headers = wire.encode(batch, "uint8")
        r = self.backend.request("POST", "/predict", params={"model": self.ref}, content=body, headers=headers)
        return self.backend._array(r).astype(np.float32)


def prediction(prob, region_header, threshold):
    """The Prediction of a probability the server sent, with its region (``X-Region``)."""
    from napari_histoseg.core.tiling import Prediction

    prob = np.asarray(prob, np.float32)
    mask = (prob >= threshold).astype(np.uint8) if prob.ndim == 2 else prob.argmax(0).astype(np.uint8)
    region = tuple(int(v) for v in region_header.split(",")) if region_header else (0, 0, *prob.shape[-2:])
    return Prediction(prob, mask, region)
