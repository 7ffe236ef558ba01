"""Faithfulness (deletion test), uncertainty against errors, and speed of the explanations.

Deletion test (Petsiuk et al. 2018, RISE): replace the pixels of an image with the
baseline (the image blurred with a Gaussian of 24 px, the SHAP baseline) in order of
decreasing attribution, and follow the target score, the mean tumour probability over
the pixels the model called tumour on the intact image, as more pixels go. A faithful
map makes the score fall faster than the same deletion in random order, so the ratio
of the areas under the two curves, random / attribution, is above 1; higher is better
(the aim: >= 1.2 for the default saliency method, at both deletion units). Signed maps
are ordered by their signed value (most tumour-raising first); ties are broken at
random. The test runs with single pixels and with 16 x 16 squares (ranked by their mean
attribution) as the unit of deletion: random single pixels damage every neighbourhood at
once, so a smooth map does badly at pixels and well at squares, a sharp one the reverse.

Saliency candidates: the maps ``explain`` computes, and the products the package offers,
formed here from the same maps (``gradcam-ixg`` = Grad-CAM x positive input x gradient,
exactly as ``explain(..., "gradcam-ixg")``). The costly ones (GradientShap, superpixel SHAP,
HiResCAM) run on the first ``--costly`` tiles of each set (with a target) only.

Uncertainty: the pixel-level ROC AUC of each uncertainty map against "the model is wrong
here" (prediction at 0.5 differs from the ground-truth mask; ignore pixels left out), on
every test tile with both right and wrong pixels: 0.5 is chance.

Then the time to explain one 1024 x 1024 view (four adjacent BCSS test tiles) with each
method at its defaults, with the load average beside it.

    python benchmarks/bench_explain.py --jsonl /tmp/explain.jsonl   # every test tile of both sets
    python benchmarks/bench_explain.py --images 6 --no-deletion --no-timing --jsonl U   # as in BENCHMARKS.md
    python benchmarks/bench_explain.py --images 2 --costly 1 --costly-methods superpixel-shap --no-timing --jsonl D
    python benchmarks/bench_explain.py --images 2 --costly 1            # a shorter run
    python benchmarks/bench_explain.py --summary /tmp/explain.jsonl     # tables from a finished run
    python benchmarks/bench_explain.py --quick                          # a smoke run

Per-tile results go to ``--jsonl`` as they come (a run that is stopped resumes there).
Reads ../shared/data/{bcss,camelyon}; uses napari_histoseg/weights/default.safetensors if
it is there, else a random model (and says so: then the numbers mean nothing).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from skimage.io import imread

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("HISTOSEG_SHARED", REPO.parent / "shared"))

from napari_histoseg.core.scores import pixel_auc  # noqa: E402
from napari_histoseg.explanations import explain  # noqa: E402
from napari_histoseg.explanations.shap import stain_baseline  # noqa: E402
from napari_histoseg.explanations.uncertainty import FlipTta, boundary_proximity, either, entropy_bits  # noqa: E402
from napari_histoseg.models.segmenter import Segmenter  # noqa: E402

CHEAP = ("gradcam", "inputxgrad")
COSTLY = ("hirescam", "shap", "superpixel-shap")
#: candidates formed from the maps above: name -> (maps needed, how)
DERIVED = {
    "gradcam-ixg": (("gradcam", "inputxgrad"), lambda m: m["gradcam"] * np.clip(m["inputxgrad"], 0, None)),
    "gradcam-ixg4": (("gradcam", "inputxgrad"),
                     lambda m: m["gradcam"] * gaussian_filter(np.clip(m["inputxgrad"], 0, None), 4.0)),
    "hirescam-ixg": (("hirescam", "inputxgrad"), lambda m: m["hirescam"] * np.clip(m["inputxgrad"], 0, None)),
    "superpixel-shap-ixg": (("superpixel-shap", "inputxgrad"),
                            lambda m: np.clip(m["superpixel-shap"], 0, None) * np.clip(m["inputxgrad"], 0, None)),
}
UNCERTAINTY = ("entropy", "boundary", "entropy-boundary", "mc-dropout", "tta", "tta-entropy", "tta-boundary")


def load_model(path):
    bundled = REPO / "napari_histoseg" / "weights" / "default.safetensors"
    path = Path(path) if path else bundled
    if path.is_file():
        sha = hashlib.sha256(path.read_bytes()).hexdigest()[:8]
        return Segmenter.from_checkpoint(path, device="cpu"), f"{path.name} sha256 {sha}"
    print(f"!! {path} not found: using a RANDOM model; the faithfulness numbers mean nothing")
    return Segmenter.random(seed=0, device="cpu"), "random unet-mobilenet_v2"


def test_tiles(dataset, n=None):
    """The test tiles of ``dataset`` (sorted by id; the first ``n``) as (id, rgb, truth)."""
    meta = json.loads((SHARED / "data" / dataset / "dataset.json").read_text())
    tiles = sorted((t for t in meta["tiles"] if t.get("split") == "test"), key=lambda t: t["id"])
    for t in tiles[:n]:
        img = imread(SHARED / "data" / dataset / t["image"])[..., :3]
        truth = imread(SHARED / "data" / dataset / t["mask"])
        yield f"{dataset}/{t['id']}", img, truth[..., 0] if truth.ndim == 3 else truth


@torch.no_grad()
def score(model, batch, mask):
    """Mean tumour probability over ``mask`` for each image of a uint8 batch."""
    return model.predict(batch)[:, 0][:, mask].mean(1)


def deletion_auc(model, img, base, order, mask, steps, ends, batch=4):
    """Area under the deletion curve (fractions 0, 1/steps, ..., 1); ``ends`` = the scores of the
    intact and the fully blurred image, which every order shares."""
    n = order.size
    flat, fbase = img.reshape(-1, 3), base.reshape(-1, 3)
    images = []
    for f in np.linspace(0, 1, steps + 1)[1:-1]:
        cur = flat.copy()
        idx = order[: int(round(f * n))]
        cur[idx] = fbase[idx]
        images.append(cur.reshape(img.shape))
    inner = np.concatenate([score(model, np.stack(images[i:i + batch]), mask) for i in range(0, len(images), batch)])
    y = np.concatenate([[ends[0]], inner, [ends[1]]])
    return float(np.sum((y[1:] + y[:-1]) / 2) / steps)


def order_by(heat, rng, patch=1):
    """Pixel indices by decreasing value, ties in random order. With ``patch`` > 1 the
    image is deleted in ``patch`` x ``patch`` squares ranked by their mean value."""
    if patch == 1:
        return np.lexsort((rng.random(heat.size), -heat.ravel()))
    H, W = heat.shape
    blocks = heat.reshape(H // patch, patch, W // patch, patch).mean((1, 3))
    ranked = np.lexsort((rng.random(blocks.size), -blocks.ravel()))
    ids = np.arange(H * W).reshape(H // patch, patch, W // patch, patch).transpose(0, 2, 1, 3).reshape(-1, patch * patch)
    return ids[ranked].ravel()


def faithfulness(model, img, mask, names, steps, patches=(1, 16)):
    """Deletion ratios (random AUC / attribution AUC) per candidate and unit for one tile."""
    base = stain_baseline(img)[0]
    ends = score(model, np.stack([img, base]), mask)
    rng = np.random.default_rng(0)
    rand = {p: deletion_auc(model, img, base, order_by(rng.random(mask.shape), rng, p), mask, steps, ends)
            for p in patches}
    maps, secs = {}, {}
    for name in names:
        if name in DERIVED:
            continue
        t = time.perf_counter()
        maps[name] = explain(img, model, name, target="mask", tile=512)
        secs[name] = time.perf_counter() - t
    for name, (needs, how) in DERIVED.items():
        if all(n in maps for n in needs):
            maps[name] = how(maps)
    out = {}
    for name, heat in maps.items():
        out[name] = [rand[p] / deletion_auc(model, img, base, order_by(heat, rng, p), mask, steps, ends)
                     for p in patches]
    return out, secs


def uncertainty_maps(model, img):
    """Every candidate uncertainty map of one 512 px tile, from one prediction and one TTA."""
    prob = model.predict(img[None])[0, 0]
    pred = prob >= 0.5
    tta = FlipTta(model, samples=8)(img)
    tta_std = np.sqrt(np.clip(tta[1] - tta[0] ** 2, 0, None))
    ent, tta_ent, near = entropy_bits(prob), entropy_bits(tta[0]), boundary_proximity(pred)
    return pred, {
        "entropy": ent, "boundary": near, "entropy-boundary": either(ent, near),
        "mc-dropout": explain(img, model, "mc-dropout", tile=512),
        "tta": tta_std, "tta-entropy": tta_ent, "tta-boundary": either(tta_ent, boundary_proximity(tta[0] >= 0.5)),
    }


def errors_auroc(pred, truth, maps):
    valid = truth != 255
    wrong = np.where(valid, (pred != (truth > 0)).astype(np.uint8), 255)
    return float(wrong[valid].mean()), {k: pixel_auc(v, wrong) for k, v in maps.items()}


def summarise(records):
    print("\nDeletion test: ratio = AUC(random order) / AUC(attribution order); higher is better")
    by = {}
    for r in records:
        for name, (px, sq) in r.get("deletion", {}).items():
            by.setdefault(name, []).append((px, sq, r["id"].split("/")[0]))
    for name, rows in by.items():
        a = np.array([(p, s) for p, s, _ in rows])
        parts = []
        for ds in ("bcss", "camelyon"):
            d = np.array([(p, s) for p, s, k in rows if k == ds])
            if len(d):
                parts.append(f"{ds} {d[:, 0].mean():.3f}/{d[:, 1].mean():.3f} (n={len(d)})")
        print(f"  {name:<20} tiles {len(a):>2}  pixels mean {a[:, 0].mean():.3f} median {np.median(a[:, 0]):.3f} "
              f"(>1 on {int((a[:, 0] > 1).sum())})  squares mean {a[:, 1].mean():.3f} median {np.median(a[:, 1]):.3f} "
              f"(>1 on {int((a[:, 1] > 1).sum())})  |  " + "  ".join(parts))
    print("\nUncertainty vs error: pixel ROC AUC (model wrong at 0.5 vs ground truth)")
    aucs = {}
    for r in records:
        for k, v in r.get("auroc", {}).items():
            if v is not None and np.isfinite(v):
                aucs.setdefault(k, []).append((v, r["id"].split("/")[0]))
    for k, rows in aucs.items():
        a = np.array([v for v, _ in rows])
        parts = [f"{ds} {np.mean([v for v, d in rows if d == ds]):.3f}" for ds in ("bcss", "camelyon")
                 if any(d == ds for _, d in rows)]
        print(f"  {k:<17} tiles {len(a):>2}  mean {a.mean():.3f}  median {np.median(a):.3f}  min {a.min():.3f}  |  "
              + "  ".join(parts))


def view_1024():
    """Four adjacent BCSS test tiles of region 1015 as one contiguous 1024 x 1024 view."""
    d = SHARED / "data" / "bcss" / "images"
    ids = [["region-1015-y0-x0", "region-1015-y0-x512"], ["region-1015-y512-x0", "region-1015-y512-x512"]]
    return np.concatenate([np.concatenate([imread(d / f"{i}.png")[..., :3] for i in row], 1) for row in ids], 0)


def timing(model, methods):
    view = view_1024()
    print("\nTime per 1024 x 1024 view (defaults: tile 512, overlap 64; target mask):", flush=True)
    for method in methods:
        load = os.getloadavg()[0]
        t = time.perf_counter()
        heat = explain(view, model, method)
        dt = time.perf_counter() - t
        print(f"  {method:<16} {dt:7.1f} s  (load {load:.1f} -> {os.getloadavg()[0]:.1f})  "
              f"range {heat.min():.3f} .. {heat.max():.3f}", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--images", type=int, default=None, help="test tiles per set (default: all)")
    p.add_argument("--costly", type=int, default=3, help="tiles per set for the costly methods")
    p.add_argument("--costly-methods", default=",".join(COSTLY), help=f"default {','.join(COSTLY)}")
    p.add_argument("--steps", type=int, default=4, help="deletion steps (fractions 0, 1/steps, ..., 1)")
    p.add_argument("--jsonl", default=None, help="append per-tile results here; tiles already there are skipped")
    p.add_argument("--summary", default=None, metavar="JSONL", help="only print the tables of a finished run")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--no-deletion", action="store_true", help="uncertainty only (cheap: every tile)")
    p.add_argument("--only-timing", action="store_true")
    p.add_argument("--quick", action="store_true", help="1 tile per set, 3 steps, no costly methods")
    args = p.parse_args(argv)
    if args.summary:
        summarise([json.loads(line) for line in Path(args.summary).read_text().splitlines() if line.strip()])
        return 0
    if args.quick:
        args.images, args.steps, args.costly = 1, 3, 0
    if not (SHARED / "data" / "bcss").is_dir():
        print(f"skipped: {SHARED / 'data'} is not here")
        return 0
    torch.manual_seed(0)
    model, source = load_model(args.model)
    print(f"model: {source} ({model.description}); torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    records = []
    out = Path(args.jsonl) if args.jsonl else None
    if out is not None and out.is_file():
        records = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
    done = {r["id"] for r in records}
    if not args.only_timing:
        sets = [list(test_tiles(ds, args.images)) for ds in ("bcss", "camelyon")]
        count = {ds: sum(1 for r in records if r["id"].startswith(ds) and set(COSTLY) & set(r.get("deletion", {})))
                 for ds in ("bcss", "camelyon")}
        order = [t for pair in zip(*sets) for t in pair] + sets[0][len(sets[1]):] + sets[1][len(sets[0]):]
        for ident, img, truth in order:
            if ident in done:
                continue
            ds, rec, t0 = ident.split("/")[0], {"id": ident}, time.perf_counter()
            pred, maps = uncertainty_maps(model, img)
            rate, aurocs = errors_auroc(pred, truth, maps)
            rec.update(error_rate=rate, tumour_called=float(pred.mean()),
                       auroc={k: (None if not np.isfinite(v) else v) for k, v in aurocs.items()})
            if pred.mean() >= 0.05 and not args.no_deletion:  # a target to explain
                costly = tuple(m for m in args.costly_methods.split(",") if m)
                names = CHEAP + (costly if count[ds] < args.costly else ()) + tuple(DERIVED)
                count[ds] += 1
                rec["deletion"], rec["seconds"] = faithfulness(model, img, pred, names, args.steps)
            rec["load"] = os.getloadavg()[0]
            print(f"  {ident:<28} {time.perf_counter() - t0:5.0f} s  " + json.dumps(rec, default=float)[:400],
                  flush=True)
            records.append(rec)
            if out is not None:
                with out.open("a") as f:
                    f.write(json.dumps(rec, default=float) + "\n")
        summarise(records)
    if not args.no_timing:
        timing(model, ("gradcam", "inputxgrad", "gradcam-ixg", "hirescam", "shap", "superpixel-shap", "entropy",
                       "mc-dropout", "tta", "tta-entropy", "tta-boundary"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
