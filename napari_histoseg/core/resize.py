"""Resizing images and masks by a factor."""

from __future__ import annotations

import numpy as np
import torch


def resize(image: np.ndarray, factor: float, mask: bool = False) -> np.ndarray:
    """Resize an (H, W, 3) uint8 image (bilinear, antialiased) or an (H, W) mask (nearest)."""
    if abs(factor - 1.0) < 1e-6:
        return np.asarray(image, bool) if mask else image
    h, w = image.shape[:2]
    size = (max(1, int(round(h * factor))), max(1, int(round(w * factor))))
    if mask:
        t = torch.from_numpy(np.ascontiguousarray(image, dtype=np.uint8))[None, None].float()
        return torch.nn.functional.interpolate(t, size=size, mode="nearest")[0, 0].numpy() > 0.5
    t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", antialias=factor < 1,
                                        align_corners=False)
    return t[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
