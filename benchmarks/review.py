"""Slide review with a simulated reviewer: how fast does slide Dice rise, by field order?

Slide: BCSS test region 1015 (4096 x 2048, its 32 tiles of ../shared/data/bcss laid out
as one slide) with its tumour mask as truth. The bundled model segments it once (cached
in --cache); the review cuts the tissue into fields (``--size``, default 256) and the
simulated annotator of DESIGN.md corrects each field with up to ``--clicks`` (5) clicks
on a RefineSession over the field with the model's probability as prior, keeping the
best mask it saw (a reviewer does not accept a correction that made the field worse).
A field's correction does not depend on when it is reviewed, so every order replays the
same corrections; slide Dice after each field is then exact for any number of orders.

Orders: ``entropy`` (review/ranking, the widget's default), ``raster`` (top row first),
``random`` (``--seeds`` seeds, mean and spread) and ``oracle`` (fields by the errors their
correction removes, known only with the truth: the best any ranking could do). Reports the slide Dice of the model,
after all fields, and the number of fields each order needs to reach ``--target`` (0.90
by default; the ceiling is printed when the target is out of reach), plus Dice after
10 %, 25 % and 50 % of the fields.

    python benchmarks/review.py                  # ~6 min segmenting + ~2.5 min corrections on 2 busy cores
                                                 # (both cached in --cache: a rerun takes seconds)
    python benchmarks/review.py --size 512 --seeds 20 --json out.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
BCSS = REPO.parent / "shared" / "data" / "bcss"


def region(group: str = "1015"):
    from skimage.io import imread

    meta = json.loads((BCSS / "dataset.json").read_text())
    ts = [t for t in meta["tiles"] if t.get("group") == group]
    if not ts:
        raise SystemExit(f"no tiles of region {group} in {BCSS}")
    h, w = max(t["y"] + t["height"] for t in ts), max(t["x"] + t["width"] for t in ts)
    img, truth = np.zeros((h, w, 3), np.uint8), np.full((h, w), 255, np.uint8)
    for t in ts:
        ys, xs = slice(t["y"], t["y"] + t["height"]), slice(t["x"], t["x"] + t["width"])
        img[ys, xs] = imread(BCSS / t["image"])[..., :3]
        truth[ys, xs] = imread(BCSS / t["mask"])
    return img, truth


def counts(pred, truth):
    v = truth != 255
    p, t = (pred == 1) & v, (truth == 1) & v
    return np.array([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()], np.int64)


def dice_of(c):
    tp, fp, fn = c
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def correct(img, truth, prob, f, clicks):
    """The best mask the simulated reviewer reaches on field ``f`` (and the clicks used)."""
    from napari_histoseg.refinement.robot import session_refiner, simulate_clicks

    ys, xs = f.slices
    im, tr, pr = img[ys, xs], truth[ys, xs], prob[ys, xs]
    start = (pr >= 0.5).astype(np.uint8)
    best = [int(counts(start, tr)[1:].sum()), start, 0]

    def seen(k, _seeds, labels):
        err = int(counts(labels, tr)[1:].sum())
        if err < best[0]:
            best[:] = [err, labels.copy(), k]

    simulate_clicks(im, tr, session_refiner(), prior=pr, max_clicks=clicks, on_click=seen)
    return best[1], best[2]


def curve(order, deltas, base):
    c = base.copy()
    out = [dice_of(c)]
    for i in order:
        c = c + deltas[i]
        out.append(dice_of(c))
    return np.array(out)


def first_reaching(cur, target):
    hit = np.nonzero(cur >= target)[0]
    return int(hit[0]) if hit.size else None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--target", type=float, default=0.90)
    ap.add_argument("--cache", default="/tmp/histoseg-review-bench")
    ap.add_argument("--json")
    args = ap.parse_args(argv)

    from napari_histoseg.review import ReviewSource, make_fields, rank_fields

    img, truth = region()
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    pf = cache / "prob-1015.npy"
    t0 = time.time()
    if pf.is_file():
        prob = np.load(pf)
    else:
        from napari_histoseg.api import load_model
        from napari_histoseg.core.tiling import predict

        prob = np.asarray(predict(img, load_model()).probability, np.float32)
        np.save(pf, prob)
    t_seg = time.time() - t0
    from napari_histoseg.core.tissue import image_tissue

    src = ReviewSource.from_arrays(prob, None, image_tissue(img).mask, review_dir=cache / "review")
    fields = make_fields(src, args.size)
    base = counts((prob >= 0.5).astype(np.uint8), truth)
    t0 = time.time()
    deltas, used = {}, {}
    cf = cache / f"corrections-{args.size}-{args.clicks}.json"
    if cf.is_file():
        d = json.loads(cf.read_text())
        deltas = {int(k): np.array(v[0], np.int64) for k, v in d.items()}
        used = {int(k): v[1] for k, v in d.items()}
    for f in fields:
        if f.index in deltas:
            continue
        fixed, k = correct(img, truth, prob, f, args.clicks)
        ys, xs = f.slices
        deltas[f.index] = counts(fixed, truth[ys, xs]) - counts((prob[ys, xs] >= 0.5).astype(np.uint8), truth[ys, xs])
        used[f.index] = k
    cf.write_text(json.dumps({k: [v.tolist(), used[k]] for k, v in deltas.items()}))
    t_fix = time.time() - t0
    n = len(fields)
    orders = {"entropy": [f.index for f in rank_fields(fields, "entropy")],
              "raster": [f.index for f in rank_fields(fields, "raster")],
              # the bound: fields by the errors their correction removes (needs the truth)
              "oracle": sorted(deltas, key=lambda i: (deltas[i][1] + deltas[i][2], i))}
    rand = [[f.index for f in rank_fields(fields, "random", seed=s)] for s in range(args.seeds)]
    curves = {k: curve(o, deltas, base) for k, o in orders.items()}
    rcurves = np.stack([curve(o, deltas, base) for o in rand])
    ceiling = float(curves["raster"][-1])
    target = args.target if ceiling >= args.target else None
    res = {"slide": "bcss 1015", "shape": list(img.shape[:2]), "fields": n, "size": args.size, "clicks": args.clicks,
           "model_dice": float(curves["raster"][0]), "all_fields_dice": ceiling,
           "clicks_used": int(sum(used.values())), "seconds_segment": round(t_seg, 1),
           "seconds_corrections": round(t_fix, 1), "target": args.target, "orders": {}}
    at = {p: max(1, round(p * n)) for p in (0.1, 0.25, 0.5)}
    for name, cur in [*curves.items(), *[("random", None)]]:
        if cur is None:
            reach = [first_reaching(c, args.target) for c in rcurves]
            res["orders"]["random"] = {
                "fields_to_target": reach, "fields_to_target_mean": None if None in reach else float(np.mean(reach)),
                "fields_to_target_sd": None if None in reach else float(np.std(reach)),
                **{f"dice_at_{int(p * 100)}pct": [float(rcurves[:, k].mean()), float(rcurves[:, k].std())]
                   for p, k in at.items()},
                "area_under_curve": [float(rcurves.mean(1).mean()), float(rcurves.mean(1).std())]}
        else:
            res["orders"][name] = {"fields_to_target": first_reaching(cur, args.target),
                                   **{f"dice_at_{int(p * 100)}pct": float(cur[k]) for p, k in at.items()},
                                   "area_under_curve": float(cur.mean())}
    if target is None:
        res["note"] = f"the target {args.target} is above what correcting every field reaches ({ceiling:.3f})"
    print(json.dumps(res, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({**res, "curves": {k: v.tolist() for k, v in curves.items()},
                                               "random_mean": rcurves.mean(0).tolist()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
