"""The entry points :func:`explain` and :func:`iter_explain`.

They check the request, pick the per-tile explainer (:mod:`.gradcam`, :mod:`.shap`,
:mod:`.uncertainty`) and run it over the inference engine's tiles (:mod:`.tiled`), so a
heat map lines up pixel for pixel with the probability map of the same view.
Predictive entropy comes straight from :func:`~napari_histoseg.core.tiling.iter_predict`.

Normalisation (Grad-CAM to [0, 1] by its maximum; SHAP to [-1, 1] by the 99.5th
percentile of its absolute values, clipped) is done **once, after blending**, over the
whole output, never per tile: tiles stay comparable, and a tile with little evidence stays
dim instead of being stretched to full red. The uncertainty maps are absolute (bits, probability spread) and never
normalised, so two views can be compared.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Generator, Optional

import numpy as np

from napari_histoseg.core.runs import drive
from napari_histoseg.core.windows import check_image, plan_tiles, read_window
from napari_histoseg.explanations.cost import DEFAULT_SAMPLES
from napari_histoseg.explanations.methods import DEFAULT_SALIENCY, METHODS, TARGETS, ExplainError
from napari_histoseg.explanations.tiled import iter_tiles, target_array

__all__ = ["METHODS", "TARGETS", "ExplainError", "explain", "iter_explain", "tumour_channel"]

_DEFAULT_SAMPLES = DEFAULT_SAMPLES


def default_regions(h: int, w: int) -> int:
    """Superpixels for a view of h x w px: about 48 per 1024 x 1024 (regions ~150 px wide), 16 to 96."""
    return int(np.clip(round(48 * h * w / 1024 ** 2), 16, 96))


def _resolve_model(model):
    """A Segmenter (or ONNX twin) from a model, a checkpoint path or None (bundled)."""
    if model is None or isinstance(model, (str, Path)):
        from napari_histoseg.models.segmenter import load_segmenter

        return load_segmenter(model)
    return model


def _torch_model(model, method: str):
    """The torch model behind ``model`` (gradients and dropout need torch), private to this
    explanation: Grad-CAM hooks a layer, MC dropout switches dropout on, and on a copy a
    segmentation running at the same time on the same model (another napari worker) is untouched."""
    from napari_histoseg.models.loaded import LoadedModel
    from napari_histoseg.models.onnx import OnnxSegmenter

    if not isinstance(model, (LoadedModel, OnnxSegmenter)):
        raise ExplainError(
            f"method {method!r} needs the model's torch network (gradients or dropout), and "
            f"{type(model).__name__} has none; load it with engine='torch' (load_model(path))"
        )
    torch_model = model.torch_model
    if not torch_model.explainable:
        raise ExplainError(f"{torch_model.description} is a {torch_model.task} model; "
                           f"{method!r} explains segmentation and classification models only")
    return torch_model.private_copy()


def tumour_channel(model) -> int:
    """Output channel of the tumour class: 0 for a one-channel model, else from ``meta.classes``."""
    if int(model.out_channels) == 1:
        return 0
    for key, name in model.meta.classes.items():
        if str(name).lower() == "tumour":
            return int(key)
    return 1


def _normalise(heat: np.ndarray, robust: bool) -> np.ndarray:
    """Divide by the largest absolute value, or (``robust``, for pixel-wise SHAP) by the
    99.5th percentile of the non-zero absolute values and clip to [-1, 1], so that a few
    extreme pixels do not wash the rest of the map out to white."""
    mag = np.abs(heat)
    scale = float(mag.max())
    if robust and scale > 0:
        scale = float(np.percentile(mag[mag > 0], 99.5)) or scale
    if scale <= 0:
        return heat
    return np.clip(heat / scale, -1.0, 1.0)


def iter_explain(
    image,
    model=None,
    method: str = DEFAULT_SALIENCY,
    *,
    target="mask",
    region: Optional[tuple[int, int, int, int]] = None,
    layer=None,
    tile: int = 512,
    overlap: int = 64,
    samples: Optional[int] = None,
    normalise: bool = True,
    preprocess: Optional[Callable[[np.ndarray], np.ndarray]] = None,
    batch_size: int = 4,
    baseline: str = "blur",
    blur_sigma: float = 24.0,
    stdevs: float = 0.0,
    channel: Optional[int] = None,
    seed: int = 0,
    regions: Optional[int] = None,
    scale: int = 1,
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
    image = check_image(image)
    model = _resolve_model(model)
    ch_index = tumour_channel(model) if channel is None else int(channel)

    if method == "entropy":
        from napari_histoseg.core.tiling import iter_predict
        from napari_histoseg.explanations.maps import calibrated, entropy_bits, temperature

        pred = yield from iter_predict(image, model, tile=tile, overlap=overlap, batch_size=batch_size,
                                       region=region, preprocess=preprocess)
        return entropy_bits(calibrated(pred.probability, temperature(model)))

    if method == "gradcam-ixg":  # Grad-CAM x the positive part of input x gradient
        kw = dict(target=target, region=region, tile=tile, overlap=overlap, preprocess=preprocess,
                  batch_size=batch_size, blur_sigma=blur_sigma, channel=ch_index)
        cam = yield from iter_explain(image, model, "gradcam", layer=layer, **kw)
        ixg = yield from iter_explain(image, model, "inputxgrad", **kw)
        heat = cam * np.clip(ixg, 0.0, None)
        return np.ascontiguousarray(_normalise(heat, robust=True) if normalise else heat, dtype=np.float32)

    torch_model = _torch_model(model, method)
    plan = plan_tiles(image.shape, region, tile, overlap)
    n = int(samples) if samples is not None else _DEFAULT_SAMPLES.get(method, 0)
    if method in _DEFAULT_SAMPLES and n < 1:
        raise ExplainError(f"samples must be at least 1 for {method!r}, got {samples}")

    if method == "superpixel-shap":
        from napari_histoseg.explanations.superpixel import SuperpixelShap

        cy0, cx0, ch, cw = plan.context
        ry, rx, rh, rw = plan.region
        rgb = read_window(image, cy0, cx0, ch, cw)
        if preprocess is not None:
            rgb = preprocess(rgb)
        if isinstance(target, str):
            tgt = np.zeros((ch, cw), bool)
            tgt[ry - cy0:ry - cy0 + rh, rx - cx0:rx - cx0 + rw] = True
        else:
            tgt = target_array(target, plan, image.shape)
        engine = SuperpixelShap(torch_model, channel=ch_index, samples=n,
                                regions=regions or default_regions(rh, rw), scale=scale,
                                blur_sigma=blur_sigma, batch_size=batch_size, seed=seed)
        heat = yield from engine.run(rgb, tgt, use_prediction=isinstance(target, str) and target == "mask")
        heat = heat[ry - cy0:ry - cy0 + rh, rx - cx0:rx - cx0 + rw]
        return np.ascontiguousarray(_normalise(heat, robust=True) if normalise else heat, dtype=np.float32)

    if method == "gradcam":
        from napari_histoseg.explanations.gradcam import GradCam

        engine = GradCam(torch_model, layer=layer, channel=ch_index)
    elif method == "hirescam":
        from napari_histoseg.explanations.gradients import HiResCam

        engine = HiResCam(torch_model, layer=layer, channel=ch_index)
    elif method == "inputxgrad":
        from napari_histoseg.explanations.gradients import InputXGrad

        engine = InputXGrad(torch_model, channel=ch_index, blur_sigma=blur_sigma)
    elif method == "shap":
        from napari_histoseg.explanations.shap import GradShap

        engine = GradShap(torch_model, channel=ch_index, samples=n, batch_size=batch_size,
                          baseline=baseline, blur_sigma=blur_sigma, stdevs=stdevs, seed=seed)
    elif method in ("tta", "tta-entropy", "tta-boundary"):
        from napari_histoseg.explanations.uncertainty import FlipTta

        engine = FlipTta(torch_model, channel=ch_index, samples=n)
    else:  # mc-dropout
        from napari_histoseg.explanations.uncertainty import McDropout

        engine = McDropout(torch_model, channel=ch_index, samples=n, seed=seed)

    drawn = None if isinstance(target, str) else target_array(target, plan, image.shape)
    use_prediction = isinstance(target, str) and target == "mask"
    acc = yield from iter_tiles(image, engine, plan, drawn, use_prediction=use_prediction, preprocess=preprocess)
    if method in ("tta-entropy", "tta-boundary"):
        from napari_histoseg.explanations.maps import boundary_proximity, calibrated, either, entropy_bits
        from napari_histoseg.explanations.maps import temperature as temp_of

        heat = entropy_bits(calibrated(acc[0], temp_of(torch_model)))
        if method == "tta-boundary":
            heat = either(heat, boundary_proximity(acc[0] >= 0.5))
    elif method in ("mc-dropout", "tta"):
        heat = np.sqrt(np.clip(acc[1] - acc[0] ** 2, 0, None))
    else:
        heat = acc[0]
        if normalise:
            heat = _normalise(heat, robust=method in ("shap", "inputxgrad"))
    return np.ascontiguousarray(heat, dtype=np.float32)


def explain(
    image,
    model=None,
    method: str = DEFAULT_SALIENCY,
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
    method : str
        One of :data:`~napari_histoseg.explanations.methods.METHODS`; default
        ``"gradcam-ixg"``: the Grad-CAM map times the positive part of input x gradient
        (:mod:`.gradients`), the most faithful by the deletion test of
        ``benchmarks/bench_explain.py`` (BENCHMARKS.md). ``"hirescam"``, ``"inputxgrad"``,
        ``"tta"`` (std of the tumour probability over the 8 flips/quarter turns) also.
        ``"gradcam"``: Grad-CAM on ``layer``, ReLU'd, upsampled (bilinear), in [0, 1].
        ``"shap"``: GradientShap attribution summed over RGB, signed, in [-1, 1]
        (scaled by the 99.5th percentile of its magnitude and clipped):
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
        Default: :func:`napari_histoseg.explanations.gradcam.default_layer`; see
        :func:`~napari_histoseg.explanations.gradcam.candidate_layers` for the choices.
    tile, overlap : int
        Tiling as in :func:`napari_histoseg.core.tiling.predict` (defaults 512 and 64).
    samples : int, optional
        Monte-Carlo samples: GradientShap interpolation samples (default 8) or
        dropout passes (default 16).
    progress : callable, optional
        Called as ``progress(tiles_done, tiles_total)``.
    should_stop : callable, optional
        Polled after each tile; when it returns True,
        :class:`~napari_histoseg.core.runs.Cancelled` is raised.
    **kwargs
        ``normalise`` (True; False returns Grad-CAM and SHAP in raw units: SHAP then
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
    return drive(gen, progress, should_stop, "explanation")
