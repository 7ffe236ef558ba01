"""Faithfulness (deletion test) and speed of the explanations.

Deletion test (Petsiuk et al. 2018, RISE): replace the pixels of an image with the
baseline (the image blurred with a Gaussian of 24 px, the SHAP baseline) in order of
decreasing attribution, and follow the target score, the mean tumour probability over
the pixels the model called tumour on the intact image, as more pixels go. A faithful
map makes the score fall faster than the same deletion in random order, so the ratio
of the areas under the two curves, random / attribution, is above 1; higher is better
(the aim: >= 1.2 for the default saliency method, at both deletion units).
Signed maps (SHAP, input x gradient) are ordered by their signed value (most
tumour-raising first); ties (Grad-CAM's zeros) are broken at random. Deleting single pixels at random scatters the damage over
every neighbourhood at once, which a CNN feels early, while a smooth map (Grad-CAM)
deletes whole areas and leaves the rest intact; so the test is also run with 16 x 16
squares as the unit of deletion (squares ranked by mean attribution against squares in
random order), which compares maps of any smoothness on the same footing.

Uncertainty: on the same test tiles, the pixel-level ROC AUC of each uncertainty map
(entropy, MC dropout, flip/rotation TTA) against "the model is wrong here" (prediction
at 0.5 differs from the ground-truth mask; ignore pixels left out): 0.5 is chance.

Then the time to explain one 1024 x 1024 view (four adjacent BCSS test tiles) with
each method at its defaults (tiles of 512 px, overlap 64: 9 tiles; SHAP 8 samples,
MC dropout 16 passes).

    python benchmarks/bench_explain.py                       # bundled model, 3+3 test images
    python benchmarks/bench_explain.py --methods gradcam,inputxgrad --images 2 --steps 5
    python benchmarks/bench_explain.py --layers net.encoder.features.18,net.decoder.blocks.0
    python benchmarks/bench_explain.py --quick               # a smoke run

Reads ../shared/data/{bcss,camelyon}; uses napari_histoseg/weights/default.safetensors
if it is there, else a random model (and says so: then the numbers mean nothing).
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
import torch
from skimage.io import imread

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = Path(os.environ.get("HISTOSEG_SHARED", REPO.parent / "shared"))

from napari_histoseg.core.scores import pixel_auc  # noqa: E402
from napari_histoseg.explanations import explain  # noqa: E402
from napari_histoseg.explanations.shap import stain_baseline  # noqa: E402
from napari_histoseg.models.segmenter import Segmenter  # noqa: E402


def load_model(path):
    bundled = REPO / "napari_histoseg" / "weights" / "default.safetensors"
    path = Path(path) if path else bundled
    if path.is_file():
        return Segmenter.from_checkpoint(path, device="cpu"), str(path.relative_to(REPO) if path.is_relative_to(REPO) else path)
    print(f"!! {path} not found: using a RANDOM model; the faithfulness numbers mean nothing")
    return Segmenter.random(seed=0, device="cpu"), "random unet-mobilenet_v2"


def test_images(dataset, n, model, min_tumour=0.05):
    """The first ``n`` test tiles (sorted by id) on which the model calls >= 5 % tumour."""
    meta = json.loads((SHARED / "data" / dataset / "dataset.json").read_text())
    out = []
    for t in sorted((t for t in meta["tiles"] if t.get("split") == "test"), key=lambda t: t["id"]):
        img = imread(SHARED / "data" / dataset / t["image"])[..., :3]
        if img.shape[0] % 32 or img.shape[1] % 32:
            continue
        prob = model.predict(img[None])[0, 0]
        if (prob >= 0.5).mean() >= min_tumour:
            truth = imread(SHARED / "data" / dataset / t["mask"])
            truth = truth[..., 0] if truth.ndim == 3 else truth
            out.append((f"{dataset}/{t['id']}", img, prob >= 0.5, truth))
        if len(out) == n:
            break
    return out


@torch.no_grad()
def score(model, batch, mask):
    """Mean tumour probability over ``mask`` for each image of a uint8 batch."""
    probs = model.predict(batch)[:, 0]
    return probs[:, mask].mean(1)


def deletion_curve(model, img, base, order, mask, steps, batch=4):
    n = order.size
    fractions = np.linspace(0, 1, steps + 1)
    images = []
    for f in fractions:
        cur = img.copy().reshape(-1, 3)
        idx = order[: int(round(f * n))]
        cur[idx] = base.reshape(-1, 3)[idx]
        images.append(cur.reshape(img.shape))
    scores = np.concatenate([score(model, np.stack(images[i:i + batch]), mask) for i in range(0, len(images), batch)])
    return fractions, scores


def auc(x, y):
    return float(np.sum((y[1:] + y[:-1]) / 2 * np.diff(x)))


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


def faithfulness(model, images, methods, steps, samples, patches=(1, 16)):
    """Deletion AUC ratios (attribution / random) per method and deletion unit."""
    rows = {(name, p): [] for name in methods for p in patches}
    for ident, img, mask, _ in images:
        base = stain_baseline(img)[0]
        rng = np.random.default_rng(0)
        a_rand = {p: auc(*deletion_curve(model, img, base, order_by(rng.random(mask.shape), rng, p), mask, steps))
                  for p in patches}
        line = [f"{ident:<28} random AUC " + "/".join(f"{a_rand[p]:.3f}" for p in patches)]
        for name, (method, kw) in methods.items():
            heat = explain(img, model, method, target="mask", tile=512, samples=samples, **kw)
            ratios = []
            for p in patches:
                ratio = a_rand[p] / auc(*deletion_curve(model, img, base, order_by(heat, rng, p), mask, steps))
                rows[(name, p)].append(ratio)
                ratios.append(f"{ratio:.3f}")
            line.append(f"{name} {'/'.join(ratios)}")
        print("  " + "  ".join(line), flush=True)
    return rows


def uncertainty_auroc(model, images, methods=("entropy", "mc-dropout", "tta")):
    """Pixel ROC AUC of each uncertainty map against the model's errors, per image."""
    rows = {m: [] for m in methods}
    for ident, img, mask, truth in images:
        valid = truth != 255
        wrong = np.where(valid, (mask != (truth > 0)).astype(np.uint8), 255)
        line = [f"{ident:<28} error rate {wrong[valid].mean():.3f}"]
        for m in methods:
            a = pixel_auc(explain(img, model, m, tile=512), wrong)
            rows[m].append(a)
            line.append(f"{m} {a:.3f}")
        print("  " + "  ".join(line), flush=True)
    return rows


