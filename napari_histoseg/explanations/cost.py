"""What an explanation will cost before it runs: forward passes and seconds (no torch here).

Every method is counted in *forward-pass equivalents* over the pixels it computes: the tiles of
the view (with their overlap, as :func:`~napari_histoseg.core.windows.plan_tiles` lays them),
or for superpixel SHAP the whole view once per coalition. A backward pass costs about two
forward passes. Seconds are those equivalents times the time one forward pass takes per
megapixel on the machine, :data:`SECONDS_PER_MPX` (the bundled U-Net on 2 CPU cores) unless
the caller knows better (the Explain widget learns it from its own runs).
"""

from __future__ import annotations

from typing import Optional

from napari_histoseg.core.windows import plan_tiles

#: seconds per megapixel of one forward pass of the bundled U-Net (MobileNetV2) on 2 CPU
#: cores, fitted to the times per 1024 px view in BENCHMARKS.md (Grad-CAM, TTA, GradientShap)
SECONDS_PER_MPX = 1.2

#: default samples (coalitions, interpolation points, passes) per method
DEFAULT_SAMPLES = {"shap": 8, "mc-dropout": 16, "tta": 8, "tta-entropy": 8, "tta-boundary": 8,
                   "superpixel-shap": 64}


def passes(method: str, samples: Optional[int] = None) -> float:
    """Forward-pass equivalents per computed pixel (per tile pixel; per view pixel and
    coalition for superpixel SHAP)."""
    n = DEFAULT_SAMPLES.get(method, 1) if samples is None else int(samples)
    return {
        "gradcam": 3.0, "hirescam": 3.0, "inputxgrad": 3.0, "gradcam-ixg": 6.0,
        "shap": 1.0 + 2.0 * n, "superpixel-shap": n + 3.0,
        "entropy": 1.5, "tta": float(min(n, 8)), "tta-entropy": float(min(n, 8)),
        "tta-boundary": float(min(n, 8)), "mc-dropout": 1.0 + 0.25 * n,
    }[method]


def estimate(method: str, shape, region=None, *, tile: int = 512, overlap: int = 64,
             samples: Optional[int] = None, scale: int = 1,
             seconds_per_mpx: float = SECONDS_PER_MPX) -> dict:
    """The cost of ``explain(image, model, method, region=region, ...)`` on an image of ``shape``.

    Returns ``{"passes", "megapixels", "seconds", "tiles"}``: forward-pass equivalents per pixel,
    megapixels computed per pass, the estimated seconds and the number of tiles (1 for
    superpixel SHAP, which scores the whole view at once).

    >>> round(estimate("gradcam", (1024, 1024))["seconds"], 1)
    4.8
    """
    plan = plan_tiles(shape, region, tile, overlap)
    if method == "superpixel-shap":
        _, _, ch, cw = plan.context
        mpx, tiles = ch * cw / max(1, int(scale)) ** 2 / 1e6, 1
    else:
        th, tw = plan.tile
        mpx, tiles = len(plan.origins) * th * tw / 1e6, len(plan.origins)
    p = passes(method, samples)
    return {"passes": p, "megapixels": mpx, "seconds": p * mpx * float(seconds_per_mpx), "tiles": tiles}
