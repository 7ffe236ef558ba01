"""The public API: plain numpy in, numpy out.

>>> from napari_histoseg import load_model, segment      # doctest: +SKIP
>>> model = load_model()                  # the bundled default model, best device
>>> prob = segment(rgb, model)            # float32 tumour probability (H, W)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def load_model(path: str | Path | None = None, device: str = "auto", engine: str = "auto",
               backend: str | None = None, token: str | None = None):
    """Load a segmentation model.

    Parameters
    ----------
    path : str or Path, optional
        A ``.safetensors`` checkpoint with histoseg metadata; None for the bundled
        default model.
    device : {"auto", "cpu", "cuda", "mps"}
        ``"auto"`` picks cuda, then mps, then cpu. Half precision is used on cuda.
    engine : {"auto", "torch", "torch-bf16", "onnx", "onnx-int8"}
        ``"auto"`` (default) picks the fastest engine that keeps the held-out Dice on this
        machine: ONNX Runtime int8 (the checked part of the network) on a CPU with VNNI where
        onnxruntime is installed and the checkpoint ships checked int8 ranges (the first call
        exports and quantises once, cached in the user's cache folder), else PyTorch under
        bfloat16 autocast on a CPU that computes bf16 in hardware (AVX512-BF16/AMX; about
        twice fp32's speed), else ``"torch"``; the model's ``engine``
        and ``engine_reason`` say what was chosen. ``"torch"``: PyTorch, float32 on a CPU
        (float16 on cuda). ``"torch-bf16"`` forces bfloat16. ``"onnx"`` / ``"onnx-int8"`` run
        the same weights through ONNX Runtime on the CPU, in fp32 or partly quantised to int8
        (needs the ``onnx`` extra; see BENCHMARKS.md › Inference for its speed and Dice).
    backend : str, optional
        ``"http://host:port"`` of a ``histoseg serve``: the model runs there (on its
        device; ``device`` and ``engine`` are ignored) and ``path`` is a local checkpoint
        to upload or the name of a model the server has. ``token`` is its bearer token.

    Returns
    -------
    Segmenter
        Takes uint8 RGB batches and returns probabilities; pass it to :func:`segment`.
    """
    if backend:
        from napari_histoseg.backends.remote import RemoteBackend

        return RemoteBackend(backend, token=token).model(path)
    from napari_histoseg.models.segmenter import load_segmenter

    return load_segmenter(path, device=device, engine=engine)


def segment(
    image: np.ndarray,
    model=None,
    *,
    tile: int | None = None,
    overlap: int = 64,
    batch_size: int | None = None,
    preprocess=None,
    region=None,
    progress=None,
    should_stop=None,
    tissue_gate: bool = True,
    tissue=None,
    mpp: float | None = None,
    magnification: float | str | None = None,
    tta: bool = False,
) -> np.ndarray:
    """Tumour probability of an RGB H&E image, tile by tile.

    Parameters
    ----------
    image : array-like (H, W, 3)
        RGB uint8 (RGBA and 16-bit are converted with a warning). Lazy arrays (a slide
        level) are read tile by tile.
    model : Segmenter, str or Path, optional
        A loaded model, a checkpoint path, or None for the bundled default.
    tile, overlap, batch_size, preprocess, region, progress, should_stop
        See :func:`napari_histoseg.core.tiling.predict`; ``tile`` defaults to the
        model's training tile size.
    tissue_gate, tissue
        Glass and background are not tumour: by default the probability is 0 outside
        the tissue (found on the image, or given as ``tissue``); ``tissue_gate=False``
        leaves every pixel to the model.
    mpp, magnification
        The image's µm per pixel, or its objective magnification (``20`` or ``"20x"``, read
        as 10 / magnification µm/px). The image is resampled to the model's scale
        (``model.meta.mpp``) for the prediction and the map comes back on the image's pixels.
        Neither given: the image is used as it is, with a warning when the model has a scale.
    tta
        Average over 4 flips (4x the time).

    Returns
    -------
    ndarray, float32
        (H, W) tumour probability for a binary model, (C, H, W) for a multi-class one.
    """
    from napari_histoseg.core.tiling import predict
    from napari_histoseg.io.checks import MPP_AT_1X, InputError, check_float, check_magnification

    if mpp is not None and magnification is not None:
        raise InputError("give mpp or magnification, not both")
    if mpp is not None:
        mpp = check_float(mpp, "mpp", lo=0.01, hi=100)
    elif magnification is not None:
        mpp = MPP_AT_1X / check_magnification(magnification)
    if model is None or isinstance(model, (str, Path)):
        model = load_model(model)
    if mpp is None and getattr(model.meta, "mpp", None):
        import warnings

        warnings.warn(f"the image's pixel size is unknown, so it is used as it is; the model works at "
                      f"{model.meta.mpp:g} µm/px: pass mpp= or magnification= if the image is at another "
                      "scale", stacklevel=2)
    tile = tile or model.meta.tile_size
    return predict(
        image, model, tile=tile, overlap=overlap, batch_size=batch_size,
        preprocess=preprocess, region=region, progress=progress, should_stop=should_stop,
        tissue_gate=tissue_gate, tissue=tissue, mpp=mpp, tta=tta,
    ).probability
