"""``histoseg train`` and ``histoseg evaluate`` subcommands.

``cli.py`` calls :func:`register` with its subparsers; :func:`main` runs the two
commands on their own (``python -m napari_histoseg.tasks train ...``)::

    histoseg train DATASET [DATASET ...] -o MODEL.safetensors [--arch NAME] [--epochs N]
                   [--init-encoder PATH | --init-checkpoint PATH|bundled] [--resume]
                   [--time-budget MIN] ...
    histoseg evaluate DATASET [--model PATH] [--split test] [--refine] [--json OUT]
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import sys
from typing import Any, Generator, Protocol

# The task registry: every service (backends, ``histoseg serve``) reaches a task through
# :func:`get_task` and knows no task by name. A task module provides what :class:`Task` lists.
TASK_MODULES = {
    "segmentation": "napari_histoseg.tumour.task",
    "instances": "napari_histoseg.nuclei.task",
    "classification": "napari_histoseg.classifier.task",
}


class Task(Protocol):
    """One task as the services see it (a module such as :mod:`napari_histoseg.nuclei.task`)."""

    name: str                      # the --task name and the checkpoint's ModelMeta.task
    title: str                     # for people: "nuclei"
    INFER_OPTIONS: frozenset       # keyword options iter_infer takes
    EXPLAIN_OPTIONS: frozenset     # keyword options iter_explain takes (empty: no explanations)

    def load_model(self, ref=None, device: str = "auto", engine: str = "torch"): ...
    def iter_infer(self, model, image, **options) -> Generator[tuple[int, int], None, Any]: ...
    def iter_explain(self, model, image, method: str = "gradcam", **options): ...
    def evaluate(self, dataset, model=None, **options) -> dict: ...
    def fine_tune(self, dataset, out, init=None, *, progress=None, should_stop=None, **settings) -> dict: ...
    def result_parts(self, result) -> tuple[dict, dict]: ...
    def result_from_parts(self, arrays: dict, info: dict): ...


def task_names() -> list[str]:
    return list(TASK_MODULES)


def get_task(name: str) -> Task:
    """The registered task ``name`` (imported on first use); KeyError names the registered ones."""
    if name not in TASK_MODULES:
        raise KeyError(f"no task {name!r}; the tasks are {', '.join(TASK_MODULES)}")
    return importlib.import_module(TASK_MODULES[name])


def check_infer_options(task: Task, options: dict, allowed=None) -> None:
    """ValueError naming every option ``task`` does not take (none is silently dropped);
    ``allowed``: the options to check against (default ``task.INFER_OPTIONS``)."""
    allowed = task.INFER_OPTIONS if allowed is None else allowed
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{task.title} ({task.name}) does not take {', '.join(unknown)}; "
                         f"it takes {', '.join(sorted(allowed)) or 'none'}")


# --task NAME -> the module that evaluates it: ``add_evaluate_options(parser)`` (task-only
# flags, imported without torch) and ``run_evaluate(args)``. Training: TRAINING below.
TASKS = {
    "segmentation": None,                             # tumour masks: this module
    "instances": "napari_histoseg.nuclei.cli",        # nuclei
    "classification": "napari_histoseg.classifier.cli",  # benign/malignant
}


# --task NAME -> its training settings (a TrainConfig subclass, imported without torch) and the
# module whose ``train(dataset, out, cfg)`` runs the shared loop with the task's hooks. The
# defaults of each config are what that task's bundled model was trained with.
TRAINING = {
    "segmentation": ("napari_histoseg.tumour.config:TumourConfig", "napari_histoseg.tumour.train"),
    "instances": ("napari_histoseg.nuclei.config:NucleiConfig", "napari_histoseg.nuclei.train"),
    "classification": ("napari_histoseg.classifier.config:ClassifierConfig", "napari_histoseg.classifier.train"),
}


def train_config(task: str):
    """The configuration class (a :class:`~napari_histoseg.training.config.TrainConfig`) of ``task``."""
    mod, cls = TRAINING[task][0].split(":")
    return getattr(importlib.import_module(mod), cls)


def _train_flags() -> dict:
    """``{flag: (dest, {task: field})}`` over every task's command-line settings."""
    from napari_histoseg.training.config import flag_of

    flags: dict = {}
    for task in TRAINING:
        for f in train_config(task).cli_fields():
            flags.setdefault(flag_of(f), (f.name, {}))[1][task] = f
    return flags


