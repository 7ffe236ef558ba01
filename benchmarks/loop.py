"""The slide protocol: do a person's corrections make the model better on the rest of the slide?

::

    python benchmarks/loop.py [--model CKPT] [--data ../shared/data/bcss] [--split test]
                              [--ks 2 5 10] [--seeds 0 1 2] [--clicks 5] [--seconds 60]
                              [--train head] [--camelyon ../shared/data/camelyon] [--out R.json]

One region (bcss test: region 1015, 32 fields of 512 px) is one slide. For each seed:

1. The fields are put in a fixed order (a seeded shuffle; the same for every arm).
2. The simulated annotator (``refinement/robot.py``) corrects them one after another, up to
   ``--clicks`` clicks each (it stops at Dice 0.90), starting from the current model's mask,
   and keeps the best mask it saw; the pixels that differ from the model's mask are the edits.
   Clicks per field are recorded as it goes, beside the clicks the start model would have needed.
3. After ``k`` corrected fields (``--ks``) the start model is adapted to the first ``k``
   (:func:`napari_histoseg.tumour.adapt.adapt`, ``--seconds`` each), and the annotator
   goes on from the adapted model's masks. The **control** is the same adaptation on the start
   model's own, uncorrected masks of the same fields (no edits).
4. Reported after each ``k``: mean Dice on the fields not yet corrected (``order[k:]``) of the
   start model, the adapted model and the control; and, for the last ``k``, Dice on the
   ``--camelyon`` test split (forgetting).

The head-only adaptation changes the segmentation head alone, so its predictions are the start
model's decoder features through the new head; they are computed that way here (checked against
the full tiled prediction of the start model, ``check`` in the output). Other ``--train`` values
predict with the adapted checkpoint through ``Segmenter`` like any model.
Every figure is measured in this run; the adaptation budget is wall-clock seconds, so a loaded
machine runs fewer steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_histoseg.core.hashing import file_sha256  # noqa: E402
from napari_histoseg.core.scores import dice  # noqa: E402
from napari_histoseg.io.dataset import load_dataset  # noqa: E402
from napari_histoseg.models.bundled import bundled_model_path  # noqa: E402
from napari_histoseg.models.segmenter import Segmenter  # noqa: E402
from napari_histoseg.refinement.robot import noc, session_refiner, simulate_clicks  # noqa: E402
from napari_histoseg.tumour import adapt as adapt_mod  # noqa: E402
from napari_histoseg.tumour.adapt import _parts, adapt, cached_features  # noqa: E402
from napari_histoseg.tumour.adapt_data import Correction  # noqa: E402
from napari_histoseg.tumour.evaluate import predict_tile  # noqa: E402


class Predictor:
    """Tumour probability of the fields under a model: the start model's cached decoder
    features through a head (head-only adaptation), or the checkpoint's full prediction."""

    def __init__(self, start, images, head_only: bool, sha: str):
        self.start, self.images, self.head_only, self.sha = start, images, head_only, sha
        self.frozen = _parts(start.module, "head")[0]

    def _feat(self, key):  # the cache adapt() reads too: a field's features are computed once
        return cached_features(self.frozen, self.sha, "head", key, self.images[key])

    @torch.no_grad()
    def prob(self, seg, key) -> np.ndarray:
        img = self.images[key]
        if self.head_only:
            head = seg.module.net.segmentation_head
            p = torch.sigmoid(head(self._feat(key)))[0, 0].numpy()
            return p[:img.shape[0], :img.shape[1]]
        return predict_tile(img, seg)


def correct(img, truth, prob, clicks):
    """``(accepted mask, edits, clicks used, Dice of the model's mask, Dice accepted)``."""
    shown = (prob >= 0.5).astype(np.uint8)
    seen = {0: shown}
    d = simulate_clicks(img, truth, session_refiner(), prior=prob, max_clicks=clicks,
                        on_click=lambda k, seeds, labels: seen.update({k: labels.astype(np.uint8)}))
    best = max(seen, key=lambda j: (d[j], -j))
    return seen[best], seen[best] != shown, noc(d, 0.9), d[0], d[best]


def mean_dice(pred: Predictor, seg, keys, truths) -> float:
    return float(np.mean([dice((pred.prob(seg, k) >= 0.5).astype(np.uint8), truths[k]) for k in keys]))


