"""Seeds, priors and images as the refinement takes them, with clear errors.

Seeds follow the project's contract (``DESIGN.md``): an (H, W) integer array where
0 = no seed, 1 = tumour, 2 = not tumour. The prior is the model's tumour probability,
float (H, W) in [0, 1].
"""

from __future__ import annotations

import numpy as np

__all__ = ["SeedError", "NO_SEED", "TUMOUR", "NOT_TUMOUR", "NO_SEEDS", "check_seeds", "check_seed_values",
           "check_prior", "check_image"]

NO_SEED, TUMOUR, NOT_TUMOUR = 0, 1, 2

#: What a seed layer without any seed is told.
NO_SEEDS = "no seeds: paint at least one tumour (label 1) or not-tumour (label 2) seed"


class SeedError(ValueError):
    """Seeds that the refinement cannot use: wrong shape, unknown label values, none at all."""


def check_seeds(seeds, shape, require_any: bool = True, values: bool = True) -> np.ndarray:
    """Validate a seed array and return it as uint8 (no copy where it already is).

    Parameters
    ----------
    seeds : array-like (H, W)
        Integer (or boolean, or integral float) labels: 0 no seed, 1 tumour, 2 not tumour.
    shape : tuple
        ``(H, W)`` of the image the seeds belong to.
    require_any : bool
        Raise when no pixel is seeded.
    values : bool
        Check that every value is 0, 1 or 2. False leaves a uint8 layer unread (a warm
        session checks only the pixels that changed, :func:`check_seed_values`); other
        types are still checked as they are converted.

    Returns
    -------
    seeds : (H, W) uint8

    Raises
    ------
    SeedError
        Wrong shape, values other than 0, 1, 2, or (with ``require_any``) no seed.

    Examples
    --------
    >>> check_seeds(np.array([[0, 1], [2, 0]]), (2, 2)).dtype
    dtype('uint8')
    """
    a = np.asarray(seeds)
    shape = tuple(int(s) for s in shape[:2])
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.shape != shape:
        raise SeedError(
            f"the seeds have shape {a.shape} but the image is {shape[0]} x {shape[1]} px: "
            "paint the seeds on a layer of the image's size"
        )
    if a.dtype == bool:
        a = a.view(np.uint8)
    elif a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
            raise SeedError("the seeds must be whole numbers: 0 no seed, 1 tumour, 2 not tumour")
    elif a.dtype.kind not in "iu":
        raise SeedError(f"the seeds must be an integer label array, not {a.dtype}")
    if a.dtype != np.uint8:
        lo, hi = (a.min(), a.max()) if a.size else (0, 0)
        if lo < 0 or hi > 255:
            bad = a[(a < 0) | (a > 2)]
            raise SeedError(_unknown(bad))
        a = a.astype(np.uint8)
    if values:
        check_seed_values(a)
    if require_any and not a.any():
        raise SeedError(NO_SEEDS)
    return a


def check_seed_values(a: np.ndarray) -> None:
    """Raise :class:`SeedError` naming the values of uint8 ``a`` other than 0, 1, 2."""
    if a.size and a.max() > NOT_TUMOUR:
        raise SeedError(_unknown(a[a > NOT_TUMOUR]))


def _unknown(bad: np.ndarray) -> str:
    values = np.unique(bad)
    shown = ", ".join(str(int(v)) for v in values[:5]) + (", ..." if values.size > 5 else "")
    return (f"the seeds hold label value(s) {shown} at {bad.size} pixel(s); only 0 (no seed), "
            "1 (tumour) and 2 (not tumour) are allowed")


def check_prior(prior, shape) -> np.ndarray | None:
    """The tumour probability as float32 (H, W) clipped to [0, 1], or None.

    Raises ``ValueError`` for a wrong shape or values that are not finite.
    """
    if prior is None:
        return None
    p = np.asarray(prior, dtype=np.float32)
    if p.ndim == 3 and p.shape[0] == 2 and p.shape[1:] == tuple(shape[:2]):
        p = p[1]  # (C, H, W) two-class probabilities: the tumour channel
    if p.shape != tuple(shape[:2]):
        raise ValueError(f"the prior has shape {p.shape} but the image is {tuple(shape[:2])}")
    if not np.all(np.isfinite(p)):
        raise ValueError("the prior holds NaN or infinite values")
    return np.clip(p, 0.0, 1.0)


def check_image(image) -> np.ndarray:
    """RGB uint8 (H, W, 3) from RGB(A) input; ``ValueError`` for anything else."""
    a = np.asarray(image)
    if a.ndim != 3 or a.shape[-1] not in (3, 4) or a.shape[0] < 2 or a.shape[1] < 2:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {a.shape}")
    a = a[..., :3]
    if a.dtype != np.uint8:
        if a.dtype.kind == "f" and a.size and float(a.max()) <= 1.0:
            a = a * 255.0
        a = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return np.ascontiguousarray(a)
