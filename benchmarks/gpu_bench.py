"""GPU throughput, prepared for one short run on a lent device machine (tools/gpu/bench.sh).

Four measurements, each printed as it finishes and written to ``--out`` (JSON and a log):

* ``patches``: the tumour model alone, fp16 (autocast) and fp32, channels-last, cuDNN autotuned,
  at a sweep of batch sizes; patches/s in 224 x 224 equivalents (pixels / 224²), and the tiled
  engine (``core.tiling.predict``) on a large image, megapixels/s;
* ``wsi``: ``segment-slides`` (``napari_histoseg.wsi.segment_slide``) on a synthetic pyramidal TIFF
  built from the bundled sample images, megapixels/s of the slide and of its tissue;
* ``serve``: ``histoseg serve`` on loopback (a uvicorn thread) with 1, 4 and 16 concurrent clients
  segmenting 1024² regions, with and without server-side batching: req/s, p50 and p95 latency;
* ``nuclei``: the bundled nucleus model on 1000² fields, nuclei/s.

Everything it needs travels with the repository (the bundled models and sample images); no data
from ../shared. ``--smoke`` runs every section tiny on the CPU, so the script is tested here.

    python benchmarks/gpu_bench.py --out OUTDIR [--sections patches wsi serve nuclei] [--smoke]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROWS: list[dict] = []


def log(msg: str) -> None:
    print(msg, flush=True)


def record(section: str, **row) -> None:
    ROWS.append({"section": section, **row})
    log(f"[{section}] " + ", ".join(f"{k} {v}" for k, v in row.items()))


def sample_rgb() -> np.ndarray:
    from napari_histoseg.plugin.samples import breast_carcinoma

    return np.asarray(breast_carcinoma()[0][0])


def tiled_image(side: int) -> np.ndarray:
    rgb = sample_rgb()
    reps = -(-side // min(rgb.shape[:2])) + 1
    row = np.concatenate([rgb, rgb[:, ::-1]] * reps, axis=1)
    return np.ascontiguousarray(np.concatenate([row, row[::-1]] * reps, axis=0)[:side, :side])


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def bench_patches(device: str, smoke: bool) -> None:
    import torch

    from napari_histoseg.core.tiling import predict
    from napari_histoseg.models.segmenter import Segmenter

    torch.backends.cudnn.benchmark = True
    model = Segmenter.bundled(device=device)
    dev = model.device
    net = model.module.eval().to(memory_format=torch.channels_last)
    sizes = [(224, [1, 4])] if smoke else [(224, [32, 64, 128, 256, 512, 1024]), (512, [16, 32, 64, 128, 256])]
    for side, batches in sizes:
        for dtype in ([torch.float32] if smoke else [torch.float16, torch.float32]):
            best = 0.0
            for b in batches:
                x = torch.randn(b, 3, side, side, device=dev).contiguous(memory_format=torch.channels_last)
                try:
                    with torch.inference_mode(), torch.autocast(dev.type, dtype=dtype,
                                                                enabled=dtype != torch.float32):
                        for _ in range(1 if smoke else 3):
                            net(x)
                        sync(dev)
                        n = 1 if smoke else max(3, int(2048 * 224 * 224 / (b * side * side)))
                        t0 = time.perf_counter()
                        for _ in range(n):
                            net(x)
                        sync(dev)
                        dt = time.perf_counter() - t0
                except torch.OutOfMemoryError:
                    record("patches", side=side, dtype=str(dtype).split(".")[-1], batch=b, result="out of memory")
                    torch.cuda.empty_cache()
                    break
                eq = n * b * side * side / (224 * 224) / dt
                best = max(best, eq)
                record("patches", side=side, dtype=str(dtype).split(".")[-1], batch=b,
                       patches_224_per_s=round(eq, 1), ms_per_batch=round(1000 * dt / n, 2))
                del x
            record("patches", side=side, dtype=str(dtype).split(".")[-1], best_patches_224_per_s=round(best, 1))
    # the tiled engine end to end (host tiling, uint8 transfer, blending), fp16 where on a GPU
    side = 1024 if smoke else 8192
    image = tiled_image(side)
    for half in ([False] if dev.type != "cuda" else [True, False]):
        model.half = half
        predict(image[:1024, :1024], model, tissue_gate=False)   # warm-up
        sync(dev)
        t0 = time.perf_counter()
        predict(image, model, tissue_gate=False)
        sync(dev)
        dt = time.perf_counter() - t0
        record("engine", image=f"{side}x{side}", half=half, megapixels_per_s=round(side * side / 1e6 / dt, 2),
               patches_224_per_s=round(side * side / (224 * 224) / dt, 1), seconds=round(dt, 2))
    model.half = False


def build_slide(path: Path, side: int, cell: int = 512, fraction: float = 0.4, seed: int = 0) -> None:
    """A pyramidal, tiled, uncompressed RGB TIFF: islands of sample tissue on white glass."""
    import tifffile

    rgb = sample_rgb()
    tiles = [rgb[y:y + cell, x:x + cell] for y in range(0, rgb.shape[0] - cell + 1, cell // 2)
             for x in range(0, rgb.shape[1] - cell + 1, cell // 2)]
    n = side // cell
    rng = np.random.default_rng(seed)
    cells = np.full((n, n), -1, int)
    yy, xx = np.mgrid[:n, :n]
    while (cells >= 0).mean() < fraction:
        cy, cx = rng.uniform(0.1, 0.9, 2) * n
        ry, rx = rng.uniform(0.05, 0.2, 2) * n + 1
        inside = (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1) & (cells < 0)
        cells[inside] = rng.integers(0, len(tiles), int(inside.sum()))

    def level(f):
        c = cell // f
        small = [t.reshape(c, f, c, f, 3).mean((1, 3)).astype(np.uint8) if f > 1 else t for t in tiles]
        lside = side // f
        for ty in range(0, lside, cell):
            for tx in range(0, lside, cell):
                out = np.full((cell, cell, 3), 245, np.uint8)
                for i in range(min(f, (lside - ty) // c)):
                    for j in range(min(f, (lside - tx) // c)):
                        v = cells[ty // c + i, tx // c + j]
                        if v >= 0:
                            out[i * c:(i + 1) * c, j * c:(j + 1) * c] = small[v]
                yield out

    factors = [f for f in (1, 4, 16) if side // f >= cell]
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        tw.write(level(1), shape=(side, side, 3), tile=(cell, cell), photometric="rgb", dtype=np.uint8,
                 subifds=len(factors) - 1, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
        for f in factors[1:]:
            tw.write(level(f), shape=(side // f, side // f, 3), tile=(cell, cell), photometric="rgb",
                     dtype=np.uint8, subfiletype=1)


def bench_wsi(device: str, smoke: bool, workdir: Path) -> None:
    from napari_histoseg.wsi import segment_slide

    side = 2048 if smoke else 24576
    slide = workdir / f"synthetic-{side}.tif"
    t0 = time.perf_counter()
    build_slide(slide, side)
    log(f"[wsi] built {slide.name} ({side} x {side} px) in {time.perf_counter() - t0:.1f} s")
    for run in range(1 if smoke else 2):            # the second run is warm (model loaded, cuDNN tuned)
        t0 = time.perf_counter()
        res = segment_slide(str(slide), str(workdir / f"out-{run}"), device=device, model_mpp=0.5,
                            overwrite=True)
        dt = time.perf_counter() - t0
        h, w = res.shape
        record("wsi", run=run, slide=f"{w}x{h}", seconds=round(dt, 1), megapixels_per_s=round(h * w / 1e6 / dt, 1),
               tissue_megapixels_per_s=round(res.tissue_px / 1e6 / dt, 1), tiles_run=res.tiles_run)


def bench_serve(device: str, smoke: bool) -> None:
    from bench_serve import run_clients  # the same clients as the CPU serving benchmark

    from napari_histoseg.backends.remote import RemoteBackend
    from napari_histoseg.models.bundled import bundled_model_path
    from napari_histoseg.server.app import ServerConfig, create_app
    from napari_histoseg.server.thread import ServerThread

    image = tiled_image(1024)
    ckpt = str(bundled_model_path())
    clients = [1, 2] if smoke else [1, 4, 16]
    per_client = 1 if smoke else 8
    for batching in (True, False):
        app = create_app(ServerConfig(device=device, models=[ckpt], bundled=False, batching=batching))
        srv = ServerThread(app)
        url = srv.start()
        ref = next(iter(app.state.store.entries.values())).ref
        RemoteBackend(url, timeout=600).segment_region(image, ref)   # warm-up
        for n in clients:
            def make_call(url=url, ref=ref):
                client = RemoteBackend(url, timeout=600)
                return lambda: client.segment_region(image, ref)

            row = run_clients(n, per_client, 600.0, make_call)
            record("serve", batching=batching, **row)
        srv.stop()


def bench_nuclei(device: str, smoke: bool) -> None:
    from napari_histoseg.nuclei.infer import detect_nuclei
    from napari_histoseg.nuclei.task import load_model

    model = load_model(None, device=device)
    side = 512 if smoke else 1000
    fields = [tiled_image(2000)[y:y + side, x:x + side] for y in (0, side) for x in (0, side)][: 1 if smoke else 4]
    detect_nuclei(fields[0][:256, :256], model)   # warm-up
    n, t0 = 0, time.perf_counter()
    for f in fields:
        labels, _ = detect_nuclei(f, model, features=False)
        n += int(len(np.unique(labels)) - (labels == 0).any())
    dt = time.perf_counter() - t0
    record("nuclei", fields=len(fields), field=f"{side}x{side}", nuclei=n, seconds=round(dt, 2),
           nuclei_per_s=round(n / dt, 1), fields_per_s=round(len(fields) / dt, 2))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="folder for gpu_bench.json")
    ap.add_argument("--sections", nargs="+", default=["patches", "wsi", "serve", "nuclei"],
                    choices=["patches", "wsi", "serve", "nuclei"])
    ap.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    ap.add_argument("--smoke", action="store_true", help="every section tiny (a CPU check of the script)")
    args = ap.parse_args(argv)
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "histoseg-gpu-bench"
    work.mkdir(parents=True, exist_ok=True)
    gpu = torch.cuda.get_device_name(0) if device == "cuda" else "none"
    record("machine", python=platform.python_version(), torch=torch.__version__, device=device, gpu=gpu,
           cpus=os.cpu_count(), load1=round(os.getloadavg()[0], 2))
    sections = {"patches": lambda: bench_patches(device, args.smoke),
                "wsi": lambda: bench_wsi(device, args.smoke, work),
                "serve": lambda: bench_serve(device, args.smoke),
                "nuclei": lambda: bench_nuclei(device, args.smoke)}
    failed = 0
    for name in args.sections:
        t0 = time.perf_counter()
        try:
            sections[name]()
        except Exception as e:  # noqa: BLE001 - one section failing must not lose the others
            import traceback

            failed += 1
            record(name, error=repr(e)[:300])
            traceback.print_exc()
        log(f"[{name}] section took {time.perf_counter() - t0:.1f} s")
        (out / "gpu_bench.json").write_text(json.dumps(ROWS, indent=1))   # after every section
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
