"""``histoseg adapt``: learn from the corrected tiles of an Export folder in a fixed time.

``cli.py`` calls :func:`register` with its subparsers::

    histoseg adapt DATASET [-o OUT.safetensors] [--model bundled|PATH] [--seconds 60]
                   [--train head|decoder|all] [--edit-weight 4] [--replay DIR ... | --no-replay]
                   [--replay-tiles 8] [--seed 0] [--threads N] [--summary S.json]

Without ``-o`` the adapted model is the next free ``DATASET/models/NAME-adaptN.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path

from napari_histoseg.io.checks import float_arg, int_arg

TRAINABLE = ("head", "decoder", "all")  # napari_histoseg.tumour.adapt.TRAINABLE, without importing torch


def register(sub) -> None:
    s = sub.add_parser("adapt", help="adapt a tumour model to a slide from its corrected tiles (seconds, not hours)",
                       description="Fine-tune a tumour model on the tiles of an Export folder (their masks and "
                                   "edit maps) for a fixed number of seconds, with a replay of the model's own "
                                   "training tiles, and write a new versioned checkpoint with its provenance.")
    s.add_argument("dataset", help="a folder written by `histoseg export` or the Export widget")
    s.add_argument("-o", "--output", default=None, help="the adapted checkpoint (.safetensors; default: "
                   "DATASET/models/NAME-adaptN.safetensors)")
    s.add_argument("--model", default="bundled", help="the model to start from (default: the bundled one)")
    s.add_argument("--seconds", type=float_arg(lo=1, hi=3600), default=60.0, help="time budget (default 60)")
    s.add_argument("--train", choices=TRAINABLE, default="head", help="what trains (default: head)")
    s.add_argument("--edit-weight", type=float_arg(lo=0, hi=1000), default=4.0,
                   help="extra weight of the pixels a person changed (weight 1 + this; default 4)")
    s.add_argument("--replay", nargs="+", default=None, metavar="DIR",
                   help="training folders to replay (default: those the start model was trained on)")
    s.add_argument("--no-replay", action="store_true", help="replay nothing")
    s.add_argument("--replay-tiles", type=int_arg(lo=0, hi=256), default=8, help="replay tiles (default 8)")
    s.add_argument("--steps", type=int_arg(lo=1, hi=100000), default=None,
                   help="run exactly this many steps instead of the time budget")
    s.add_argument("--seed", type=int_arg(lo=0), default=0)
    s.add_argument("--threads", type=int_arg(lo=1, hi=256), default=None, help="torch CPU threads")
    s.add_argument("--summary", default=None, help="write the summary as JSON here")
    s.set_defaults(func=cmd_adapt)


def cmd_adapt(args) -> int:
    from napari_histoseg.models import read_meta
    from napari_histoseg.models.bundled import bundled_model_path
    from napari_histoseg.tumour.adapt import adapt, adapted_path
    from napari_histoseg.tumour.adapt_data import corrections_from_dataset

    corrections = corrections_from_dataset(args.dataset)
    start = str(bundled_model_path()) if args.model == "bundled" else args.model
    meta = read_meta(start)
    out, version = (Path(args.output), None) if args.output else adapted_path(Path(args.dataset) / "models", meta)
    edited = sum(c.edited for c in corrections)
    print(f"adapting {meta.name} v{meta.model_version} to {len(corrections)} tile(s) of {args.dataset} "
          f"({edited:,} edited px) for {args.seconds:g} s, training the {args.train}")
    summary = adapt(start, corrections, out, seconds=args.seconds, train=args.train, edit_weight=args.edit_weight,
                    replay=[] if args.no_replay else args.replay, replay_count=args.replay_tiles, steps=args.steps,
                    seed=args.seed, threads=args.threads, version=version, log=print)
    if args.summary:
        Path(args.summary).write_text(json.dumps({k: v for k, v in summary.items()}, indent=2, default=str) + "\n")
    print(f"{summary['stop_reason']}: {summary['steps']} steps in {summary['seconds']:.0f} s; wrote {out}")
    return 0