def _add_train_flag(p, flag: str, dest: str, fields: dict) -> None:
    f = next(iter(fields.values()))
    md = f.metadata
    if len(fields) == len(TRAINING) and len({repr(x.default) for x in fields.values()}) == 1:
        default = "" if any(f.default is x for x in (None, False, dataclasses.MISSING)) else f" (default {f.default})"
    elif len(fields) == len(TRAINING):
        default = " (default: " + ", ".join(f"{x.default} ({t})" for t, x in fields.items()) + ")"
    else:
        default = f" ({' and '.join(fields)} only)"
    kw = {"dest": dest, "default": None, "help": md["help"] + default}
    if md["action"] == "bool":
        kw["action"] = argparse.BooleanOptionalAction
    elif md["action"]:
        kw["action"] = md["action"]
    else:
        kw["type"] = md["type"] or type(f.default)
        choices = sorted({c for x in fields.values() for c in (x.metadata["choices"] or ())})
        if choices:
            kw["choices"] = choices
        if md["metavar"]:
            kw["metavar"] = md["metavar"]
    p.add_argument(flag, **kw)


def _task_modules():
    for task, name in TASKS.items():
        if name is None:
            continue
        try:
            yield task, importlib.import_module(name)
        except ModuleNotFoundError as e:
            if not (e.name and name.startswith(e.name)):
                raise


def _add_task_arg(p) -> None:
    p.add_argument("--task", choices=list(TASKS), default=None,
                   help="segmentation (tumour masks), instances (nuclei) or classification "
                        "(benign/malignant); default: the dataset's own 'task'")


def _task_module(task: str):
    try:
        return importlib.import_module(TASKS[task])
    except ModuleNotFoundError as e:
        if e.name and TASKS[task].startswith(e.name):
            raise SystemExit(f"histoseg: the {task!r} task is not part of this installation") from None
        raise


def _task_of(args) -> str:
    if args.task:
        return args.task
    first = args.dataset[0] if isinstance(args.dataset, list) else args.dataset
    return dataset_task(first)


def dataset_task(folder) -> str:
    """The registered ``task`` a training-data folder declares in its dataset.json, else
    "segmentation" (whose reader then says what is wrong with the file)."""
    try:
        with open(f"{folder}/dataset.json") as f:
            meta = json.load(f)
    except (OSError, ValueError, RecursionError):
        return "segmentation"
    task = meta.get("task", "segmentation") if isinstance(meta, dict) else None
    return task if isinstance(task, str) and task in TASK_MODULES else "segmentation"


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a tumour, nucleus or benign/malignant model on training-data folders",
                       description="Train on the 'train' tiles of one or more training-data folders, "
                                   "validating on a hold-out by group, keeping the best checkpoint. "
                                   "A flag the task does not use is refused.")
    p.add_argument("dataset", nargs="+", help="training-data folder(s) (dataset.json, images/, masks/)")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--summary", default=None, help="write the training summary JSON here")
    _add_task_arg(p)
    for flag, (dest, fields) in _train_flags().items():
        _add_train_flag(p, flag, dest, fields)
    p.set_defaults(func=_run_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="evaluate a tumour, nucleus or benign/malignant model on a training-data folder",
                       description="Per-image and mean Dice, IoU, precision, recall, pixel AUC and "
                                   "boundary F (tolerance 5 px by default).")
    p.add_argument("dataset", help="training-data folder")
    p.add_argument("--model", default=None, help="checkpoint (default: the bundled model)")
    p.add_argument("--split", default="test", help="train, val, test or all (default test)")
    p.add_argument("--refine", action="store_true", help="refine the prediction (if available)")
    p.add_argument("--json", default=None, metavar="OUT", help="write per-image and mean metrics")
    p.add_argument("--tolerance", type=float, default=5.0, help="boundary F tolerance in px")
    p.add_argument("--threshold", type=float, default=0.5)
    _add_task_arg(p)
    for _, module in _task_modules():
        module.add_evaluate_options(p)
    p.set_defaults(func=_run_evaluate)


