"""Tiled inference engine vs a naive patch loop, same model, same image, one process.

The naive loop is what a first script does: cut the image into 224 x 224 patches and
feed them to the model one at a time (eager PyTorch, fp32, NCHW, torch.no_grad). The
engine is napari_histoseg.core.tiling.predict (batched tiles, channels-last,
inference_mode, blended overlaps), with PyTorch and with ONNX Runtime.

    python benchmarks/bench_inference.py [--size 2048] [--repeats 2]

Prints patches/s and megapixels/s of image covered for each, and the ratios.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import numpy as np
import torch


def load_image(size: int) -> np.ndarray:
    from napari_histoseg.plugin.samples import breast_carcinoma

    rgb = np.asarray(breast_carcinoma()[0][0])
    reps = -(-size // rgb.shape[0])
    tiled = np.concatenate([np.concatenate([rgb, rgb[:, ::-1]] * reps, axis=1)] * reps, axis=0)
    return np.ascontiguousarray(tiled[:size, :size])


def load(device="cpu"):
    from napari_histoseg import load_model
    from napari_histoseg.models.segmenter import Segmenter

    try:
        return load_model(device=device), "bundled default"
    except Exception:
        return Segmenter.random(device=device), "random unet-mobilenet_v2 (no bundled model)"


def naive_loop(model, image, patch=224):
    net = copy.deepcopy(model.module).to(memory_format=torch.contiguous_format).float().eval()
    H, W = image.shape[:2]
    out = np.zeros((H, W), np.float32)
    n = 0
    with torch.no_grad():
        for y in range(0, H - patch + 1, patch):
            for x in range(0, W - patch + 1, patch):
                p = image[y:y + patch, x:x + patch]
                t = torch.from_numpy(p).permute(2, 0, 1)[None].float()
                t = (t - 127.5) / 127.5
                out[y:y + patch, x:x + patch] = torch.sigmoid(net(t))[0, 0].numpy()
                n += 1
    return n, (H // patch) * patch * (W // patch) * patch


def engine(model, image, tile, overlap, batch):
    from napari_histoseg.core.tiling import predict

    totals = []
    predict(image, model, tile=tile, overlap=overlap, batch_size=batch, progress=lambda d, t: totals.append(t))
    return totals[-1], image.shape[0] * image.shape[1]


def timed(fn, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t)
    return best, result


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--no-onnx", action="store_true")
    args = ap.parse_args()

    image = load_image(args.size)
    model, which = load("cpu")
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}")
    print(f"model: {which}; image {args.size} x {args.size} px (sample tiled up)")
    rows = []
    t, (n, px) = timed(lambda: naive_loop(model, image), args.repeats)
    rows.append(("naive loop, 224 px patches, 1 at a time", n, px, t))
    batch = args.batch or "auto"
    engines = [("torch", model)]
    if not args.no_onnx:
        from napari_histoseg.models.onnx import OnnxSegmenter

        engines.append(("ONNX Runtime", OnnxSegmenter(model)))
    for label, m in engines:
        for tile in (args.tile, 256):
            t, (n, px) = timed(lambda: engine(m, image, tile, args.overlap, args.batch), args.repeats)  # noqa: B023
            rows.append((f"engine, {label}, tile {tile} overlap {args.overlap} batch {batch}", n, px, t))
    t, (n, px) = timed(lambda: engine(model, image, 224, 0, 16), args.repeats)
    rows.append(("engine, torch, same 224 px patches, no overlap, batch 16", n, px, t))
    base_mps = rows[0][2] / rows[0][3] / 1e6
    print(f"{'':62s} {'patches/s':>10s} {'MP/s':>7s} {'x naive':>8s}")
    for name, n, px, t in rows:
        mps = px / t / 1e6
        print(f"{name:62s} {n / t:10.1f} {mps:7.2f} {mps / base_mps:8.2f}")


if __name__ == "__main__":
    main()