def view_1024():
    """Four adjacent BCSS test tiles of region 1015 as one contiguous 1024 x 1024 view."""
    d = SHARED / "data" / "bcss" / "images"
    ids = [["region-1015-y0-x0", "region-1015-y0-x512"], ["region-1015-y512-x0", "region-1015-y512-x512"]]
    return np.concatenate([np.concatenate([imread(d / f"{i}.png")[..., :3] for i in row], 1) for row in ids], 0)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--images", type=int, default=3, help="test images per dataset (bcss, camelyon)")
    p.add_argument("--steps", type=int, default=10, help="deletion steps (fractions 0, 1/steps, ..., 1)")
    p.add_argument("--samples", type=int, default=8, help="SHAP samples in the deletion test")
    p.add_argument("--layers", default=None, help="comma-separated Grad-CAM layers to compare (default layer only)")
    p.add_argument("--methods", default="gradcam-ixg,gradcam,hirescam,inputxgrad,shap", help="saliency methods to compare")
    p.add_argument("--no-timing", action="store_true")
    p.add_argument("--no-uncertainty", action="store_true")
    p.add_argument("--quick", action="store_true", help="1 image per dataset, 4 steps, 2 SHAP samples")
    args = p.parse_args(argv)
    if args.quick:
        args.images, args.steps, args.samples = 1, 4, 2
    if not (SHARED / "data" / "bcss").is_dir():
        print(f"skipped: {SHARED / 'data'} is not here")
        return 0
    torch.manual_seed(0)
    model, source = load_model(args.model)
    print(f"model: {source} ({model.description}); torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}, cpu; load average {os.getloadavg()[0]:.1f}")

    methods = {m: (m, {}) for m in args.methods.split(",")}
    if args.layers:
        methods.update({f"gradcam[{n}]": ("gradcam", {"layer": n}) for n in args.layers.split(",")})
    images = test_images("bcss", args.images, model) + test_images("camelyon", args.images, model)
    print(f"\nDeletion test: {len(images)} test images (512 x 512, model calls >= 5 % tumour), {args.steps} steps, "
          f"baseline = Gaussian blur 24 px; ratio = AUC(random order) / AUC(attribution order), higher is better; "
          f"deleting single pixels / 16x16 squares")
    t0 = time.perf_counter()
    rows = faithfulness(model, images, methods, args.steps, args.samples)
    for (name, patch), ratios in rows.items():
        r = np.array(ratios)
        unit = "pixels" if patch == 1 else f"{patch}x{patch} squares"
        print(f"  {name:<30} {unit:<15} mean ratio {r.mean():.3f}  (min {r.min():.3f}, max {r.max():.3f}, "
              f"median {np.median(r):.3f}, above 1 on {int((r > 1).sum())}/{r.size})")
    print(f"  ({time.perf_counter() - t0:.0f} s)")

    if not args.no_uncertainty:
        print("\nUncertainty vs error: pixel ROC AUC (model wrong at 0.5 vs ground truth), same images")
        for m, aucs in uncertainty_auroc(model, images).items():
            a = np.array(aucs, float)
            print(f"  {m:<11} mean AUROC {np.nanmean(a):.3f}  (min {np.nanmin(a):.3f}, max {np.nanmax(a):.3f})")

    if not args.no_timing:
        view = view_1024()
        print("\nTime per 1024 x 1024 view (defaults: tile 512, overlap 64 -> 9 tiles; target mask):")
        for method in (*methods, "entropy", "mc-dropout", "tta"):
            t = time.perf_counter()
            name, kw = methods.get(method, (method, {}))
            heat = explain(view, model, name, **kw)
            dt = time.perf_counter() - t
            print(f"  {method:<11} {dt:7.1f} s  (load {os.getloadavg()[0]:.1f})   map {heat.shape}, range {heat.min():.3f} .. {heat.max():.3f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
