"""Train the tumour model on a lent GPU: the same loop, hooks and settings as the CPU run
(heavy stain/scanner augmentation, synthetic glass/fat negatives, colour consistency on
unlabelled H&E, ImageNet MobileNetV2 start, 0.5 µm/px, temperature calibration), with a larger
batch, patches cut in worker processes and a time budget well inside the device tool's
10-minute command limit. Only the float16 checkpoint, its JSON and the logs go to ``--out``.

    PYTHONPATH=. python3 tools/gpu/train_tumour.py --data .gpu --out "$OUT" --minutes 6
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=".gpu", help="the folder tools/gpu/pack_data.py wrote")
    p.add_argument("--out", default=os.environ.get("OUT", "/tmp/histoseg-gpu"))
    p.add_argument("--minutes", type=float, default=6.0, help="training time budget (validation included)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    p.add_argument("--device", default="cuda")
    p.add_argument("--smoke", action="store_true", help="a few tiny steps on any device, to check the script")
    args = p.parse_args(argv)
    steps = 40
    if args.smoke:
        args.batch_size, args.minutes, steps = 2, 0.05, 2

    import torch

    from napari_histoseg.tumour.train import train

    data, out = Path(args.data), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    run = Path("/tmp/histoseg-gpu-run")
    run.mkdir(parents=True, exist_ok=True)
    log = open(out / "train.log", "a")

    def say(line):
        print(line, flush=True)
        log.write(line + "\n")
        log.flush()

    say(f"torch {torch.__version__}; cuda {torch.cuda.is_available()} "
        f"{torch.cuda.get_device_name(0) if torch.cuda.is_available() else ''}; {args.workers} workers")
    torch.backends.cudnn.benchmark = True
    t0 = time.time()
    summary = train([data / "camelyon", data / "bcss"], run / "tumour.safetensors", log=say, show_bar=False,
                    init_encoder=str(data / "mobilenet_v2_imagenet.safetensors"), device=args.device,
                    workers=args.workers, batch_size=args.batch_size, patch_size=256, epochs=10_000,
                    steps_per_epoch=steps, lr=1e-3, warmup=100, patience=40, time_budget=args.minutes,
                    augment="heavy", background=0.08, consistency=0.5, unlabelled_batch=2 if args.smoke else 8,
                    unlabelled=[str(data / "monuseg"), str(data / "breakhis")], half_weights=True,
                    name="histoseg-default", model_version="0.3.0-gpu")
    summary["machine"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    summary["wall_seconds"] = round(time.time() - t0, 1)
    for name in ("tumour.safetensors", "tumour.json"):
        shutil.copy(run / name, out / name)
    summary.pop("history", None)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    say(f"done in {summary['wall_seconds']} s: best validation Dice {summary['best_score']:.4f}; "
        f"{summary['patches_per_s']} patches/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
