"""Optional input preprocessing of H&E tiles, as one configurable, JSON-storable step.

Order: stain normalisation -> CLAHE -> colour space -> standardisation. Every step is
off by default. Per-image parameters (the source's stains, its LAB statistics, the
standardisation statistics) are estimated once by :meth:`Preprocessor.fit`, e.g. on a
slide thumbnail, and then applied tile by tile. Everything except CLAHE is pointwise,
so tiles give exactly the whole image's result. CLAHE is local: a tile's result can
differ from the whole image's near the tile's borders (each tile equalises with its own
context); the tiled engine's overlap blending hides most of this in the predictions.

The config goes into a checkpoint's metadata (``ModelMeta.preprocessing``) so that a
model is always fed what it was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import numpy as np

from napari_histoseg.colour import normalise, stain

__all__ = ["PreprocessConfig", "Preprocessor", "STANDARD_MEAN", "STANDARD_STD"]

# Standardisation target, in uint8 units: each channel is mapped to mean 127.5 and std 50,
# so +-2.55 std fits in 0..255 before clipping (about 1 % of a normal channel clips).
STANDARD_MEAN = 127.5
STANDARD_STD = 50.0
# Floor on an estimated channel std (uint8 units), so a nearly uniform image is amplified
# at most 10x rather than blowing its noise up to the full range.
MIN_STD = 5.0

_STAIN_NORMS = (None, "macenko", "reinhard")
_COLOURS = ("rgb", "hed")


@dataclass
class PreprocessConfig:
    """What to do to each tile before the network sees it.

    Parameters
    ----------
    stain_norm : {None, "macenko", "reinhard"}
        Stain normalisation to ``target``.
    target : dict, optional
        Fitted target parameters (``MacenkoNormaliser(...).fit_target(img).to_dict()``);
        None uses the built-in reference (TIAToolbox's target image).
    clahe : bool
        Contrast-limited adaptive histogram equalisation of HSV value (hues kept).
    clahe_clip : float
        CLAHE clip limit in (0, 1].
    clahe_kernel : int
        CLAHE context size in pixels; fixed in pixels so that every tile size (and the
        whole image) uses the same context.
    colour : {"rgb", "hed"}
        ``"hed"`` feeds haematoxylin, eosin and DAB/residual concentrations
        (:func:`~napari_histoseg.colour.stain.hed_to_uint8`, fixed ranges) instead of RGB.
    standardise : bool
        Per-channel standardisation to mean 127.5, std 50 (uint8), statistics from ``fit``.

    Examples
    --------
    >>> cfg = PreprocessConfig(stain_norm="macenko", clahe=True)
    >>> PreprocessConfig.from_dict(cfg.to_dict()) == cfg
    True
    """

    stain_norm: str | None = None
    target: dict | None = None
    clahe: bool = False
    clahe_clip: float = 0.01
    clahe_kernel: int = 64
    colour: str = "rgb"
    standardise: bool = False

    def __post_init__(self):
        if self.stain_norm not in _STAIN_NORMS:
            raise ValueError(f"stain_norm must be one of {_STAIN_NORMS}, got {self.stain_norm!r}")
        if self.colour not in _COLOURS:
            raise ValueError(f"colour must be one of {_COLOURS}, got {self.colour!r}")
        if not 0.0 < float(self.clahe_clip) <= 1.0:
            raise ValueError(f"clahe_clip must be in (0, 1], got {self.clahe_clip}")
        if int(self.clahe_kernel) < 2:
            raise ValueError(f"clahe_kernel must be at least 2 pixels, got {self.clahe_kernel}")
        if self.target is not None:
            if self.stain_norm is None:
                raise ValueError("a stain target was given but stain_norm is None")
            normalise.normaliser_from_dict(self.target)  # validates; raises ValueError
            if self.target.get("method") != self.stain_norm:
                raise ValueError(f"target is for {self.target.get('method')!r}, "
                                 f"but stain_norm is {self.stain_norm!r}")

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None) -> "PreprocessConfig":
        """Inverse of :meth:`to_dict`; unknown keys raise ``ValueError``."""
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown preprocessing keys {unknown}; known: {sorted(known)}")
        return cls(**d)

    @property
    def is_identity(self) -> bool:
        """True when every step is off (tiles pass through unchanged)."""
        return (self.stain_norm is None and not self.clahe and self.colour == "rgb"
                and not self.standardise)

    def describe(self) -> str:
        """One line for a model card or a tooltip."""
        if self.is_identity:
            return "no preprocessing (raw RGB)"
        steps = []
        if self.stain_norm:
            ref = "custom target" if self.target else "TIAToolbox reference target"
            steps.append(f"{self.stain_norm.capitalize()} stain normalisation ({ref})")
        if self.clahe:
            steps.append(f"CLAHE on HSV value (clip {self.clahe_clip:g}, "
                         f"{self.clahe_kernel} px)")
        if self.colour == "hed":
            steps.append("HED stain channels (fixed ranges)")
        if self.standardise:
            steps.append(f"per-channel standardisation (mean {STANDARD_MEAN:g}, "
                         f"std {STANDARD_STD:g})")
        return " -> ".join(steps)


class Preprocessor:
    """Apply a :class:`PreprocessConfig` to uint8 RGB tiles.

    Parameters
    ----------
    config : PreprocessConfig or dict, optional
        None means identity.

    Examples
    --------
    >>> from skimage import data
    >>> img = data.immunohistochemistry()
    >>> pre = Preprocessor(PreprocessConfig(stain_norm="reinhard", standardise=True))
    >>> tile = pre.fit(img[::4, ::4])(img[:256, :256])  # fit on a thumbnail, then tiles
    >>> tile.shape, tile.dtype
    ((256, 256, 3), dtype('uint8'))
    """

    def __init__(self, config: PreprocessConfig | dict | None = None):
        if config is None:
            config = PreprocessConfig()
        elif isinstance(config, dict):
            config = PreprocessConfig.from_dict(config)
        self.config = config
        self.normalizer = None
        self.mean = self.std = None
        if config.stain_norm is not None:
            self.normalizer = (normalise.normaliser_from_dict(config.target) if config.target
                               else _DEFAULT_NORMALIZERS[config.stain_norm]())

    @property
    def is_identity(self) -> bool:
        """True when :meth:`__call__` returns its input unchanged."""
        return self.config.is_identity

    @property
    def needs_fit(self) -> bool:
        """True when per-image parameters must be estimated with :meth:`fit` first."""
        return self.config.stain_norm is not None or self.config.standardise

    @property
    def is_fitted(self) -> bool:
        norm_ok = self.normalizer is None or self.normalizer.is_fitted
        return norm_ok and (not self.config.standardise or self.mean is not None)

    def fit(self, rgb) -> "Preprocessor":
        """Estimate the per-image parameters from an image or its thumbnail.

        Stain normalisers estimate the source's stains (Macenko) or LAB statistics
        (Reinhard), which raises ``ValueError`` where there is too little tissue.
        Standardisation statistics are taken after the earlier steps, over tissue pixels
        when there are at least 100 (so the amount of background does not matter), else
        over all pixels, with the std floored at :data:`MIN_STD`.
        """
        rgb = _check(rgb)
        if self.normalizer is not None:
            self.normalizer.fit(rgb)
        if self.config.standardise:
            x = self._steps(rgb).reshape(-1, 3).astype(np.float64)
            tissue = stain.tissue_mask(rgb).reshape(-1)
            if tissue.sum() >= 100:
                x = x[tissue]
            self.mean = x.mean(axis=0)
            self.std = np.maximum(x.std(axis=0), MIN_STD)
        return self

    def _steps(self, x):
        cfg = self.config
        if self.normalizer is not None:
            x = self.normalizer.transform(x)
        if cfg.clahe:
            x = stain.clahe(x, clip_limit=cfg.clahe_clip, kernel_size=cfg.clahe_kernel)
        if cfg.colour == "hed":
            x = stain.hed_to_uint8(stain.deconvolve(x))
        return x

    def __call__(self, tile) -> np.ndarray:
        """Preprocess one (h, w, 3) uint8 tile; returns (h, w, 3) uint8."""
        tile = _check(tile)
        if self.is_identity:
            return tile
        if self.needs_fit and not self.is_fitted:
            raise RuntimeError("this Preprocessor needs fit(image_or_thumbnail) first: "
                               f"{self.config.describe()}")
        x = self._steps(tile)
        if self.config.standardise:
            z = (x.astype(np.float32) - self.mean.astype(np.float32)) / self.std.astype(
                np.float32)
            x = np.clip(np.rint(z * STANDARD_STD + STANDARD_MEAN), 0, 255).astype(np.uint8)
        return x

    def describe(self) -> str:
        """One-line description of the configured steps."""
        return self.config.describe()


_DEFAULT_NORMALIZERS = {"macenko": normalise.MacenkoNormaliser,
                        "reinhard": normalise.ReinhardNormaliser}


def _check(rgb) -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise ValueError(f"expected an (h, w, 3) RGB image, got shape {a.shape}")
    if a.dtype != np.uint8:
        raise ValueError(f"expected uint8 RGB, got {a.dtype}")
    return a if a.shape[-1] == 3 else a[..., :3]