def run_seed(seed, args, start, pred, keys, truths, cam, log):
    rng = np.random.default_rng(seed)
    order = [keys[i] for i in rng.permutation(len(keys))]
    current, corrections, controls, clicks, rounds = start, [], [], [], []
    out_dir = Path(args.workdir) / f"seed{seed}"
    for j, key in enumerate(order):
        prob = pred.prob(current, key)
        mask, edits, n, d_shown, d_acc = correct(pred.images[key], truths[key], prob, args.clicks)
        clicks.append({"field": key, "clicks": n, "dice_shown": round(d_shown, 4), "dice_accepted": round(d_acc, 4),
                       "model": "start" if current is start else f"adapted@{len(corrections)}"})
        corrections.append(Correction(key, pred.images[key], mask, edits))
        controls.append(Correction(key, pred.images[key], (pred.prob(start, key) >= 0.5).astype(np.uint8)))
        k = j + 1
        if k not in args.ks:
            continue
        rest = order[k:]
        row = {"k": k, "remaining": len(rest), "edited_px": int(sum(c.edited for c in corrections))}
        for arm, cs in (("adapted", corrections), ("control", controls)):
            s = adapt(args.model or "bundled", cs, out_dir / f"{arm}-k{k}.safetensors", seconds=args.seconds,
                      train=args.train, seed=seed, replay_count=args.replay_tiles)
            seg = Segmenter.from_checkpoint(s["checkpoint"], "cpu")
            row[arm] = mean_dice(pred, seg, rest, truths) if rest else None
            row[f"{arm}_seconds"], row[f"{arm}_steps"] = s["seconds"], s["steps"]
            row[f"{arm}_prepare_seconds"], row[f"{arm}_loss"] = s["prepare_seconds"], [s["start_loss"], s["final_loss"]]
            if arm == "adapted":
                current = seg
            if cam and k == max(args.ks):
                row[f"camelyon_{arm}"] = float(np.mean([dice((predict_tile(i, seg) >= 0.5).astype(np.uint8), t)
                                                        for i, t in cam]))
        row["start"] = mean_dice(pred, start, rest, truths) if rest else None
        rounds.append(row)
        log(f"seed {seed} k {k}: start {row['start']:.4f} adapted {row['adapted']:.4f} control {row['control']:.4f} "
            f"({row['adapted_seconds']:.0f} s, {row['adapted_steps']} steps)")
    return {"seed": seed, "order": order, "rounds": rounds, "clicks": clicks}


