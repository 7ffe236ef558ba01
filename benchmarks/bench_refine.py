"""Time per interaction of the refinement, beside skimage's random_walker, in one run.

Images: real H&E at 1024 x 1024 (the top-left of BCSS region 1015, the bcss test split
in ../shared/data, with its tumour mask) and 4096 x 4096 (that 4096 x 2048 region over
its mirror image). Without ../shared the bundled TIAToolbox sample is tiled up instead
(and the clicks come from a mask made of its dark regions).

Clicks: the simulated annotator of docs/ARCHITECTURE.md (largest error, disk of 5 px) drives a warm
RefineSession for ``--clicks`` clicks without a prior; each ``update`` (one new click on
top of the earlier ones) is timed. random_walker (mode cg_mg, pyamg, beta 130) is timed
on the same image with the same seeds after several of those clicks (``--rw-at``); at
4096^2 it runs once (after the last click) because one run takes about a minute.
Prints median and 95th percentile per interaction and the ratio of medians.

    python benchmarks/bench_refine.py                  # 1024^2 and 4096^2
    python benchmarks/bench_refine.py --sizes 1024 --clicks 30
    python benchmarks/bench_refine.py --sizes 1024 --patterns clicks strokes random   # per method
    python benchmarks/bench_refine.py --threads 1 --sizes 1024 4096 --setup 3   # set-up only, by stage

``--threads N`` sets the OpenMP / BLAS thread counts before numpy loads (the timings in
BENCHMARKS.md are on one thread).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _threads(argv) -> None:
    """``--threads N``: the thread-count variables, set before numpy is imported."""
    for i, a in enumerate(argv):
        n = argv[i + 1] if a == "--threads" and i + 1 < len(argv) else a.partition("=")[2] if a.startswith(
            "--threads=") else None
        if n:
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
                os.environ[var] = n


if __name__ == "__main__":
    _threads(sys.argv[1:])

import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BCSS = REPO.parent / "shared" / "data" / "bcss"


def bcss_region(group: str = "1015"):
    from skimage.io import imread

    meta = json.loads((BCSS / "dataset.json").read_text())
    ts = [t for t in meta["tiles"] if t.get("group") == group]
    h = max(t["y"] + t["height"] for t in ts)
    w = max(t["x"] + t["width"] for t in ts)
    img, mask = np.zeros((h, w, 3), np.uint8), np.zeros((h, w), np.uint8)
    for t in ts:
        ys, xs = slice(t["y"], t["y"] + t["height"]), slice(t["x"], t["x"] + t["width"])
        img[ys, xs] = imread(BCSS / t["image"])[..., :3]
        mask[ys, xs] = imread(BCSS / t["mask"])
    return img, mask


def test_image(size: int):
    """(image, truth, description) of ``size`` x ``size`` real H&E."""
    if (BCSS / "dataset.json").exists():
        img, mask = bcss_region()
        while img.shape[0] < size or img.shape[1] < size:
            img = np.concatenate([img, img[::-1]], axis=0) if img.shape[0] < size else np.concatenate([img, img[:, ::-1]], 1)
            mask = np.concatenate([mask, mask[::-1]], axis=0) if mask.shape[0] < size else np.concatenate([mask, mask[:, ::-1]], 1)
        return img[:size, :size].copy(), mask[:size, :size].copy(), "BCSS region 1015 (bcss test split)"
    from scipy import ndimage

    from napari_histoseg.plugin.samples import breast_carcinoma

    tile = np.asarray(breast_carcinoma()[0][0])[..., :3]
    reps = -(-size // tile.shape[0])
    img = np.tile(tile, (reps, reps, 1))[:size, :size].copy()
    dark = ndimage.gaussian_filter(255.0 - img.mean(-1), 8)
    return img, (dark > np.percentile(dark, 60)).astype(np.uint8), "bundled TIAToolbox sample, tiled"


def pct(a, q):
    return float(np.percentile(np.asarray(a) * 1000.0, q))


def next_seed(pattern, pred, truth, k, rng):
    """``(mask, label)`` of the next interaction of ``pattern``: the robot's click or
    stroke, or a random click of alternating label (a hard pattern: every update
    moves the answer somewhere new)."""
    from napari_histoseg.refinement.robot import CLICK_RADIUS, _paint, next_click, next_stroke

    if pattern == "strokes":
        return next_stroke(pred, truth)
    if pattern == "random":
        c = (int(rng.integers(0, truth.shape[0])), int(rng.integers(0, truth.shape[1])), 1 + k % 2)
    else:
        c = next_click(pred, truth)
        if c is None:
            return None
    m = np.zeros(truth.shape, np.uint8)
    _paint(m, c[0], c[1], 1, CLICK_RADIUS)
    return m.astype(bool), c[2]


def run_pattern(size: int, steps: int, pattern: str, method: str, view: int = 0):
    """Time ``steps`` warm updates of ``pattern`` on ``size``^2 (no prior); with ``view``
    a square of that many px around the centre is on screen: the seeds fall in it and
    each update redraws only it."""
    from napari_histoseg.refinement import RefineSession

    img, truth, what = test_image(size)
    import skimage.segmentation  # noqa: F401  (a one-off import of about 0.6 s, not the session's)

    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    session = RefineSession(img, method=method)
    setup = time.perf_counter() - t0
    seeds = np.zeros(truth.shape, np.uint8)
    pred = np.zeros(truth.shape, np.uint8)
    rng = np.random.default_rng(0)
    v = None
    win = (slice(None), slice(None))
    if view and size > view:
        o = (size - view) // 2
        v, win = (o, o, view, view), (slice(o, o + view), slice(o, o + view))
    times, layers = [], []
    for k in range(steps):
        nxt = next_seed(pattern, pred[win], truth[win], k, rng)
        if nxt is None:
            break
        seeds[win][nxt[0]] = nxt[1]
        layers.append((seeds.copy(), nxt[0]))
        t = time.perf_counter()
        pred = session.update(seeds, view=v, gesture="stroke" if pattern == "strokes" else "click")
        times.append(time.perf_counter() - t)
    warm = times[1:]
    edits = []
    if len(layers) > 2:  # undo twice, redo, then erase the first interaction (a layer never seen)
        for layer in (layers[-2][0], layers[-3][0], layers[-2][0]):
            t = time.perf_counter()
            session.update(layer, view=v)
            edits.append(time.perf_counter() - t)
        erased = layers[-2][0].copy()
        erased[win][layers[0][1]] = 0
        t = time.perf_counter()
        session.update(erased, view=v)
        edits.append(time.perf_counter() - t)
    mpx = size * size / 1e6
    where = f"{size}^2" + (f", view {view}^2" if v else "")
    print(f"| {where} | {method} | {pattern} | {setup:.2f} s ({setup / mpx:.2f} s/Mpx) | {len(warm)} | "
          f"{pct(warm, 50):.1f} ms | {pct(warm, 95):.1f} ms | {times[0] * 1000:.1f} ms | "
          f"{load:.1f} -> {os.getloadavg()[0]:.1f} |")
    if edits:
        print(f"<!-- {where} {method} {pattern}: undo {edits[0] * 1000:.1f} / {edits[1] * 1000:.1f} ms, "
              f"redo {edits[2] * 1000:.1f} ms, erasing the first {'stroke' if pattern == 'strokes' else 'click'} {edits[3] * 1000:.1f} ms -->")


def run_setup(size: int, reps: int, method: str):
    """Time ``reps`` session set-ups on ``size``^2 (no prior): median and range in s/Mpx,
    and the median seconds of each stage (``RefineSession.timings["setup_parts"]``)."""
    from napari_histoseg.refinement import RefineSession

    img, _, _ = test_image(size)
    import skimage.segmentation  # noqa: F401  (a one-off import of about 0.6 s, not the session's)

    RefineSession(img[:128, :128], method=method)  # first-call costs (imports, caches) are not the session's
    mpx = size * size / 1e6
    total, parts, loads = [], [], []
    for _ in range(reps):
        loads.append(os.getloadavg()[0])
        session = RefineSession(img, method=method)
        total.append(session.timings["setup"] / mpx)
        parts.append(session.timings.get("setup_parts", {}))  # (older code: the total alone)
        del session
    stages = ", ".join(f"{k} {np.median([p[k] for p in parts]):.3f}" for k in parts[0]) or "-"
    print(f"| {size}^2 | {method} | {np.median(total):.2f} s/Mpx | {min(total):.2f}-{max(total):.2f} | {reps} | "
          f"{stages} | {min(loads):.1f}-{max(loads):.1f} |", flush=True)
    return total


def run(size: int, clicks: int, rw_at, view):
    from skimage.segmentation import random_walker

    from napari_histoseg.core.scores import dice
    from napari_histoseg.refinement import RefineSession
    from napari_histoseg.refinement.robot import _paint, next_click

    img, truth, what = test_image(size)
    print(f"\n## {size} x {size}: {what}")
    t0 = time.perf_counter()
    session = RefineSession(img)
    setup = time.perf_counter() - t0
    print(f"session setup (colour, SLIC, graphs): {setup:.2f} s; {session.graph.n} superpixels")
    seeds = np.zeros(truth.shape, np.uint8)
    pred = np.zeros(truth.shape, np.uint8)
    times, snapshots = [], {}
    for k in range(1, clicks + 1):
        if view:  # the person clicks on what is on screen
            vy, vx, vh, vw = view
            c = next_click(pred[vy:vy + vh, vx:vx + vw], truth[vy:vy + vh, vx:vx + vw])
            c = None if c is None else (c[0] + vy, c[1] + vx, c[2])
        else:
            c = next_click(pred, truth)
        if c is None:
            break
        _paint(seeds, *c)
        t = time.perf_counter()
        pred = session.update(seeds, view=view)
        times.append(time.perf_counter() - t)
        if k in rw_at:
            snapshots[k] = (seeds.copy(), pred.copy())
    warm = times[1:]
    print(f"ours: {len(times)} clicks; per interaction (clicks 2..{len(times)}, warm): median "
          f"{pct(warm, 50):.1f} ms, 95th percentile {pct(warm, 95):.1f} ms, max {pct(warm, 100):.1f} ms; "
          f"first click {times[0] * 1000:.1f} ms; Dice after {len(times)} clicks {dice(pred, truth):.3f}"
          + (f"; view {view}" if view else ""))
    rw_times = []
    for k, (s, ours) in sorted(snapshots.items()):
        if np.unique(s[s > 0]).size < 2:
            continue  # random_walker needs both classes
        t = time.perf_counter()
        rw = random_walker(img, s.astype(np.int32), beta=130, mode="cg_mg", channel_axis=-1)
        rw_times.append(time.perf_counter() - t)
        agree = float(np.mean((rw == 1) == (ours == 1)))
        print(f"random_walker cg_mg after click {k}: {rw_times[-1]:.2f} s "
              f"(Dice {dice((rw == 1).astype(np.uint8), truth):.3f}, agrees with ours on {100 * agree:.1f} % of pixels)")
    if rw_times:
        ratio = np.median(rw_times) / np.median(warm)
        print(f"random_walker: {len(rw_times)} run(s), median {np.median(rw_times):.2f} s; "
              f"ratio of medians random_walker / ours = {ratio:.0f}x")
    return dict(size=size, setup_s=setup, median_ms=pct(warm, 50), p95_ms=pct(warm, 95),
                rw_s=[float(x) for x in rw_times])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--rw-at", type=int, nargs="+", default=[5, 10, 20],
                    help="clicks after which random_walker runs (at 1024^2; 4096^2: the last only)")
    ap.add_argument("--patterns", nargs="+", choices=["clicks", "strokes", "random"],
                    help="instead of the random_walker comparison: time these interaction patterns "
                         "(robot clicks, robot strokes, random clicks of alternating label) per method")
    ap.add_argument("--methods", nargs="+", default=["confined", "lgc"],
                    help="RefineSession methods (confined, region, lgc)")
    ap.add_argument("--setup", type=int, default=0, metavar="N",
                    help="only time N session set-ups per size and method (s/Mpx, seconds per stage)")
    ap.add_argument("--threads", type=int, help="OpenMP / BLAS threads (set before numpy loads)")
    ap.add_argument("--view", type=int, default=0,
                    help="also time 4096^2 with a view of this many px square around the image centre")
    args = ap.parse_args(argv)
    print(f"# CPU cores: {os.cpu_count()}; numpy {np.__version__}; load average {os.getloadavg()[0]:.1f}")
    if args.setup:
        print("| image | method | set-up, median | range | sessions | median seconds per stage | load average |\n"
              "|---|---|---|---|---|---|---|")
        for size in args.sizes:
            for method in args.methods:
                run_setup(size, args.setup, method)
        return 0
    if args.patterns:
        print("| image | method | pattern | session setup | warm updates | median | 95th pct | first | "
              "load average (start -> end) |\n|---|---|---|---|---|---|---|---|---|")
        for size in args.sizes:
            for method in args.methods:
                for pattern in args.patterns:
                    run_pattern(size, args.clicks, pattern, method, args.view)
        return 0
    for size in args.sizes:
        rw_at = set(args.rw_at) if size <= 2048 else {max(args.rw_at)}
        run(size, args.clicks, rw_at, None)
        if args.view and size > args.view:
            v = ((size - args.view) // 2, (size - args.view) // 2, args.view, args.view)
            run(size, args.clicks, set(), v)
    return 0


if __name__ == "__main__":
    sys.exit(main())
