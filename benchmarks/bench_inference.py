"""Inference engines against a naive patch loop: same model, same image, one process.

The naive loop is what a first script does: cut the image into 224 x 224 patches and feed them
to the model one at a time (eager PyTorch, fp32, NCHW, torch.no_grad). The engine is
napari_histoseg.core.tiling.predict (batched tiles, channels-last, inference_mode, blended
overlaps) with each model engine: PyTorch fp32, PyTorch under bfloat16 autocast, ONNX Runtime
fp32 and ONNX Runtime int8 (static QDQ quantisation; see napari_histoseg/models/onnx.py), and
which of them ``engine="auto"`` picks on this machine; ``--grid`` times the two fast paths (bf16,
int8) by tile size and overlap.

    python benchmarks/bench_inference.py [--size 2048] [--repeats 2] [--threads 2] [--dice]
                                         [--grid] [--calibration samples|shared] [--cpu-time]

Prints the load average before and after, patches/s and megapixels/s of image covered for each
path and its ratio to the naive loop; with ``--dice`` the held-out mean Dice of each engine on
../shared/data/camelyon and ../shared/data/bcss (test splits), with ``--grid`` the engine's
time per tile size and overlap, so the defaults are chosen by measurement.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def load_image(size: int) -> np.ndarray:
    from napari_histoseg.plugin.samples import breast_carcinoma

    rgb = np.asarray(breast_carcinoma()[0][0])
    reps = -(-size // rgb.shape[0])
    tiled = np.concatenate([np.concatenate([rgb, rgb[:, ::-1]] * reps, axis=1)] * reps, axis=0)
    return np.ascontiguousarray(tiled[:size, :size])


def naive_loop(model, image, patch=224):
    net = copy.deepcopy(model.module).to(memory_format=torch.contiguous_format).float().eval()
    mean = torch.tensor(model.meta.mean).view(1, 3, 1, 1)
    std = torch.tensor(model.meta.std).view(1, 3, 1, 1)
    H, W = image.shape[:2]
    out = np.zeros((H, W), np.float32)
    n = 0
    with torch.no_grad():
        for y in range(0, H - patch + 1, patch):
            for x in range(0, W - patch + 1, patch):
                t = torch.from_numpy(image[y:y + patch, x:x + patch]).permute(2, 0, 1)[None].float()
                out[y:y + patch, x:x + patch] = torch.sigmoid(net((t - mean) / std))[0, 0].numpy()
                n += 1
    return n, (H // patch) * patch * (W // patch) * patch


def engine(model, image, tile, overlap, batch=None):
    from napari_histoseg.core.tiling import predict

    totals = []
    predict(image, model, tile=tile, overlap=overlap, batch_size=batch, tissue_gate=False,
            progress=lambda d, t: totals.append(t))
    return totals[-1], image.shape[0] * image.shape[1]


CLOCK = time.perf_counter   # --cpu-time: time.process_time (this process's CPU seconds)


def timed(fn, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        t = CLOCK()
        result = fn()
        best = min(best, CLOCK() - t)
    return best, result


def shared_calibration(n_per_set: int = 8, tile: int = 256):
    """Training-split tiles of camelyon and bcss (never test tiles), cut to ``tile`` px."""
    from napari_histoseg.io.dataset import load_dataset

    tiles = []
    for name in ("camelyon", "bcss"):
        ds = load_dataset(SHARED / name).subset("train")
        for i in np.linspace(0, len(ds) - 1, n_per_set).astype(int):
            image, _ = ds.load(int(i))
            tiles += [image[y:y + tile, x:x + tile] for y in (0, tile) for x in (0, tile)]
    return tiles


def held_out_dice(model) -> dict:
    from napari_histoseg.tumour.evaluate import evaluate

    out = {}
    for name in ("camelyon", "bcss"):
        if (SHARED / name / "dataset.json").is_file():
            r = evaluate(SHARED / name, model=model, split="test")
            out[name] = round(r["mean"]["mean_dice"], 4)
    return out


def rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=2048)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch and ONNX Runtime threads")
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--overlap", type=int, default=64)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--no-onnx", action="store_true")
    ap.add_argument("--calibration", choices=["default", "shared"], default="default",
                    help="int8 calibration: the engine's default (the ranges shipped beside the checkpoint, "
                         "else the bundled sample images) or training tiles of ../shared/data")
    ap.add_argument("--dice", action="store_true", help="held-out Dice of each engine (test splits)")
    ap.add_argument("--grid", action="store_true", help="time tile sizes and overlaps (auto's engine, int8)")
    ap.add_argument("--no-bf16", action="store_true", help="skip the PyTorch bf16 row")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time by this process's CPU seconds instead of the wall clock (use with --threads 1 on "
                         "a busy machine: other jobs then slow the wall clock but not the CPU seconds)")
    ap.add_argument("--json", help="write the rows here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cpu_time:
        global CLOCK
        CLOCK = time.process_time
    from napari_histoseg import load_model
    from napari_histoseg.core.device import cpu_has_bf16, cpu_has_vnni

    load_before = os.getloadavg()
    image = load_image(args.size)
    model = load_model(device="cpu", engine="torch")
    threads = torch.get_num_threads()
    picked = load_model(device="cpu", engine="auto")
    auto, why = picked.engine, picked.engine_reason
    del picked
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {os.cpu_count()} cores, "
          f"{threads} threads, torch {torch.__version__}, bf16 instructions {cpu_has_bf16()}, "
          f"VNNI {cpu_has_vnni()}; load average before {load_before[0]:.2f}")
    print(f"model: {model.description}; image {args.size} x {args.size} px (sample tiled up)")
    print(f"engine='auto' here: {auto} ({why}); timed by {'CPU seconds' if args.cpu_time else 'wall clock'}")
    rows = []
    t, (n, px) = timed(lambda: naive_loop(model, image), args.repeats)
    rows.append({"path": "naive loop: torch fp32, 224 px patches, one at a time", "n": n, "px": px, "s": t})
    engines = [("torch fp32", model)]
    if not args.no_bf16:
        engines.append(("torch bf16", load_model(device="cpu", engine="torch-bf16")))
    if not args.no_onnx:
        from napari_histoseg.models.onnx import OnnxSegmenter

        calib = shared_calibration() if args.calibration == "shared" else None
        engines.append(("ONNX fp32", OnnxSegmenter(model, threads=threads)))
        int8 = OnnxSegmenter(model, threads=threads, precision="int8", calibration=calib)
        engines.append((f"ONNX int8 ({int8.calibration})", int8))
    for label, m in engines:
        t, (n, px) = timed(lambda: engine(m, image, args.tile, args.overlap, args.batch), args.repeats)  # noqa: B023
        rows.append({"path": f"engine: {label}, tile {args.tile}, overlap {args.overlap}", "n": n, "px": px,
                     "s": t, "engine": label})
    base = rows[0]["px"] / rows[0]["s"]
    print(f"{'':70s} {'tiles/s':>8s} {'MP/s':>6s} {'x naive':>8s}")
    for r in rows:
        r["ratio"] = round(r["px"] / r["s"] / base, 2)
        print(f"{r['path']:70s} {r['n'] / r['s']:8.1f} {r['px'] / r['s'] / 1e6:6.2f} {r['ratio']:8.2f}")
    grid = [e for e in engines if e[0] == "torch bf16" or e[0].startswith("ONNX int8")] if args.grid else []
    for label, m in grid:
        print(f"\ntile size and overlap, {label}:")
        for tile in (256, 512, 1024):
            for overlap in (32, 64, 128):
                t, (n, px) = timed(lambda: engine(m, image, tile, overlap), args.repeats)  # noqa: B023
                ratio = px / t / base
                rows.append({"path": f"grid: {label}, tile {tile}, overlap {overlap}", "n": n, "px": px,
                             "s": t, "ratio": round(ratio, 2)})
                print(f"  tile {tile:5d} overlap {overlap:4d}: {px / t / 1e6:6.2f} MP/s, {ratio:5.2f} x naive",
                      flush=True)
    if args.dice:
        print("\nheld-out mean Dice (test splits, tissue gate on, as histoseg evaluate):")
        for label, m in engines:
            d = held_out_dice(m)
            for r in rows:
                if r.get("engine") == label:
                    r["dice"] = d
            print(f"  {label:40s} " + "  ".join(f"{k} {v:.4f}" for k, v in d.items()))
    load_after = os.getloadavg()
    print(f"\nload average after {load_after[0]:.2f}; peak RSS of this process {rss_mb():.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "load": [load_before[0], load_after[0]],
                                               "threads": threads, "argv": sys.argv[1:]}, indent=1))


if __name__ == "__main__":
    main()
