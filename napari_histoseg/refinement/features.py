"""The segmentation network's own features, for the refinement's affinities.

Colour separates tumour nests from stroma poorly on primary breast tissue (ROC areas
0.72-0.76 in BENCHMARKS.md); the network that made the prior has learnt a description of
the tissue around every pixel. :func:`model_features` runs it once over the image and
keeps the output of one layer (by default the decoder's last, at the image's resolution:
16 channels for the bundled U-Net), :func:`reduce_features` projects that onto its first
few principal components over the image, scaled to the units of the colour features, and
:class:`~napari_histoseg.refinement.session.RefineSession` takes the result as
``features=`` (how it enters the affinities: ``affinity`` in
:mod:`~napari_histoseg.refinement.params`).

>>> from napari_histoseg.refinement.features import session_features  # doctest: +SKIP
>>> feats = session_features(rgb, model)                              # doctest: +SKIP
>>> RefineSession(rgb, prior, features=feats, affinity="mixed")       # doctest: +SKIP
"""

from __future__ import annotations

import threading
import weakref

import numpy as np

from napari_histoseg.io.checks import InputError, check_int

__all__ = ["feature_layer", "model_features", "reduce_features", "session_features", "check_features",
           "FeatureCache"]


def feature_layer(module) -> str:
    """Dotted name of the layer whose output describes each pixel: ``net.decoder`` for
    the project's U-Nets (the decoder's last block, at full resolution, before dropout
    and the segmentation head); otherwise the module's ``feature_layer`` attribute."""
    name = getattr(module, "feature_layer", None)
    if name:
        return name
    if hasattr(module, "net") and hasattr(module.net, "decoder"):
        return "net.decoder"
    raise InputError(f"no feature layer known for {type(module).__name__}: give layer=")


