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
def detect(module: nn.Module, batch: torch.Tensor, min_score: float | None = None,
           regions: list | None = None) -> list[dict]:
    """Detections of a Mask R-CNN ``module`` for a batch (B, 3, H, W) in [0, 1], masks kept
    as 28 x 28 probabilities.

    Calls the parts of torchvision's ``GeneralizedRCNN`` one by one, skipping its final
    paste of every mask into a full-size image (N x H x W floats: gigabytes on dense tissue).
    The mask head is most of the time on CPU, so two options spare it boxes whose mask
    would be thrown away, without changing the detections that are kept:

    * ``min_score`` (when above the module's own ``box_score_thresh``) drops weaker boxes
      after their non-maximum suppression and before the mask head: a box below the kept
      score can only suppress boxes weaker still, so the detections at or above
      ``min_score`` are the same;
    * ``regions``, one ``(y0, y1, x0, x1)`` (pixels of the image) or None per image: boxes
      that do not reach into it are dropped before the mask head (a mask lies inside its
      box, so its centroid cannot be in the region either).

    Returns a list of dicts ``boxes`` (N, 4) xyxy, ``scores`` (N,), ``masks`` (N, 28, 28).
    """
    images, _ = module.transform(list(batch))
    features = module.backbone(images.tensors)
    proposals, _ = module.rpn(images, features)
    if regions is None and (min_score is None or float(min_score) <= module.roi_heads.score_thresh):
        dets, _ = module.roi_heads(features, proposals, images.image_sizes)
    else:   # the module itself is never changed: it is shared by every caller of the cached model
        dets = _heads_within(module.roi_heads, features, proposals, images.image_sizes,
                             regions or [None] * len(proposals), min_score)
    return [{"boxes": d["boxes"], "scores": d["scores"], "masks": d["masks"][:, 0]} for d in dets]


def reaching(boxes: torch.Tensor, region) -> torch.Tensor:
    """Which xyxy ``boxes`` (N, 4) reach into ``region`` ``(y0, y1, x0, x1)``: boolean (N,)."""
    y0, y1, x0, x1 = region
    return (boxes[:, 2] > x0) & (boxes[:, 0] < x1) & (boxes[:, 3] > y0) & (boxes[:, 1] < y1)


def _heads_within(heads, features, proposals, sizes, regions, min_score=None) -> list[dict]:
    """torchvision's ``RoIHeads`` at inference, with the boxes outside ``regions`` or under
    ``min_score`` left out of the mask head."""
    from torchvision.models.detection.roi_heads import maskrcnn_inference

    cls, reg = heads.box_predictor(heads.box_head(heads.box_roi_pool(features, proposals, sizes)))
    boxes, scores, labels = heads.postprocess_detections(cls, reg, proposals, sizes)
    for i, r in enumerate(regions):
        b, keep = boxes[i], torch.ones(len(boxes[i]), dtype=torch.bool, device=boxes[i].device)
        if r is not None:
            keep &= reaching(b, r)
        if min_score is not None:
            keep &= scores[i] >= float(min_score)
        boxes[i], scores[i], labels[i] = b[keep], scores[i][keep], labels[i][keep]
    logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(features, boxes, sizes)))
    masks = maskrcnn_inference(logits, labels)
    return [{"boxes": b, "scores": s, "labels": lab, "masks": m} for b, s, lab, m in zip(boxes, scores, labels, masks)]


class NucleusDetector(LoadedModel):
    """A nucleus (instances) network plus its metadata: runs in float32 on its device."""

    task = "instances"
    supports_half = True

    def __init__(self, module, meta, device="auto", half=None, source: str = "", precision: str | None = None):
        super().__init__(module, meta, device=device, half=half, source=source, precision=precision)
        if self.half and self.device.type != "cuda":
            raise ValueError("the nucleus detector runs in half precision on cuda only; pass half=False "
                             f"on {self.device.type}")

    def to_tensor(self, batch: np.ndarray) -> torch.Tensor:
        """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [0, 1] on the device (the network
        applies ``meta.mean``/``std`` itself)."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        return x.permute(0, 3, 1, 2).float() / 255.0

    def detect_batch(self, batch: torch.Tensor, min_score: float | None = None, regions=None) -> list[dict]:
        """:func:`detect` on this model's device; the detections come back on the CPU."""
        batch = batch.to(self.device)
        with self.autocast():   # float16 on cuda where asked, else float32
            dets = detect(self.module, batch, min_score, regions)
        if self.device.type == "cpu" and not self.half:
            return dets
        return [{k: v.float().cpu() for k, v in d.items()} for d in dets]
