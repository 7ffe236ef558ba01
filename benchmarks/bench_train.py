"""Training speed per architecture, and the same-budget architecture comparison.

Speed (default)::

    python benchmarks/bench_train.py [--archs A B ...] [--batch 8] [--patch 256] [--steps 5]

prints, for every registered architecture, parameters (total and trainable) and
training patches per second: full Adam steps (forward, Dice + weighted CE, backward,
update) on random uint8 patches, after ``--warmup`` untimed steps, measured side by side
in one run on this machine's CPU (``--threads`` torch threads).

Comparison (what MODEL_CARD.md's table comes from)::

    python benchmarks/bench_train.py --compare runs/compare --total-steps 300 --threads 1

trains, one after the other, for the same number of optimiser steps on the same patches (batch,
seed and split alike; camelyon + bcss ``train`` tiles at the model's 0.5 µm/px with the default
tumour recipe, validation hold-out by group): unet-mobilenet_v2 from ImageNet and from a random
start, LightMuSeg V1/V2/V3 from the ImageNet MobileNetV2 encoder, unet-resnet50 from a random
start (no ImageNet ResNet50 is available offline; ``--resnet-steps`` gives it fewer steps).
Equal steps rather than equal wall time, because on a shared CPU the time a step takes depends on
the other jobs; each arm's wall and CPU seconds are recorded beside it with the load average. Each best
checkpoint (by validation Dice) is evaluated on camelyon test and bcss test (mean and pooled
Dice, boundary F, precision, tumour-free tiles called over 5 %); ``results.json``, one JSON per
arm and split, and ``table.md`` go in the folder. A rerun skips finished arms and resumes the one
in progress. ``--budget MIN`` trains for MIN minutes per arm instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_histoseg.io.checks import float_arg, int_arg  # noqa: E402
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


CONFIGS = [  # (label, architecture, ImageNet encoder start)
    ("unet-mobilenet_v2, ImageNet start", "unet-mobilenet_v2", True),
    ("lightmuseg V3, ImageNet start", "lightmuseg-v3", True),
    ("lightmuseg V1 (frozen ImageNet encoder)", "lightmuseg-v1", True),
    ("lightmuseg V2, ImageNet start", "lightmuseg-v2", True),
    ("unet-mobilenet_v2, random start", "unet-mobilenet_v2", False),
    ("unet-resnet50, random start", "unet-resnet50", False),
]


def _slug(label: str, imagenet: bool) -> str:
    return label.split(",")[0].split(" (")[0].replace(" ", "-") + ("-imagenet" if imagenet else "-random")


def _test_figures(ev: dict) -> dict:
    m = ev["mean"]
    return {"mean_dice": m["mean_dice"], "pooled_dice": m["pooled_dice"], "boundary_f": m["mean_boundary_f"],
            "precision": m.get("mean_precision"), "recall": m.get("mean_recall"),
            "tumour_free": m["tumour_free_tiles"], "tumour_free_over_5pct": m["tumour_free_over_5pct"],
            "nearly_free": m["nearly_free_tiles"], "nearly_free_over_5pct": m["nearly_free_over_5pct"],
            "seconds": ev["seconds"]}


def _arm_clock(clock: Path, state: Path) -> tuple[float, float]:
    """Wall and CPU seconds an arm spent in earlier runs up to its last saved epoch (where its
    training resumes), from ``clock``; nothing when there is no state to resume from."""
    if not state.is_file():
        return 0.0, 0.0
    try:
        d = json.loads(clock.read_text())
        return float(d.get("wall", 0.0)), float(d.get("cpu", 0.0))
    except (OSError, ValueError, AttributeError):
        return 0.0, 0.0


def _clock_writer(clock: Path, wall0: float, cpu0: float, t0: float, c0: float):
    """A training ``progress`` callback that writes the arm's seconds so far at every epoch (when
    its resumable state is saved), so a resumed arm counts the time of its earlier runs."""
    def progress(ev):
        if ev.get("kind") == "epoch":
            tmp = clock.with_suffix(".tmp")
            tmp.write_text(json.dumps({"wall": wall0 + time.time() - t0, "cpu": cpu0 + time.process_time() - c0,
                                       "epoch": ev.get("epoch")}))
            os.replace(tmp, clock)
    return progress


def run_compare(args) -> None:
    """Every configuration of ``CONFIGS`` (or ``--arms``, by architecture) trained for the same number
    of optimiser steps on the same patches (one seed: the patch sampler's random stream does not
    depend on the network), its best checkpoint by validation Dice evaluated on both test splits.
    Finished arms are kept in ``results.json`` and skipped on a rerun; an arm in progress resumes."""
    from napari_histoseg.tumour.evaluate import evaluate
    from napari_histoseg.tumour.train import train

    out = Path(args.compare)
    out.mkdir(parents=True, exist_ok=True)
    data = [SHARED / "data" / "camelyon", SHARED / "data" / "bcss"]
    enc = SHARED / "weights" / "mobilenet_v2_imagenet.safetensors"
    results_path = out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    configs = [c for c in CONFIGS if not args.arms or c[1] in args.arms or _slug(c[0], c[2]) in args.arms]
    for label, arch, imagenet in configs:
        if label in results:
            continue
        steps = args.total_steps
        if arch == "unet-resnet50" and args.resnet_steps:
            steps = args.resnet_steps
        epochs = -(-steps // args.steps_per_epoch)
        budget = f"{args.budget} min" if args.budget else f"{epochs * args.steps_per_epoch} steps"
        print(f"=== {label}: {budget} of batch {args.batch}, load {os.getloadavg()}", flush=True)
        ckpt = out / (_slug(label, imagenet) + ".safetensors")
        from napari_histoseg.training.loop import state_path_for

        clock = out / (_slug(label, imagenet) + ".clock.json")
        wall_before, cpu_before = _arm_clock(clock, state_path_for(ckpt))
        load0, t0, cpu0 = os.getloadavg(), time.time(), time.process_time()
        s = train(data, ckpt, arch=arch, epochs=100000 if args.budget else epochs,
                  init_encoder=str(enc) if imagenet else None, time_budget=args.budget,
                  steps_per_epoch=args.steps_per_epoch, patience=100000, seed=args.seed, threads=args.threads,
                  batch_size=args.batch, lr=args.lr, warmup=args.warmup_steps, resume=True,
                  name=label, log=lambda m: print(m, flush=True),
                  progress=_clock_writer(clock, wall_before, cpu_before, t0, cpu0))
        train_s = wall_before + time.time() - t0
        cpu_s, load1 = cpu_before + time.process_time() - cpu0, os.getloadavg()
        row = {"arch": arch, "imagenet": imagenet, "parameters": s["parameters"],
               "trainable": s["trainable_parameters"], "steps": s["steps"], "batch": args.batch,
               "patches": s["steps"] * args.batch, "best_epoch": s["best_epoch"],
               "best_step": (s["best_epoch"] + 1) * args.steps_per_epoch, "best_val_dice": s["best_val_dice"],
               "train_seconds": round(train_s, 1), "cpu_seconds": round(cpu_s, 1), "loop_seconds": s["seconds"],
               "resumed_after_seconds": round(wall_before, 1) if wall_before else None,
               "seconds_per_step": round(s["seconds"] / max(s["steps"], 1), 2),
               "load_start": load0, "load_end": load1, "checkpoint": str(ckpt),
               "temperature": (s.get("calibration") or {}).get("temperature")}
        for name in ("camelyon", "bcss"):
            ev = evaluate(SHARED / "data" / name, ckpt, split="test")
            (out / f"{_slug(label, imagenet)}.{name}_test.json").write_text(json.dumps(ev, indent=1))
            row[name] = _test_figures(ev)
            print(f"{label}: {name} test mean Dice {row[name]['mean_dice']:.4f} pooled "
                  f"{row[name]['pooled_dice']:.4f} boundary F {row[name]['boundary_f']:.4f}", flush=True)
        row["load_after_eval"] = os.getloadavg()
        results[label] = row
        results_path.write_text(json.dumps(results, indent=2))
    if args.speed:
        speed = {r["arch"]: r for r in run_speed(args)}
        for row in results.values():
            row["bench_patches_per_s"] = speed.get(row["arch"], {}).get("patches_per_s")
        results_path.write_text(json.dumps(results, indent=2))
    (out / "table.md").write_text(compare_table(results))
    print(compare_table(results))


def _f(v, fmt: str = ".3f") -> str:
    return "–" if v is None else format(v, fmt)


def _split_of(r: dict, name: str) -> dict:
    """A row's figures for one test split; rows written by the earlier (flat) format of this
    script hold only ``NAME_dice`` and ``NAME_boundary_f``."""
    if isinstance(r.get(name), dict):
        return r[name]
    return {"mean_dice": r.get(f"{name}_dice"), "boundary_f": r.get(f"{name}_boundary_f")}


def compare_table(results: dict) -> str:
    """The Markdown table of a comparison's ``results.json``."""
    lines = ["| model | start | params (trainable) | steps (patches) | train s (s/step) | CPU s | best val Dice | "
             "camelyon Dice mean / pooled | camelyon BF | bcss Dice mean / pooled | bcss BF | bcss precision | "
             "tumour-free bcss tiles > 5 % |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results.values():
        c, b = _split_of(r, "camelyon"), _split_of(r, "bcss")
        free = "–" if b.get("tumour_free") is None else (
            f"{b['tumour_free_over_5pct']} of {b['tumour_free']} ({b.get('nearly_free_over_5pct', '–')} of "
            f"{b.get('nearly_free', '–')} under 1 %)")
        params = "–" if r.get("parameters") is None else f"{r['parameters'] / 1e6:.2f} M"
        trainable = "" if r.get("trainable") is None else f" ({r['trainable'] / 1e6:.2f} M)"
        start = "–" if r.get("imagenet") is None else ("ImageNet" if r["imagenet"] else "random")
        lines.append(f"| {r.get('arch', '–')} | {start} | {params}{trainable} | "
                     f"{r.get('steps', '–')} ({r.get('patches', '–')}) | "
                     f"{_f(r.get('train_seconds'), '.0f')} ({_f(r.get('seconds_per_step'), '.1f')}) | "
                     f"{r.get('cpu_seconds') or '–'} | {_f(r.get('best_val_dice'))} | "
                     f"{_f(c.get('mean_dice'))} / {_f(c.get('pooled_dice'))} | {_f(c.get('boundary_f'))} | "
                     f"{_f(b.get('mean_dice'))} / {_f(b.get('pooled_dice'))} | {_f(b.get('boundary_f'))} | "
                     f"{_f(b.get('precision'))} | {free} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--archs", nargs="+", default=[a for a in ARCHS if a in list_architectures()])
    p.add_argument("--batch", type=int_arg(1, 256), default=8)
    p.add_argument("--patch", type=int_arg(32, 2048), default=256)
    p.add_argument("--steps", type=int_arg(1, 10000), default=5, help="speed: timed steps")
    p.add_argument("--warmup", type=int_arg(0, 1000), default=2, help="speed: untimed steps first")
    p.add_argument("--threads", type=int_arg(1, 256), default=None)
    p.add_argument("--compare", default=None, metavar="DIR", help="run the same-budget comparison into DIR")
    p.add_argument("--arms", nargs="+", default=None, help="comparison: only these architectures or run names")
    p.add_argument("--total-steps", type=int_arg(1, 1000000), default=300,
                   help="comparison: optimiser steps per arm (the same for every arm)")
    p.add_argument("--resnet-steps", type=int_arg(1, 1000000), default=None,
                   help="comparison: fewer steps for unet-resnet50 (say so beside its row)")
    p.add_argument("--budget", type=float_arg(0, 10000, lo_open=True), default=None,
                   help="comparison: minutes of training per arm instead of a number of steps")
    p.add_argument("--steps-per-epoch", type=int_arg(1, 100000), default=25,
                   help="comparison: steps between validations")
    p.add_argument("--lr", type=float_arg(0, 1, lo_open=True), default=1e-3, help="comparison: peak learning rate")
    p.add_argument("--warmup-steps", type=int_arg(0, 100000), default=20,
                   help="comparison: linear learning-rate warm-up")
    p.add_argument("--seed", type=int_arg(0, 2**31 - 1), default=0)
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