def model_features(image: np.ndarray, model, layer: str | None = None, tile: int = 512,
                   overlap: int = 32) -> np.ndarray:
    """The output of one layer of ``model`` for every pixel of ``image``.

    Parameters
    ----------
    image : (H, W, 3) uint8
    model : Segmenter
        A loaded PyTorch segmentation model (``load_model(..., engine="torch")``); ONNX
        engines have no layers to read.
    layer : str, optional
        Dotted module name (default :func:`feature_layer`). A coarser layer is resized
        to the tile bilinearly.
    tile, overlap : int
        Tiles of at most ``tile`` px (rounded to 32), blended over ``overlap`` px.

    Returns
    -------
    (H, W, C) float32
    """
    import torch
    import torch.nn.functional as F

    from napari_histoseg.core.windows import STRIDE, blend_window, fit_tile, tile_starts

    module = getattr(model, "module", None)
    if not isinstance(module, torch.nn.Module):
        raise InputError("the network's features need a PyTorch model (load_model(..., engine='torch'))")
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise InputError(f"image must be (H, W, 3) uint8; got {image.shape} {image.dtype}")
    tile = check_int(tile, "tile", lo=2 * STRIDE)
    overlap = check_int(overlap, "overlap", lo=0, hi=tile // 2)
    name = layer or feature_layer(module)
    target = dict(module.named_modules()).get(name)
    if target is None:
        raise InputError(f"the model has no layer {name!r}")
    h, w = image.shape[:2]
    th, tw = fit_tile(h, tile, overlap), fit_tile(w, tile, overlap)
    got, me = [], threading.get_ident()

    def keep(_m, _i, out):  # the module may be shared: keep only this thread's own passes
        if threading.get_ident() == me:
            got.append(out)

    hook = target.register_forward_hook(keep)
    out = acc = None
    try:
        for y in tile_starts(h, th, th - overlap):
            for x in tile_starts(w, tw, tw - overlap):
                patch = image[y:y + th, x:x + tw]
                ph, pw = patch.shape[:2]
                # the encoder needs multiples of 32: pad by reflection, crop after
                py, px = (-ph) % STRIDE, (-pw) % STRIDE
                if py or px:
                    patch = np.pad(patch, ((0, py), (0, px), (0, 0)), mode="reflect")
                got.clear()
                with torch.inference_mode(), model.autocast():
                    module(model.to_tensor(patch[None]))
                f = got[-1].float()
                if f.shape[-2:] != patch.shape[:2]:
                    f = F.interpolate(f, size=patch.shape[:2], mode="bilinear", align_corners=False)
                f = f[0, :, :ph, :pw].permute(1, 2, 0).cpu().numpy()
                if out is None:
                    out = np.zeros((h, w, f.shape[-1]), np.float32)
                    acc = np.zeros((h, w, 1), np.float32)
                wgt = blend_window(ph, pw, overlap)[..., None]
                out[y:y + ph, x:x + pw] += f * wgt
                acc[y:y + ph, x:x + pw] += wgt
    finally:
        hook.remove()
    out /= acc
    return out


def reduce_features(features: np.ndarray, channels: int = 4, scale_to: np.ndarray | None = None,
                    sample: int = 20000, seed: int = 0) -> np.ndarray:
    """The first ``channels`` principal components of per-pixel ``features`` over the image.

    The components are fitted on ``sample`` pixels drawn with ``seed`` (so an image gives
    the same projection every time) and keep their relative variance (the distance between
    two pixels is the feature distance within the kept subspace). With ``scale_to`` (the
    colour features, (H, W, c)), the result is scaled so that its total variance equals
    theirs: a feature step then weighs as much as a colour step of the same rarity.

    Returns
    -------
    (H, W, channels) float32
    """
    f = np.asarray(features, np.float32)
    h, w, c = f.shape
    k = check_int(channels, "feature channels", lo=1, hi=c)
    flat = f.reshape(-1, c)
    rng = np.random.default_rng(seed)
    idx = rng.choice(flat.shape[0], size=min(sample, flat.shape[0]), replace=False)
    mean = flat[idx].mean(0)
    _, s, vt = np.linalg.svd(flat[idx] - mean, full_matrices=False)
    proj = (flat - mean) @ vt[:k].T
    if scale_to is not None:
        ref = np.asarray(scale_to, np.float32).reshape(-1, scale_to.shape[-1])[idx]
        target = float(ref.var(0).sum())
        have = float((s[:k] ** 2).sum() / max(idx.size - 1, 1))
        proj *= np.float32(np.sqrt(target / have) if have > 0 else 1.0)
    return proj.reshape(h, w, k).astype(np.float32)


def session_features(image: np.ndarray, model, channels: int = 4, layer: str | None = None) -> np.ndarray:
    """What :class:`RefineSession` takes as ``features=``: the model's features
    (:func:`model_features`) reduced to ``channels`` principal components and scaled to
    the image's CIELAB variance (:func:`reduce_features`)."""
    from napari_histoseg.refinement.graph import colour_features
    from napari_histoseg.refinement.seeds import check_image

    image = check_image(image)  # RGBA, 16-bit or float as the session reads them
    feats = model_features(image, model, layer=layer)
    return reduce_features(feats, channels, scale_to=colour_features(np.asarray(image), "lab"))


def check_features(features, shape) -> np.ndarray:
    """``features`` as (H, W, C) float32 of the image's ``shape``, finite, else InputError."""
    f = np.asarray(features)
    if f.ndim == 2:
        f = f[..., None]
    if f.ndim != 3 or f.shape[:2] != tuple(shape):
        raise InputError(f"features must be (H, W, C) with H, W = {tuple(shape)}; got {f.shape}")
    if not np.issubdtype(f.dtype, np.number):
        raise InputError(f"features must be numbers; got {f.dtype}")
    f = f.astype(np.float32, copy=False)
    if not np.isfinite(f).all():
        raise InputError("features must be finite (no NaN or infinity)")
    return f


class FeatureCache:
    """The network's features of the last image, kept for the next session on it.

    Starting a refinement again on the same image (another method, other parameters)
    needs the same features; :meth:`get` runs the model only when the image object or
    the ``key`` changed (the part of the image, and the loaded model compared as an object:
    one the backend loads again is another). One entry: the features of one image,
    (H, W, channels) float32, not the network's raw ones.

    >>> cache, runs = FeatureCache(), []
    >>> image = np.zeros((2, 2, 3), np.uint8)
    >>> f = cache.get(image, "m", lambda: runs.append(1) or np.ones((2, 2, 4), np.float32))
    >>> g = cache.get(image, "m", lambda: runs.append(1) or np.ones((2, 2, 4), np.float32))
    >>> g is f, len(runs)
    (True, 1)
    """

    def __init__(self):
        self._lock = threading.Lock()
        self._source = None   # a weak reference to the image object (or the object, if it takes none)
        self._key = None
        self._features = None

    def get(self, source, key, compute):
        """``compute()`` for ``source`` (the image object, compared by identity) and
        ``key`` (anything comparable), or the features it gave last time for both."""
        with self._lock:
            held = self._source() if self._source is not None else None
            if held is not None and held is source and self._key == key:
                return self._features
        features = compute()
        try:
            ref = weakref.ref(source)
        except TypeError:  # e.g. a list of levels: hold it (a replaced layer's data is a new object)
            ref = lambda s=source: s  # noqa: E731
        with self._lock:
            self._source, self._key, self._features = ref, key, features
        return features

    def clear(self) -> None:
        with self._lock:
            self._source = self._key = self._features = None
