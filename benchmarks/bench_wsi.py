"""Whole-slide streaming: flat memory, tiles skipped as background, throughput on tissue.

Builds pyramidal tiled TIFFs (JPEG tiles, 0.5 µm/px, SubIFD levels) of about 0.1 and 1
gigapixel from the real 512 x 512 tiles of ../shared/data/camelyon and bcss, laid out as
islands of tissue on white glass, written tile by tile (never whole in memory). Segments
each with ``napari_histoseg.wsi.segment_slide`` (bundled model, threaded scheduler) in its
own subprocess, so the peak resident memory printed is that size's alone; prints MP/s of
slide and of tissue, the fraction of tiles skipped as background and the peak RSS.
Then, in one process, the throughput on an all-tissue 2048 x 2048 region (--region): the streaming
path against the in-memory tiled engine (``inference.predict`` on the region as a numpy
array), alternated, with the ratio.

    python benchmarks/bench_wsi.py [--workdir /tmp/histoseg-wsi-bench] [--threads 1] [--sizes 0.1 1]
                                   [--tissue-fraction 0.15] [--region 2048] [--repeats 2]

The slides are kept in --workdir and reused (delete it to rebuild).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("HISTOSEG_SHARED", REPO.parent / "shared"))
CELL = 512
MPP = 0.5
SIDES = {"0.1": 10240, "1": 32768}   # 104.9 MP and 1073.7 MP


def source_tiles() -> list:
    from PIL import Image

    tiles = []
    for name in ("camelyon", "bcss"):
        folder = SHARED / "data" / name / "images"
        if not folder.is_dir():
            raise SystemExit(f"{folder} is not here: the benchmark needs ../shared/data")
        for p in sorted(folder.glob("*.png")):
            a = np.asarray(Image.open(p).convert("RGB"))
            if a.shape[:2] == (CELL, CELL):
                tiles.append(a)
    return tiles


def layout(n: int, seed: int = 0, fraction: float = 0.15) -> np.ndarray:
    """Cell map (n x n): -1 white glass, else the index of the source tile; islands of
    tissue (ellipses) until about ``fraction`` of the cells hold tissue."""
    rng = np.random.default_rng(seed)
    cells = np.full((n, n), -1, int)
    yy, xx = np.mgrid[:n, :n]
    while (cells >= 0).mean() < fraction:
        cy, cx = rng.uniform(0.1, 0.9, 2) * n
        ry, rx = rng.uniform(0.04, 0.15, 2) * n + 1
        inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        cells[inside & (cells < 0)] = rng.integers(0, 1 << 30, int((inside & (cells < 0)).sum()))
    return cells


def build(path: Path, cells: np.ndarray, tiles: list) -> None:
    import tifffile

    n = cells.shape[0]
    levels = 1
    while (n * CELL) >> levels >= 1024 and (CELL >> levels) >= 16:
        levels += 1
    small = {k: [] for k in range(levels)}
    for t in tiles:
        for k in range(levels):
            f = 1 << k
            small[k].append(t.reshape(CELL // f, f, CELL // f, f, 3).mean((1, 3)).astype(np.uint8) if f > 1 else t)

    def level_tiles(k):
        f = 1 << k
        c = CELL // f                      # a cell's edge at this level
        side = n * CELL // f
        for ty in range(0, side, CELL):
            for tx in range(0, side, CELL):
                out = np.full((CELL, CELL, 3), 245, np.uint8)
                for i in range(min(f, (side - ty) // c)):
                    for j in range(min(f, (side - tx) // c)):
                        v = cells[ty // c + i, tx // c + j]
                        if v >= 0:
                            t = small[k][v % len(tiles)]
                            out[i * c:(i + 1) * c, j * c:(j + 1) * c] = np.rot90(t, v // len(tiles) % 4)
                yield out

    kw = dict(tile=(CELL, CELL), photometric="rgb", compression="jpeg", compressionargs={"level": 90},
              dtype=np.uint8)
    tmp = path.with_name(path.name + ".part")
    with tifffile.TiffWriter(tmp, bigtiff=True) as tw:
        side = n * CELL
        tw.write(level_tiles(0), shape=(side, side, 3), subifds=levels - 1,
                 resolution=(1e4 / MPP, 1e4 / MPP), resolutionunit="CENTIMETER", **kw)
        for k in range(1, levels):
            tw.write(level_tiles(k), shape=(side >> k, side >> k, 3), subfiletype=1, **kw)
    tmp.replace(path)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(slide: str, out: str, threads: int) -> dict:
    """In a fresh subprocess: segment one slide, return timings and peak RSS."""
    import torch

    from napari_histoseg.wsi import segment_slide

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    res = segment_slide(slide, out, model_mpp=MPP, overwrite=True, workers=1)
    sec = time.perf_counter() - t0
    h, w = res.shape
    return {"slide": Path(slide).name, "megapixels": h * w / 1e6, "seconds": sec,
            "mp_per_s": h * w / 1e6 / sec, "tissue_mp": res.tissue_px / 1e6,
            "tissue_mp_per_s": res.tissue_px / 1e6 / sec, "tiles": res.tiles, "tiles_run": res.tiles_run,
            "tiles_skipped": res.tiles_skipped_fraction, "blocks": res.blocks,
            "blocks_with_tissue": res.blocks_with_tissue, "peak_rss_mb": peak_rss_mb()}


def compare(slide: str, workdir: Path, threads: int, repeats: int) -> dict:
    """Throughput on an all-tissue region: streaming against in-memory predict, alternated."""
    import tifffile
    import torch

    from napari_histoseg import load_model
    from napari_histoseg.core.tiling import predict
    from napari_histoseg.wsi import segment_slide

    torch.set_num_threads(threads)
    region = tifffile.imread(slide)
    model = load_model(device="cpu")
    predict(region[:512, :512], model)                        # warm-up
    stream, memory = [], []
    for _r in range(repeats):
        t0 = time.perf_counter()
        pred = predict(region, model, tile=model.meta.tile_size, overlap=64)
        memory.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        segment_slide(slide, workdir / "region.ome.zarr", model_mpp=MPP, overwrite=True, tissue=False)
        stream.append(time.perf_counter() - t0)
    import zarr

    ours = zarr.open_group(str(workdir / "region.ome.zarr"), mode="r")["0"][:] / 255.0
    mp = region.shape[0] * region.shape[1] / 1e6
    return {"megapixels": mp, "in_memory_s": min(memory), "stream_s": min(stream),
            "in_memory_mp_per_s": mp / min(memory), "stream_mp_per_s": mp / min(stream),
            "ratio_stream_over_in_memory": min(memory) / min(stream),
            "max_abs_diff": float(np.abs(ours - pred.probability).max()),
            "mean_abs_diff": float(np.abs(ours - pred.probability).mean())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/histoseg-wsi-bench")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a busy 2-core machine)")
    ap.add_argument("--sizes", nargs="+", default=["0.1", "1"], choices=sorted(SIDES))
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tissue-fraction", type=float, default=0.15, help="share of the slide's 512 px cells with tissue")
    ap.add_argument("--region", type=int, default=2048, help="edge of the all-tissue comparison region (px)")
    ap.add_argument("--no-compare", action="store_true")
    ap.add_argument("--_run", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--_compare", help=argparse.SUPPRESS)
    args = ap.parse_args()
    work = Path(args.workdir)
    if args._run:
        print("RESULT " + json.dumps(run_one(*args._run, args.threads)))
        return
    if args._compare:
        print("RESULT " + json.dumps(compare(args._compare, work, args.threads, args.repeats)))
        return
    work.mkdir(parents=True, exist_ok=True)
    tiles = None
    slides = {}
    for size in args.sizes + ([] if args.no_compare else ["region"]):
        path = (work / f"slide-{size}gp-{args.tissue_fraction:g}.tif" if size != "region"
                else work / f"tissue-{args.region}.tif")
        if not path.exists():
            tiles = tiles or source_tiles()
            n = SIDES[size] // CELL if size != "region" else args.region // CELL
            cells = (layout(n, seed=1, fraction=args.tissue_fraction) if size != "region"
                     else np.arange(n * n).reshape(n, n) * 7 % 1000)
            t0 = time.perf_counter()
            build(path, cells, tiles)
            print(f"built {path.name}: {n * CELL} x {n * CELL} px, {path.stat().st_size / 1e6:.0f} MB "
                  f"in {time.perf_counter() - t0:.0f} s", flush=True)
        slides[size] = path
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads {args.threads}; "
          f"load average before: {os.getloadavg()}", flush=True)
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--workdir", str(work), "--threads", str(args.threads),
               "--_run", str(slides[size]), str(work / f"slide-{size}gp.ome.zarr")]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            raise SystemExit(f"run of {size} GP failed:\n{out.stderr[-3000:]}")
        r = json.loads(line[0][7:])
        rows.append(r)
        print(f"{size:>4} GP  {r['megapixels']:7.0f} MP  {r['seconds']:7.1f} s  {r['mp_per_s']:6.2f} MP/s of slide  "
              f"{r['tissue_mp_per_s']:5.2f} MP/s of tissue ({r['tissue_mp']:.0f} MP)  "
              f"tiles skipped {100 * r['tiles_skipped']:4.1f} % ({r['tiles_run']}/{r['tiles']})  "
              f"peak RSS {r['peak_rss_mb']:.0f} MB   load {os.getloadavg()[0]:.2f}", flush=True)
    if len(rows) == 2:
        a, b = rows
        print(f"peak RSS {b['slide']} / {a['slide']}: {b['peak_rss_mb'] / a['peak_rss_mb']:.2f}x "
              f"for {b['megapixels'] / a['megapixels']:.1f}x the pixels (aim: <= 1.5x and < 2048 MB)")
    if not args.no_compare:
        cmd = [sys.executable, __file__, "--workdir", str(work), "--threads", str(args.threads),
               "--repeats", str(args.repeats), "--_compare", str(slides["region"])]
        out = subprocess.run(cmd, capture_output=True, text=True)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            raise SystemExit(f"comparison failed:\n{out.stderr[-3000:]}")
        c = json.loads(line[0][7:])
        print(f"all-tissue {c['megapixels']:.1f} MP region, best of {args.repeats}: in-memory predict "
              f"{c['in_memory_mp_per_s']:.2f} MP/s, streaming {c['stream_mp_per_s']:.2f} MP/s, ratio "
              f"{c['ratio_stream_over_in_memory']:.2f}x (max |diff| {c['max_abs_diff']:.3f}, mean "
              f"{c['mean_abs_diff']:.4f})   load {os.getloadavg()[0]:.2f}", flush=True)


if __name__ == "__main__":
    main()
