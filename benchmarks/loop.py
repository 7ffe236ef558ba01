"""The correction loop: does fine-tuning on corrected tiles help?

::

    python benchmarks/loop.py [--model CKPT] [--data ../shared/data/bcss] [--ns 0 5 10 20]
                              [--clicks 5] [--epochs 5] [--steps 20] [--test-limit 0]

1. The model (``--model``, default the bundled one) predicts N training tiles of
   ``--data`` (a seeded shuffle of its ``train`` split; the N = 5 tiles are among the
   N = 10, and so on).
2. The simulated annotator of ``docs/ARCHITECTURE.md`` (``robot.simulate_clicks`` with the
   refinement session) corrects each prediction with up to ``--clicks`` clicks and keeps
   the best mask it saw (``--accept best``) or the last (``--accept last``); the pixels
   that differ from the model's mask are the edits.
3. The corrected masks are exported with :func:`napari_histoseg.tumour.export.export_tiles`
   (provenance, edits) into a fresh training-data folder; a control folder gets the
   same tiles with the *uncorrected* model masks.
4. Each folder fine-tunes the model with :func:`napari_histoseg.tumour.train.train` for the
   same fixed budget (``--epochs`` x ``--steps`` batches, same seed, same lr), starting
   from the model's own weights.
5. Every checkpoint is scored on the held-out ``test`` split: mean Dice per tile.

N = 0 is the model itself, without fine-tuning. Every figure printed is measured in this
run; the budget is small (CPU), so read the table as a direction, not a result.

Each fine-tune starts from the model's checkpoint through ``train(init_checkpoint=...)``,
as the Fine-tune widget does.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from napari_histoseg.core.scores import dice  # noqa: E402
from napari_histoseg.io.dataset import load_dataset  # noqa: E402
from napari_histoseg.models.segmenter import Segmenter  # noqa: E402
from napari_histoseg.refinement.robot import session_refiner, simulate_clicks  # noqa: E402
from napari_histoseg.tumour import train as train_mod  # noqa: E402
from napari_histoseg.tumour.evaluate import predict_tile  # noqa: E402
from napari_histoseg.tumour.export import export_tiles  # noqa: E402


def held_out_dice(seg, tiles) -> float:
    return float(np.mean([dice((predict_tile(img, seg) >= 0.5).astype(np.uint8), truth) for img, truth in tiles]))


def correct(img, truth, prob, clicks, accept="best"):
    """The annotator's corrected mask, the model's mask and the edits, for one tile.

    ``accept="last"`` keeps the mask after the last click (the bare protocol);
    ``"best"`` keeps the best mask seen, the model's own included, as a person who
    undoes a click that made things worse (the robot judges by the truth, a person by eye).
    """
    model_mask = (prob >= 0.5).astype(np.uint8)
    masks = {0: model_mask}
    dices = simulate_clicks(img, truth, session_refiner(), prior=prob, max_clicks=clicks,
                            on_click=lambda k, seeds, labels: masks.update({k: labels.astype(np.uint8)}))
    k = max(masks) if accept == "last" else max(masks, key=lambda j: (dices[j], -j))
    corrected = masks[k]
    return corrected, model_mask, (corrected != model_mask).astype(np.uint8)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="checkpoint to start from (default: the bundled model)")
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "bcss"))
    ap.add_argument("--ns", type=int, nargs="+", default=[0, 5, 10, 20])
    ap.add_argument("--clicks", type=int, default=5, help="annotator clicks per tile")
    ap.add_argument("--accept", choices=["best", "last"], default="best",
                    help="mask the annotator keeps: the best seen (default) or the last click's")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--steps", type=int, default=20, help="batches per epoch")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=True,
                    help="keep BatchNorm statistics of the start model while fine-tuning (default: on)")
    ap.add_argument("--test-limit", type=int, default=0, help="score only this many test tiles (0: all)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "runs" / "loop"))
    args = ap.parse_args(argv)

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.model is None:
        from napari_histoseg.models.bundled import bundled_model_path

        args.model = str(bundled_model_path())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = out / "start.safetensors"  # a snapshot: the source may be a checkpoint still being written
    shutil.copyfile(args.model, start)
    side = Path(args.model).with_suffix(".json")
    if side.is_file():
        shutil.copyfile(side, start.with_suffix(".json"))
    seg = Segmenter.from_checkpoint(start, device="cpu")

    ds = load_dataset(args.data)
    train_ds, test_ds = ds.subset("train"), ds.subset("test")
    order = list(range(len(train_ds)))
    random.Random(args.seed).shuffle(order)
    n_max = max(args.ns)
    if any(0 < n < 2 for n in args.ns):
        raise SystemExit("N must be 0 or at least 2 (train() holds one tile out for validation)")
    if n_max > len(order):
        raise SystemExit(f"{args.data} has {len(order)} train tiles, fewer than N = {n_max}")
    test_idx = list(range(len(test_ds)))[: args.test_limit or None]
    test_tiles = [test_ds.load(i) for i in test_idx]
    print(f"model {seg.description} from {args.model}; data {args.data}: {len(train_ds)} train, "
          f"{len(test_tiles)} test tiles scored; {args.clicks} clicks per tile (keep {args.accept}); fine-tune "
          f"{args.epochs} x {args.steps} batches of {args.batch} x {args.patch}², lr {args.lr}, "
          f"BatchNorm statistics {'frozen' if args.freeze_bn else 'trained'}", flush=True)

    t0 = time.time()
    base = held_out_dice(seg, test_tiles)
    print(f"N = 0: held-out Dice {base:.4f} ({time.time() - t0:.0f} s)", flush=True)

    t0 = time.time()
    labelled = []  # (index, corrected, model mask, edits, dice corrected, dice model)
    for i in order[:n_max]:
        img, truth = train_ds.load(i)
        prob = predict_tile(img, seg)
        corr, mm, ed = correct(img, truth, prob, args.clicks, args.accept)
        labelled.append((i, corr, mm, ed, dice(corr, truth), dice(mm, truth)))
    print(f"annotated {n_max} tiles in {time.time() - t0:.0f} s: label Dice {np.mean([r[4] for r in labelled]):.4f} "
          f"corrected vs {np.mean([r[5] for r in labelled]):.4f} model masks; "
          f"{np.mean([r[3].mean() for r in labelled]) * 100:.1f} % of pixels edited", flush=True)

    rows = [{"n": 0, "corrected": base, "control": base}]
    for n in sorted(x for x in args.ns if x > 0):
        row = {"n": n, "label_dice_corrected": float(np.mean([r[4] for r in labelled[:n]])),
               "label_dice_model": float(np.mean([r[5] for r in labelled[:n]]))}
        for kind in ("corrected", "control"):
            folder = out / f"{kind}_{n}"
            shutil.rmtree(folder, ignore_errors=True)
            for i, corr, mm, ed, _, _ in labelled[:n]:
                img, _ = train_ds.load(i)
                src = Path(args.data) / train_ds.tiles[i]["image"]
                if kind == "corrected":
                    export_tiles(img, corr, folder, edits=ed, source=src, model=seg, split="train",
                                 annotator=f"simulated annotator ({args.clicks} clicks)")
                else:
                    export_tiles(img, mm, folder, source=src, model=seg, split="train", annotator=None)
            t0 = time.time()
            ckpt = out / f"{kind}_{n}.safetensors"
            summary = train_mod.train(folder, ckpt, init_checkpoint=start, epochs=args.epochs,
                                      steps_per_epoch=args.steps, batch_size=args.batch,
                                      patch_size=args.patch, lr=args.lr, patience=args.epochs,
                                      seed=args.seed, name=f"loop-{kind}-{n}", log=lambda s: None,
                                      freeze_bn=args.freeze_bn, show_bar=False)
            secs = time.time() - t0
            row[kind] = held_out_dice(Segmenter.from_checkpoint(ckpt, device="cpu"), test_tiles)
            row[f"{kind}_train_s"] = secs
            row[f"{kind}_best_epoch"] = summary.get("best_epoch")
            print(f"N = {n} {kind:>9}: held-out Dice {row[kind]:.4f} (fine-tune {secs:.0f} s, "
                  f"best epoch {summary.get('best_epoch')})", flush=True)
        rows.append(row)

    print("\n|  N | label Dice (corrected / model) | held-out Dice, corrected | held-out Dice, control |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        lab = (f"{r['label_dice_corrected']:.3f} / {r['label_dice_model']:.3f}" if r["n"] else "-")
        print(f"| {r['n']:>2} | {lab} | {r['corrected']:.4f} | {r['control']:.4f} |")
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