def register(subparsers) -> None:
    """Add the ``train`` and ``evaluate`` subcommands to an argparse subparsers object."""
    _add_train(subparsers)
    _add_evaluate(subparsers)


def _run_train(args) -> int:
    task = _task_of(args)
    config = train_config(task)
    names = {f.name for f in config.cli_fields()}
    given = {dest: getattr(args, dest) for dest, _ in _train_flags().values() if getattr(args, dest, None) is not None}
    refused = sorted(flag for flag, (dest, _) in _train_flags().items() if dest in given and dest not in names)
    if refused:
        print(f"histoseg train: --task {task} does not use {', '.join(refused)}; leave "
              f"{'it' if len(refused) == 1 else 'them'} out (see histoseg train --help)", file=sys.stderr)
        return 2
    datasets = args.dataset if isinstance(args.dataset, list) else [args.dataset]
    if task == "classification" and len(datasets) != 1:   # tumour and nuclei train on several
        print(f"histoseg train: --task {task} trains on one dataset folder, got {len(datasets)}", file=sys.stderr)
        return 2
    cfg = config(**given)
    check_train_settings(task, cfg, args.output)
    train = importlib.import_module(TRAINING[task][1]).train
    summary = train(datasets if task != "classification" else datasets[0], args.output, cfg,
                    log=lambda s: print(s, flush=True))
    if args.summary:
        from napari_histoseg.io.atomic import atomic_write_text

        atomic_write_text(args.summary, json.dumps(summary, indent=2, default=float))
    return 0


# the architectures of a task start with these (a nucleus detector is a maskrcnn-*)
_ARCH_PREFIX = {"instances": "maskrcnn-", "classification": "classifier-"}


def check_train_settings(task: str, cfg, output) -> None:
    """Refuse settings that cannot train or would train nothing, before any data is read:
    numbers out of range, a patch and batch over the memory budget, an unknown architecture
    or arguments it does not take, an encoder file that is a pickle or a whole checkpoint, a
    ``--resume`` without a state to resume (a checkpoint of another task: the training plan). InputError says which."""
    from pathlib import Path

    from napari_histoseg.io.atomic import output_folder
    from napari_histoseg.io.checks import InputError, batch_bytes, check_float, check_int, check_memory

    check_int(cfg.epochs, "--epochs", lo=1, hi=100_000)
    if cfg.steps_per_epoch is not None:
        check_int(cfg.steps_per_epoch, "--steps-per-epoch", lo=1, hi=10_000_000)
    check_float(cfg.lr, "--lr", lo=0, lo_open=True, hi=10)
    check_int(cfg.batch_size, "--batch-size", lo=1, hi=4096)
    check_int(cfg.patch_size, "--patch-size", lo=32, hi=8192)
    check_int(cfg.sgd_epochs, "--sgd-epochs", lo=0, hi=100_000)
    check_int(cfg.patience, "--patience", lo=1, hi=100_000)
    check_int(cfg.seed, "--seed", lo=0, hi=2 ** 32 - 1)
    if cfg.threads is not None:
        check_int(cfg.threads, "--threads", lo=1, hi=1024)
    if cfg.time_budget is not None:
        check_float(cfg.time_budget, "--time-budget", lo=0, lo_open=True, hi=1e6)
    check_memory(batch_bytes(cfg.batch_size, cfg.patch_size, training=True),
                 f"training on batches of {cfg.batch_size} patches of {cfg.patch_size} px",
                 hint="use a smaller --patch-size or --batch-size")
    out = Path(output)
    if out.suffix != ".safetensors":
        raise InputError(f"-o {out.name}: a checkpoint is written as .safetensors")
    output_folder(out)
    _check_arch(task, cfg)
    if cfg.init_encoder:
        _check_encoder(cfg.init_encoder)
    if cfg.resume:
        from napari_histoseg.training.loop import state_path_for

        state = state_path_for(out)
        if not state.is_file():
            raise InputError(f"--resume: there is no training state {state} to resume; "
                             "run without --resume to start a new training")


