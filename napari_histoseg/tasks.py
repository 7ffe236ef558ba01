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

    def load_model(self, ref=None, device: str = "auto", engine: str = "torch"): ...
    def meta(self, model): ...
    def device(self, model) -> str: ...
    def describe(self, model) -> str: ...
    def iter_infer(self, model, image, **options) -> Generator[tuple[int, int], None, Any]: ...
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


def check_infer_options(task: Task, options: dict) -> None:
    """ValueError naming every option ``task`` does not take (none is silently dropped)."""
    unknown = sorted(set(options) - set(task.INFER_OPTIONS))
    if unknown:
        raise ValueError(f"{task.title} ({task.name}) does not take {', '.join(unknown)}; "
                         f"it takes {', '.join(sorted(task.INFER_OPTIONS))}")


def dataset_task(folder) -> str:
    """The ``task`` a training-data folder declares in its dataset.json (default segmentation)."""
    try:
        with open(f"{folder}/dataset.json") as f:
            task = json.load(f).get("task", "segmentation")
    except (OSError, ValueError):
        return "segmentation"
    return task if task in TASK_MODULES else "segmentation"


# --task NAME -> the module that trains and evaluates it. A task module provides
# ``add_train_options(parser)``, ``add_evaluate_options(parser)`` (task-only flags,
# imported without torch), ``run_train(args)`` and ``run_evaluate(args)``.
TASKS = {
    "segmentation": None,                             # tumour masks: this module
    "instances": "napari_histoseg.nuclei.cli",        # nuclei
    "classification": "napari_histoseg.classifier.cli",  # benign/malignant
}


# What the shared flags mean when not given, per task: each is what that task's bundled
# model was trained with (segmentation: MODEL_CARD.md; instances: NUCLEI_MODEL_CARD.md;
# classification: CLASSIFIER_MODEL_CARD.md).
TASK_DEFAULTS = {
    "segmentation": {"patch_size": 256, "batch_size": 8, "lr": 1e-3},
    "instances": {"patch_size": 256, "batch_size": 2, "lr": 2e-4},
    "classification": {"patch_size": 192, "batch_size": 16, "lr": 3e-4},
}


def _default_help(name: str) -> str:
    return "default: " + ", ".join(f"{d[name]:g} ({task})" for task, d in TASK_DEFAULTS.items())


def _fill_task_defaults(args, task: str) -> None:
    for name, value in TASK_DEFAULTS[task].items():
        if getattr(args, name, None) is None:
            setattr(args, name, value)


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
    try:
        with open(f"{first}/dataset.json") as f:
            task = json.load(f).get("task", "segmentation")
    except (OSError, ValueError):
        return "segmentation"
    return task if task in TASKS else "segmentation"


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a tumour, nucleus or benign/malignant model on training-data folders",
                       description="Train on the 'train' tiles of one or more training-data folders, "
                                   "validating on a hold-out by group, keeping the best checkpoint.")
    p.add_argument("dataset", nargs="+", help="training-data folder(s) (dataset.json, images/, masks/)")
    p.add_argument("-o", "--output", required=True, help="checkpoint to write (.safetensors)")
    p.add_argument("--arch", default="unet-mobilenet_v2", help="registered architecture")
    p.add_argument("--arch-kwargs", default="{}", help="JSON of extra architecture arguments")
    p.add_argument("--epochs", type=int, default=100, help="maximum epochs (default 100)")
    p.add_argument("--init-encoder", default=None, help="safetensors encoder weights to start from")
    p.add_argument("--init-checkpoint", default=None, metavar="PATH",
                   help="fine-tune this tumour-segmentation checkpoint ('bundled': the bundled model) "
                        "instead of training from scratch; its architecture replaces --arch")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT's .state.safetensors")
    p.add_argument("--time-budget", type=float, default=None, metavar="MIN", help="stop after MIN minutes")
    p.add_argument("--patch-size", type=int, default=None, help=_default_help("patch_size"))
    p.add_argument("--batch-size", type=int, default=None, help=_default_help("batch_size"))
    p.add_argument("--steps-per-epoch", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help=_default_help("lr"))
    p.add_argument("--optimizer", choices=["adam", "sgd-adam"], default="adam")
    p.add_argument("--sgd-epochs", type=int, default=10, help="SGD epochs before Adam (sgd-adam)")
    p.add_argument("--loss", choices=["soft", "generalized"], default="soft",
                   help="Dice term: soft Dice (default) or generalised Dice, plus weighted CE")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--patience", type=int, default=10)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--name", default="histoseg-model")
    p.add_argument("--model-version", default="0")
    p.add_argument("--half-weights", action="store_true", help="store weights as float16")
    p.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=None,
                   help="keep BatchNorm running statistics fixed while training (default: on when "
                        "fine-tuning a checkpoint, off otherwise)")
    p.add_argument("--summary", default=None, help="write the training summary JSON here")
    _add_task_arg(p)
    for _, module in _task_modules():
        module.add_train_options(p)
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
    _fill_task_defaults(args, task)
    if TASKS[task] is not None:
        if getattr(args, "init_checkpoint", None):
            raise ValueError(f"--init-checkpoint fine-tunes tumour-segmentation models; the {task!r} "
                             "task does not take it")
        return _task_module(task).run_train(args)
    from napari_histoseg.training.plan import training_plan
    from napari_histoseg.tumour.train import train

    plan = training_plan(args.dataset, args.val_fraction, args.seed)  # refuses unusable data first
    print(plan.message, flush=True)
    summary = train(
        args.dataset, args.output, arch=args.arch, arch_kwargs=json.loads(args.arch_kwargs),
        epochs=args.epochs, init_encoder=args.init_encoder, resume=args.resume,
        init_checkpoint=args.init_checkpoint, plan=plan,
        time_budget=args.time_budget, patch_size=args.patch_size, batch_size=args.batch_size,
        steps_per_epoch=args.steps_per_epoch, lr=args.lr, optimizer=args.optimizer,
        sgd_epochs=args.sgd_epochs, loss=args.loss, val_fraction=args.val_fraction,
        patience=args.patience, seed=args.seed, threads=args.threads, name=args.name,
        model_version=args.model_version, half_weights=args.half_weights,
        freeze_bn=getattr(args, "freeze_bn", None), log=lambda s: print(s, flush=True),
    )
    if args.summary:
        with open(args.summary, "w") as f:
            json.dump(summary, f, indent=2)
    return 0


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
    try:
        return args.func(args)
    except ValueError as e:  # data or checkpoint that cannot train: a message, not a traceback
        print(f"histoseg: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
