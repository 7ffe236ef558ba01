"""The loaded nucleus detector (Mask R-CNN): RGB tiles in, boxes, scores and masks out.

:class:`NucleusDetector` is a :class:`~napari_histoseg.models.loaded.LoadedModel` of task
``"instances"``. The network normalises its input itself (torchvision's detection
transform, see :mod:`napari_histoseg.models.maskrcnn`), so tiles go in as float RGB in
[0, 1]. The tiling, merging and rescaling to the model's mpp are in
:mod:`napari_histoseg.nuclei.infer`.

Half precision: on cuda (``half=None`` or ``True``) the backbone, RPN and heads run under
``torch.autocast`` in float16; boxes, scores and masks come back as float32. On the CPU the
detector runs float32 (``half=True`` there is refused: CPU float16 convolutions are slower).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from napari_histoseg.models.loaded import LoadedModel


@torch.no_grad()
def detect(module: nn.Module, batch: torch.Tensor, min_score: float | None = None) -> list[dict]:
    """Detections of a Mask R-CNN ``module`` for a batch (B, 3, H, W) in [0, 1], masks kept
    as 28 x 28 probabilities.

    Calls the parts of torchvision's ``GeneralizedRCNN`` one by one, skipping its final
    paste of every mask into a full-size image (N x H x W floats: gigabytes on dense tissue).
    ``min_score`` (when above the module's own ``box_score_thresh``) drops weaker boxes
    before their non-maximum suppression and the mask head: the mask head is most of the
    time on CPU, and a box below the score that will be kept can only suppress boxes weaker
    still, so the detections at or above ``min_score`` are the same.
    Returns a list of dicts ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``masks`` (N, 28, 28).
    """
    heads = module.roi_heads
    own = heads.score_thresh
    if min_score is not None and float(min_score) > own:
        heads.score_thresh = float(min_score)
    try:
        images, _ = module.transform(list(batch))
        features = module.backbone(images.tensors)
        proposals, _ = module.rpn(images, features)
        dets, _ = heads(features, proposals, images.image_sizes)
    finally:
        heads.score_thresh = own
    return [{"boxes": d["boxes"], "scores": d["scores"], "masks": d["masks"][:, 0]} for d in dets]


class NucleusDetector(LoadedModel):
    """A nucleus (instances) network plus its metadata: runs in float32 on its device."""

    task = "instances"
    supports_half = True

    def __init__(self, module, meta, device="auto", half=None, source: str = ""):
        super().__init__(module, meta, device=device, half=half, source=source)
        if self.half and self.device.type != "cuda":
            raise ValueError("the nucleus detector runs in half precision on cuda only; pass half=False "
                             f"on {self.device.type}")

    def to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1] on the device (the network
        applies ``meta.mean``/``std`` itself)."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        return x.permute(0, 3, 1, 2).float() / 255.0

    def detect_batch(self, batch: torch.Tensor, min_score: float | None = None) -> list[dict]:
        """:func:`detect` on this model's device; the detections come back on the CPU."""
        batch = batch.to(self.device)
        if self.half:
            with torch.autocast(self.device.type, dtype=torch.float16):
                dets = detect(self.module, batch, min_score)
        else:
            dets = detect(self.module, batch, min_score)
        if self.device.type == "cpu" and not self.half:
            return dets
        return [{k: v.float().cpu() for k, v in d.items()} for d in dets]
