"""Training speed per architecture, and the same-budget architecture comparison.

Speed (default)::

    python benchmarks/bench_train.py [--archs A B ...] [--batch 8] [--patch 256] [--steps 5]

prints, for every registered architecture, parameters (total and trainable) and
training patches per second: full Adam steps (forward, Dice + weighted CE, backward,
update) on random uint8 patches, after ``--warmup`` untimed steps, measured side by side
in one run on this machine's CPU (``--threads`` torch threads).

Comparison (what MODEL_CARD.md's table comes from)::

    python benchmarks/bench_train.py --compare runs/compare --budget 5

trains, one after the other and under the same wall-time budget, seed and split
(camelyon + bcss ``train`` tiles, validation hold-out by group): unet-mobilenet_v2 from a
random start and from ImageNet, unet-resnet50 (random start: no ImageNet ResNet50 is
available offline), LightMuSeg V1/V2/V3 from ImageNet; evaluates each best checkpoint on
camelyon test and bcss test, and writes ``results.json`` and ``table.md`` in the folder.
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

from napari_histoseg.models import build_model, list_architectures  # noqa: E402
from napari_histoseg.tumour.losses import SegmentationLoss  # noqa: E402
from napari_histoseg.tumour.train import to_input  # noqa: E402

SHARED = ROOT / ".." / "shared"
ARCHS = ["unet-mobilenet_v2", "unet-resnet50", "lightmuseg-v1", "lightmuseg-v2", "lightmuseg-v3"]


def bench(arch: str, batch: int = 8, patch: int = 256, steps: int = 5, warmup: int = 2, seed: int = 0) -> dict:
    """Training patches per second of ``arch`` (random data, Adam, Dice + weighted CE)."""
    torch.manual_seed(seed)
    model = build_model(arch, classes=1).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    crit = SegmentationLoss(weights=[1.0, 1.0])
    rng = np.random.default_rng(seed)
    x = to_input(rng.integers(0, 255, (batch, patch, patch, 3), dtype=np.uint8))
    y = torch.from_numpy(rng.integers(0, 2, (batch, patch, patch))).long()
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        loss = crit(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    return {"arch": arch, "parameters": sum(p.numel() for p in model.parameters()),
            "trainable": sum(p.numel() for p in params), "seconds_per_step": float(np.median(times)),
            "patches_per_s": batch / float(np.median(times)), "batch": batch, "patch": patch}


def run_speed(args) -> list[dict]:
    rows = []
    print(f"training speed, batch {args.batch} x {args.patch}², {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'architecture':<20} {'params':>11} {'trainable':>11} {'s/step':>8} {'patches/s':>10}")
    for arch in args.archs:
        r = bench(arch, args.batch, args.patch, args.steps, args.warmup)
        rows.append(r)
        print(f"{arch:<20} {r['parameters']:>11,} {r['trainable']:>11,} {r['seconds_per_step']:>8.2f} "
              f"{r['patches_per_s']:>10.2f}", flush=True)
    return rows


CONFIGS = [
    ("unet-mobilenet_v2, random start", "unet-mobilenet_v2", False),
    ("unet-mobilenet_v2, ImageNet start", "unet-mobilenet_v2", True),
    ("unet-resnet50, random start", "unet-resnet50", False),
    ("lightmuseg V1 (frozen ImageNet encoder)", "lightmuseg-v1", True),
    ("lightmuseg V2, ImageNet start", "lightmuseg-v2", True),
    ("lightmuseg V3, ImageNet start", "lightmuseg-v3", True),
]


def run_compare(args) -> None:
    from napari_histoseg.tumour.evaluate import evaluate
    from napari_histoseg.tumour.train import train

    out = Path(args.compare)
    out.mkdir(parents=True, exist_ok=True)
    data = [SHARED / "data" / "camelyon", SHARED / "data" / "bcss"]
    enc = SHARED / "weights" / "mobilenet_v2_imagenet.safetensors"
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for label, arch, imagenet in CONFIGS:
        if label in results:
            continue
        print(f"=== {label}: {args.budget} min", flush=True)
        ckpt = out / (label.split(",")[0].split(" (")[0].replace(" ", "-") + ("-imagenet" if imagenet else "-random")
                      + ".safetensors")
        s = train(data, ckpt, arch=arch, epochs=1000, init_encoder=enc if imagenet else None,
                  time_budget=args.budget, steps_per_epoch=args.steps_per_epoch, patience=1000,
                  seed=0, threads=args.threads, name=label, log=lambda m: print(m, flush=True))
        row = {"arch": arch, "imagenet": imagenet, "parameters": s["parameters"],
               "trainable": s["trainable_parameters"], "epochs": s["epochs_run"],
               "patches": s["epochs_run"] * args.steps_per_epoch * 8, "best_val_dice": s["best_val_dice"],
               "loop_patches_per_s": s["patches_per_s"]}
        for name in ("camelyon", "bcss"):
            ev = evaluate(SHARED / "data" / name, ckpt, split="test")
            row[f"{name}_dice"] = ev["mean"]["mean_dice"]
            row[f"{name}_boundary_f"] = ev["mean"]["mean_boundary_f"]
            print(f"{label}: {name} test Dice {row[f'{name}_dice']:.4f} boundary F "
                  f"{row[f'{name}_boundary_f']:.4f}", flush=True)
        results[label] = row
        results_path.write_text(json.dumps(results, indent=2))
    if args.speed:
        speed = {r["arch"]: r for r in run_speed(args)}
        for row in results.values():
            row["bench_patches_per_s"] = speed.get(row["arch"], {}).get("patches_per_s")
        results_path.write_text(json.dumps(results, indent=2))
    lines = ["| model | start | params (trainable) | patches seen | camelyon Dice | camelyon BF | "
             "bcss Dice | bcss BF | CPU train patches/s |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        sp = r.get("bench_patches_per_s")
        lines.append(f"| {r['arch']} | {'ImageNet' if r['imagenet'] else 'random'} | "
                     f"{r['parameters'] / 1e6:.2f} M ({r['trainable'] / 1e6:.2f} M) | {r['patches']} | "
                     f"{r['camelyon_dice']:.3f} | {r['camelyon_boundary_f']:.3f} | {r['bcss_dice']:.3f} | "
                     f"{r['bcss_boundary_f']:.3f} | {'' if sp is None else f'{sp:.2f}'} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=[a for a in ARCHS if a in list_architectures()])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--patch", type=int, default=256)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compare", default=None, metavar="DIR", help="run the same-budget comparison into DIR")
    p.add_argument("--budget", type=float, default=5.0, help="minutes of training per comparison run")
    p.add_argument("--steps-per-epoch", type=int, default=24, help="comparison: steps between validations")
    p.add_argument("--speed", action="store_true", help="comparison: also measure patches/s afterwards")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compare:
        if not (SHARED / "data" / "camelyon" / "dataset.json").is_file():
            print(f"skipped: {SHARED / 'data'} is absent")
            return 0
        run_compare(args)
    else:
        run_speed(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