def summarise(results, ks, clicks_start, start_dice=None):
    lines = ["| k | fields left | start | adapted | control | adapted - start | adapted - control | seconds |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for k in ks:
        rows = [r for res in results for r in res["rounds"] if r["k"] == k and r.get("remaining")]
        if not rows:
            continue
        a, c, s = (np.array([r[x] for r in rows]) for x in ("adapted", "control", "start"))
        sec = np.array([r["adapted_seconds"] for r in rows])

        def pm(x):
            return f"{x.mean():+.3f} ± {x.std(ddof=1) if len(x) > 1 else 0:.3f}"
        lines.append(f"| {k} | {rows[0]['remaining']} | {s.mean():.3f} | {a.mean():.3f} | {c.mean():.3f} | "
                     f"{pm(a - s)} | {pm(a - c)} | {sec.mean():.0f} (max {sec.max():.0f}) |")
    lines.append("")
    bands = [(0, 2), (2, 5), (5, 10), (10, 20), (20, 32)]
    lines.append("| fields (in order) | clicks to Dice 0.90 (cap), adapting | same, start model | Dice of the mask "
                 "shown, adapting | same, start model |")
    lines.append("|---|---:|---:|---:|---:|")
    for lo, hi in bands:
        got = [c["clicks"] for res in results for c in res["clicks"][lo:hi]]
        base = [clicks_start[c["field"]] for res in results for c in res["clicks"][lo:hi]]
        shown = [c["dice_shown"] for res in results for c in res["clicks"][lo:hi]]
        shown0 = [start_dice[c["field"]] for res in results for c in res["clicks"][lo:hi]] if start_dice else [np.nan]
        if got:
            lines.append(f"| {lo + 1}-{min(hi, len(results[0]['clicks']))} | {np.mean(got):.2f} | {np.mean(base):.2f} "
                         f"| {np.mean(shown):.3f} | {np.mean(shown0):.3f} |")
    cam = [r for res in results for r in res["rounds"] if "camelyon_adapted" in r]
    if cam:
        lines.append("")
        lines.append(f"camelyon test after adapting to k = {cam[0]['k']}: adapted "
                     f"{np.mean([r['camelyon_adapted'] for r in cam]):.4f}, control "
                     f"{np.mean([r['camelyon_control'] for r in cam]):.4f}, start {cam[0]['camelyon_start']:.4f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="start checkpoint (default: the bundled model)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "bcss"))
    ap.add_argument("--split", default="test", help="the region's split (bcss test = region 1015)")
    ap.add_argument("--camelyon", default=str(ROOT.parent / "shared" / "data" / "camelyon"),
                    help="a folder whose test split measures forgetting ('' to skip)")
    ap.add_argument("--ks", type=int, nargs="+", default=[2, 5, 10])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--train", default="head", choices=["head", "decoder", "all"])
    ap.add_argument("--replay-tiles", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--workdir", default="/tmp/histoseg-loop")
    ap.add_argument("--limit", type=int, default=0, help="only the first N fields (a quick check)")
    ap.add_argument("--out", default=None, help="write every figure as JSON here (after each seed)")
    ap.add_argument("--summarise", default=None, metavar="JSON", help="print the tables of a saved run and stop")
    args = ap.parse_args(argv)
    if args.summarise:
        saved = json.loads(Path(args.summarise).read_text())
        print(summarise(saved["results"], saved["args"]["ks"], saved["clicks_start"], saved.get("start_dice")))
        return 0
    torch.set_num_threads(args.threads)
    t0 = time.time()

    def log(msg):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    if not (Path(args.data) / "dataset.json").is_file():
        print(f"no data at {args.data}; nothing measured")
        return 0
    ds = load_dataset(args.data).subset(args.split)
    images, masks = ds.load_all()
    keys = ds.ids()
    if args.limit:
        images, masks, keys = images[:args.limit], masks[:args.limit], keys[:args.limit]
    start = Segmenter.from_checkpoint(args.model, "cpu") if args.model else Segmenter.bundled("cpu")
    adapt_mod.MAX_CACHED = len(keys) + args.replay_tiles + 4
    pred = Predictor(start, dict(zip(keys, images)), head_only=args.train == "head",
                     sha=file_sha256(args.model or bundled_model_path()))
    truths = dict(zip(keys, masks))
    check = None
    if args.train == "head":  # the cached-feature prediction against the model's own tiled prediction
        k0 = keys[:3]
        full = [dice((predict_tile(pred.images[k], start) >= 0.5).astype(np.uint8), truths[k]) for k in k0]
        fast = [dice((pred.prob(start, k) >= 0.5).astype(np.uint8), truths[k]) for k in k0]
        check = {"fields": k0, "dice_full": full, "dice_cached": fast}
        log(f"check: full {np.round(full, 4)} cached {np.round(fast, 4)}")
    cam = []
    if args.camelyon and (Path(args.camelyon) / "dataset.json").is_file():
        c = load_dataset(args.camelyon).subset("test")
        cam = list(zip(*c.load_all()))
    clicks_start, start_dice = {}, {}
    for key in keys:
        _, _, clicks_start[key], start_dice[key], _ = correct(pred.images[key], truths[key], pred.prob(start, key),
                                                              args.clicks)
    log(f"start model: mean Dice {mean_dice(pred, start, keys, truths):.4f} on {len(keys)} fields; "
        f"{np.mean(list(clicks_start.values())):.2f} clicks per field")
    cam_start = float(np.mean([dice((predict_tile(i, start) >= 0.5).astype(np.uint8), t) for i, t in cam])) if cam else None
    results = []
    for seed in args.seeds:
        res = run_seed(seed, args, start, pred, keys, truths, cam, log)
        for r in res["rounds"]:
            if "camelyon_adapted" in r:
                r["camelyon_start"] = cam_start
        results.append(res)
        if args.out:
            Path(args.out).write_text(json.dumps({"args": vars(args), "check": check, "clicks_start": clicks_start,
                                                  "start_dice": start_dice, "results": results, "seconds": time.time() - t0}, indent=1))
        log("\n" + summarise(results, args.ks, clicks_start, start_dice))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
