"""The entry points :func:`explain` and :func:`iter_explain`, targets and the tiled driver.

Tiling follows :mod:`napari_histoseg.inference` exactly (same tile starts, same
raised-cosine blend window, same mirrored reads, same context margin around a region),
so a heat map lines up pixel for pixel with the probability map of the same view.

How each kind of map is put together from tiles:

* **gradcam** and **mc-dropout** maps are per-location quantities (activations, moments
  of a probability). They are blended like predictions: a weighted mean of the tiles
  that cover a pixel.
* **shap** attributions are additive (they sum to the change of the target). The
  target of the whole view is the blended logit summed over the target pixels, so each
  tile explains its share of it: target pixel ``p`` counts in tile ``t`` with weight
  ``w_t(p) / sum_s w_s(p)``, and the tiles' attributions are *summed*. That is the exact
  gradient decomposition of the blended target (up to the receptive field cut at a
  tile's edge) and leaves no seams.
* **entropy** is computed from the blended probability of
  :func:`~napari_histoseg.inference.iter_predict`.

Normalisation (Grad-CAM to [0, 1], SHAP to [-1, 1]) is done **once, after blending**,
over the whole output, never per tile: tiles stay comparable, and a tile with little
evidence stays dim instead of being stretched to full red.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Generator, Optional

import numpy as np

from ..inference import STRIDE, Cancelled, _check_image, _read, _round_tile, blend_window, tile_starts

METHODS = ("gradcam", "shap", "entropy", "mc-dropout")
TARGETS = ("mask", "all", "view")

_DEFAULT_SAMPLES = {"shap": 8, "mc-dropout": 16}


class ExplainError(ValueError):
    """An explanation that cannot be computed as asked; the message says why and what to do."""


@dataclass
class _Plan:
    """Tiling of the context window around a region, as in ``inference.iter_predict``."""

    region: tuple[int, int, int, int]   # (ry, rx, rh, rw) in image pixels
    context: tuple[int, int, int, int]  # (cy0, cx0, ch, cw) in image pixels
    tile: tuple[int, int]               # (th, tw)
    origins: list                       # tile origins (y, x) in context pixels
    window: np.ndarray                  # (th, tw) blend weights

    def weight_sum(self) -> np.ndarray:
        """Total blend weight of every context pixel (as the inference engine accumulates it)."""
        _, _, ch, cw = self.context
        th, tw = self.tile
        weight = np.zeros((ch, cw), np.float32)
        for y, x in self.origins:
            h, w = min(th, ch - y), min(tw, cw - x)
            weight[y:y + h, x:x + w] += self.window[:h, :w]
        return weight


def _plan(shape, region, tile: int, overlap: int) -> _Plan:
    H, W = shape[:2]
    if region is None:
        region = (0, 0, H, W)
    ry, rx, rh, rw = (int(v) for v in region)
    if rh <= 0 or rw <= 0 or ry < 0 or rx < 0 or ry + rh > H or rx + rw > W:
        raise ValueError(f"region {tuple(region)} is not inside the image of {H} x {W} px")
    tile = _round_tile(tile)
    overlap = int(np.clip(overlap, 0, tile // 2))
    m = overlap
    cy0, cx0 = max(ry - m, 0), max(rx - m, 0)
    ch, cw = min(ry + rh + m, H) - cy0, min(rx + rw + m, W) - cx0
    th = min(tile, math.ceil(ch / STRIDE) * STRIDE)
    tw = min(tile, math.ceil(cw / STRIDE) * STRIDE)
    sy, sx = max(th - overlap, STRIDE), max(tw - overlap, STRIDE)
    origins = [(y, x) for y in tile_starts(ch, th, sy) for x in tile_starts(cw, tw, sx)]
    return _Plan((ry, rx, rh, rw), (cy0, cx0, ch, cw), (th, tw), origins, blend_window(th, tw, overlap))


def _resolve_model(model):
    """A Segmenter (or ONNX twin) from a model, a checkpoint path or None (bundled)."""
    if model is None or isinstance(model, (str, Path)):
        from ..api import load_model

        return load_model(model)
    return model


def _torch_model(model, method: str):
    """The torch :class:`Segmenter` behind ``model``: gradients and dropout need torch."""
    if hasattr(model, "module") and hasattr(model, "to_tensor"):
        return model
    twin = getattr(model, "torch_model", None)  # OnnxSegmenter keeps its torch twin
    if twin is not None:
        return twin
    raise ExplainError(
        f"method {method!r} needs the model's torch network (gradients or dropout), and "
        f"{type(model).__name__} has none; load it with engine='torch' (load_model(path))"
    )


def _private_copy(segmenter):
    """The segmenter with its own copy of the network.

    Grad-CAM hooks a layer, MC dropout switches dropout on: on a copy, a segmentation
    running at the same time on the same model (another napari worker) is untouched.
    """
    import copy

    twin = copy.copy(segmenter)
    twin.module = copy.deepcopy(segmenter.module).eval()
    return twin


def tumour_channel(model) -> int:
    """Output channel of the tumour class: 0 for a one-channel model, else from ``meta.classes``."""
    if int(model.out_channels) == 1:
        return 0
    for key, name in getattr(model.meta, "classes", {}).items():
        if str(name).lower() == "tumour":
            return int(key)
    return 1


def _target_array(target, plan: _Plan, image_shape) -> Optional[np.ndarray]:
    """A drawn (H, W) or region-shaped target as a boolean array over the context window."""
    arr = np.asarray(target)
    if arr.dtype != bool:
        if not np.issubdtype(arr.dtype, np.number):
            raise ExplainError(f"target must be one of {TARGETS} or a boolean (H, W) array")
        arr = arr != 0
    ry, rx, rh, rw = plan.region
    cy0, cx0, ch, cw = plan.context
    out = np.zeros((ch, cw), bool)
    oy, ox = ry - cy0, rx - cx0
    if arr.shape == tuple(image_shape[:2]):
        out[oy:oy + rh, ox:ox + rw] = arr[ry:ry + rh, rx:rx + rw]
    elif arr.shape == (rh, rw):
        out[oy:oy + rh, ox:ox + rw] = arr
    else:
        raise ExplainError(
            f"a target array must have the image's shape {tuple(image_shape[:2])} or the "
            f"region's ({rh}, {rw}); got {arr.shape}"
        )
    if not out.any():
        raise ExplainError("the target region is empty (no pixel inside the image or region)")
    return out


def iter_explain(
    image,
    model=None,
    method: str = "gradcam",
    *,
    target="mask",
    region: Optional[tuple[int, int, int, int]] = None,
    layer=None,
    tile: int = 512,
    overlap: int = 64,
    samples: Optional[int] = None,
    normalize: bool = True,
    preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    batch_size: int = 4,
    baseline: str = "blur",
    blur_sigma: float = 24.0,
    stdevs: float = 0.0,
    channel: Optional[int] = None,
    seed: int = 0,
) -> Generator[tuple[int, int], None, np.ndarray]:
    """Generator form of :func:`explain`: yields ``(tiles_done, tiles_total)`` after each
    tile and returns the heat map (``heat = yield from iter_explain(...)``).

    Closing the generator (a napari worker's ``quit()``) cancels between tiles. The
    parameters are those of :func:`explain`.
    """
    if method not in METHODS:
        raise ExplainError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if isinstance(target, str) and target not in TARGETS:
        raise ExplainError(f"unknown target {target!r}; use one of {TARGETS} or a boolean (H, W) array")
    image = _check_image(image)
    model = _resolve_model(model)
    ch_index = tumour_channel(model) if channel is None else int(channel)

    if method == "entropy":
        from ..inference import iter_predict
        from .uncertainty import entropy_bits

        pred = yield from iter_predict(image, model, tile=tile, overlap=overlap, batch_size=batch_size,
                                       region=region, preprocess=preprocess)
        return entropy_bits(pred.probability)

    segmenter = _private_copy(_torch_model(model, method))
    plan = _plan(image.shape, region, tile, overlap)
    n = int(samples) if samples is not None else _DEFAULT_SAMPLES.get(method, 0)
    if method in _DEFAULT_SAMPLES and n < 1:
        raise ExplainError(f"samples must be at least 1 for {method!r}, got {samples}")

    if method == "gradcam":
        from .gradcam import GradCam

        engine = GradCam(segmenter, layer=layer, channel=ch_index)
        combine, depth = "blend", 1
    elif method == "shap":
        from .shap import GradShap

        engine = GradShap(segmenter, channel=ch_index, samples=n, batch_size=batch_size,
                          baseline=baseline, blur_sigma=blur_sigma, stdevs=stdevs, seed=seed)
        combine, depth = "sum", 1
    else:  # mc-dropout
        from .uncertainty import McDropout

        engine = McDropout(segmenter, channel=ch_index, samples=n, seed=seed)
        combine, depth = "blend", 2

    ry, rx, rh, rw = plan.region
    cy0, cx0, ch, cw = plan.context
    th, tw = plan.tile
    oy, ox = ry - cy0, rx - cx0
    inside = np.zeros((ch, cw), bool)  # target pixels may only lie in the region
    inside[oy:oy + rh, ox:ox + rw] = True
    drawn = None if isinstance(target, str) else _target_array(target, plan, image.shape)
    use_prediction = isinstance(target, str) and target == "mask"
    tgt = inside if drawn is None else drawn
    total_weight = plan.weight_sum()
    share = np.where(inside, 1.0 / np.maximum(total_weight, 1e-12), 0).astype(np.float32)

    acc = np.zeros((depth, ch, cw), np.float32)
    weight = np.zeros((ch, cw), np.float32)
    total = len(plan.origins)
    yield 0, total
    for i, (y, x) in enumerate(plan.origins):
        h, w = min(th, ch - y), min(tw, cw - x)
        tile_rgb = _read(image, cy0 + y, cx0 + x, th, tw)
        if preprocess is not None:
            tile_rgb = preprocess(tile_rgb)
        tw_target = np.zeros((th, tw), np.float32)
        tw_target[:h, :w] = tgt[y:y + h, x:x + w]
        if combine == "sum":
            tw_target[:h, :w] *= plan.window[:h, :w] * share[y:y + h, x:x + w]
        extra = {}
        if method == "shap" and engine.margin and tw_target.any():
            # the baseline is blurred from a wider window, so it does not depend on the tiling
            m = engine.margin
            surround = _read(image, cy0 + y - m, cx0 + x - m, th + 2 * m, tw + 2 * m)
            extra["surround"] = preprocess(surround) if preprocess is not None else surround
        if method == "mc-dropout" or tw_target.any():
            out = engine(tile_rgb, tw_target, use_prediction=use_prediction, index=i, **extra)
        else:  # nothing of the target in this tile: nothing to explain here
            out = np.zeros((depth, th, tw), np.float32)
        out = out.reshape(depth, th, tw)
        if combine == "sum":
            acc[:, y:y + h, x:x + w] += out[:, :h, :w]
        else:
            acc[:, y:y + h, x:x + w] += out[:, :h, :w] * plan.window[:h, :w]
            weight[y:y + h, x:x + w] += plan.window[:h, :w]
        yield i + 1, total

    acc = acc[:, oy:oy + rh, ox:ox + rw]
    if combine == "blend":
        acc = acc / weight[oy:oy + rh, ox:ox + rw]
    if method == "mc-dropout":
        heat = np.sqrt(np.clip(acc[1] - acc[0] ** 2, 0, None))
    else:
        heat = acc[0]
        if normalize:
            scale = float(np.abs(heat).max())
            if scale > 0:
                heat = heat / scale
    return np.ascontiguousarray(heat, dtype=np.float32)


def explain(
    image,
    model=None,
    method: str = "gradcam",
    *,
    target="mask",
    region: Optional[tuple[int, int, int, int]] = None,
    layer=None,
    tile: int = 512,
    overlap: int = 64,
    samples: Optional[int] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    should_stop: Optional[Callable[[], bool]] = None,
    **kwargs,
) -> np.ndarray:
    """Heat map of why the model marked tumour, or of where it is unsure.

    Parameters
    ----------
    image : array-like, (H, W, 3)
        RGB H&E image: a numpy array or a lazy array (a slide level) read tile by tile.
    model : Segmenter, str or Path, optional
        A loaded model, a checkpoint path, or None for the bundled default. Gradient and
        dropout methods need the torch engine (an ONNX model's torch twin is used).
    method : {"gradcam", "shap", "entropy", "mc-dropout"}
        ``"gradcam"``: Grad-CAM on ``layer``, ReLU'd, upsampled (bilinear), in [0, 1].
        ``"shap"``: GradientShap attribution summed over RGB, signed, in [-1, 1]:
        positive pushes towards tumour, negative away from it.
        ``"entropy"``: binary entropy of the tumour probability in bits, in [0, 1]
        (normalised by log2 C for a C-class model).
        ``"mc-dropout"``: standard deviation of the tumour probability over ``samples``
        stochastic passes with only the dropout layers in training mode (BatchNorm
        stays in eval), in [0, 0.5].
    target : {"mask", "all", "view"} or bool ndarray
        What the attribution methods explain: ``"mask"`` the tumour logit summed over
        the pixels the model predicts as tumour (probability >= 0.5, per tile);
        ``"all"`` or ``"view"`` the tumour logit summed over the whole image or region;
        a boolean array of the image's (or the region's) shape, the logit summed over
        a region a person drew. Ignored by ``entropy`` and ``mc-dropout``.
    region : (y, x, h, w), optional
        Explain only this window of the image (with ``overlap`` px of context around
        it); the map then has shape (h, w).
    layer : str or torch.nn.Module, optional
        Grad-CAM layer, a dotted path in ``model.module`` (``"net.decoder.blocks.1"``).
        Default: :func:`napari_histoseg.explain.gradcam.default_layer`; see
        :func:`~napari_histoseg.explain.gradcam.candidate_layers` for the choices.
    tile, overlap : int
        Tiling as in :func:`napari_histoseg.inference.predict` (defaults 512 and 64).
    samples : int, optional
        Monte-Carlo samples: GradientShap interpolation samples (default 8) or
        dropout passes (default 16).
    progress : callable, optional
        Called as ``progress(tiles_done, tiles_total)``.
    should_stop : callable, optional
        Polled after each tile; when it returns True,
        :class:`~napari_histoseg.inference.Cancelled` is raised.
    **kwargs
        ``normalize`` (True; False returns Grad-CAM and SHAP in raw units: SHAP then
        sums to the target's change in logits), ``preprocess`` (a callable applied to
        every uint8 tile, as in inference), ``batch_size`` (4: tiles per prediction for
        entropy, samples per backward pass for SHAP), ``baseline`` (SHAP: ``"blur"``,
        ``"white"`` or ``"blur+white"``), ``blur_sigma`` (24 px), ``stdevs`` (SHAP input
        noise in normalised units, 0), ``channel`` (output channel, default the tumour
        class), ``seed`` (0; SHAP and MC dropout are reproducible).

    Returns
    -------
    heat : ndarray, float32, (H, W) or (h, w)
        The heat map over the image or region, finite everywhere.

    Raises
    ------
    ExplainError
        Unknown method, target or layer; MC dropout of a model without dropout; a
        gradient method on a model without its torch network.
    Cancelled
        When ``should_stop()`` returned True.

    Notes
    -----
    SHAP's baseline is the same tile blurred with a Gaussian of ``blur_sigma`` px: it
    keeps the local stain colour and brightness but erases nuclei, glands and fibres,
    so the attribution answers "which tissue structure made this tumour", not "is
    there purple here at all" (which an all-black or all-white baseline would).
    ``"white"`` is empty glass (RGB 240) instead; ``"blur+white"`` samples both.

    Examples
    --------
    >>> from napari_histoseg.models.segmenter import Segmenter
    >>> rgb = np.full((96, 128, 3), 200, np.uint8)
    >>> explain(rgb, Segmenter.random(), "entropy", tile=64).shape
    (96, 128)
    """
    gen = iter_explain(image, model, method, target=target, region=region, layer=layer, tile=tile,
                       overlap=overlap, samples=samples, **kwargs)
    try:
        while True:
            done, total = next(gen)
            if progress is not None:
                progress(done, total)
            if should_stop is not None and should_stop():
                gen.close()
                raise Cancelled(f"explanation cancelled after {done} of {total} tiles")
    except StopIteration as stop:
        return stop.value