def _check_arch(task: str, cfg) -> None:
    import inspect

    from napari_histoseg.io.checks import InputError
    from napari_histoseg.models import list_architectures
    from napari_histoseg.models.registry import _REGISTRY

    arch = getattr(cfg, "arch", None)
    if arch is None or getattr(cfg, "init_checkpoint", None):
        return   # the checkpoint's architecture is used
    prefix = _ARCH_PREFIX.get(task)
    fits = [a for a in list_architectures() if (a.startswith(prefix) if prefix else
                                                not any(a.startswith(x) for x in _ARCH_PREFIX.values()))]
    if arch not in fits:
        raise InputError(f"--arch {arch!r} is not an architecture for --task {task}; known: {', '.join(fits)}")
    kwargs = getattr(cfg, "arch_kwargs", {})
    if not isinstance(kwargs, dict):
        raise InputError(f"--arch-kwargs must be a JSON object such as '{{\"dropout\": 0.1}}'; got {kwargs!r}")
    params = inspect.signature(_REGISTRY[arch]).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise InputError(f"--arch-kwargs: {arch} does not take {', '.join(unknown)}; it takes "
                             f"{', '.join(params) or 'nothing'}")
    if kwargs:   # the builder passes them on: build once to see that they fit
        from napari_histoseg.models import build_model

        try:
            build_model(arch, **kwargs)
        except (TypeError, ValueError, KeyError) as e:
            raise InputError(f"--arch-kwargs {kwargs} do not fit {arch}: {e}") from None


def _check_encoder(path) -> None:
    from pathlib import Path

    from napari_histoseg.io.checks import InputError

    path = Path(path)
    if not path.is_file():
        raise InputError(f"--init-encoder {path}: no such file")
    if path.suffix != ".safetensors":
        raise InputError(f"--init-encoder {path}: encoder weights are read from .safetensors only (a pickled "
                         "PyTorch file is never loaded: unpickling an untrusted file can run code)")
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as e:
        raise InputError(f"--init-encoder {path}: not a safetensors file ({e})") from None
    if "histoseg" in header:
        raise InputError(f"--init-encoder {path} is a whole histoseg checkpoint, not encoder weights; "
                         "fine-tune a checkpoint of the task with --init-checkpoint")


def format_table(result: dict) -> str:
    """Plain-text table of per-image and mean metrics from :func:`evaluate`."""
    cols = ["dice", "iou", "precision", "recall", "auc", "boundary_f"]
    fmt = lambda v: "   nan" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:6.3f}"  # noqa: E731
    width = max([len(r["id"]) for r in result["per_image"]] + [4])
    lines = [f"{'tile':<{width}}  " + "  ".join(f"{c[:6]:>6}" for c in cols)]
    for r in result["per_image"]:
        lines.append(f"{r['id']:<{width}}  " + "  ".join(fmt(r[c]) for c in cols))
    m = result["mean"]
    lines.append(f"{'mean':<{width}}  " + "  ".join(fmt(m[f'mean_{c}']) for c in cols))
    lines.append(f"pooled Dice {m['pooled_dice']:.4f}  pooled IoU {m['pooled_iou']:.4f}  "
                 f"({m['n_images']} images; boundary F tolerance {result['tolerance']} px)")
    return "\n".join(lines)


def _run_evaluate(args) -> int:
    task = _task_of(args)
    if TASKS[task] is not None:
        return _task_module(task).run_evaluate(args)
    from napari_histoseg.tumour.evaluate import evaluate

    result = evaluate(args.dataset, args.model, split=args.split, refine=args.refine,
                      tolerance=args.tolerance, threshold=args.threshold)
    print(format_table(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    return 0


def main(argv=None) -> int:
    """Run ``train`` or ``evaluate`` from the command line."""
    parser = argparse.ArgumentParser(prog="histoseg")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    from napari_histoseg.io.errors import user_error

    try:
        return args.func(args)
    except Exception as e:  # data or checkpoint that cannot train: a message, not a traceback
        message = user_error(e)
        if message is None:
            raise
        print(f"histoseg: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
