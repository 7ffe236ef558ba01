"""Check training-data folders before training and say what training will use.

:func:`training_plan` is the one pre-check that ``histoseg train``, the backend's
``fine_tune`` and the Fine-tune widget call: it returns how many tiles train and how many
validate, with a plain message, or raises :class:`~napari_histoseg.io.dataset.DatasetError`
(a ValueError) that says why the data cannot train a model and how many tiles it needs.
:func:`check_init_checkpoint`
checks a checkpoint to fine-tune (a tumour segmentation model of the data's classes).

Example
-------
>>> plan = training_plan("DATASET")          # doctest: +SKIP
>>> plan.train_tiles, plan.val_tiles, plan.message   # doctest: +SKIP
(1, 1, 'DATASET: 1 tile to train on and none held out (...)')
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from napari_histoseg.io.dataset import Dataset, DatasetError, load_dataset, read_mask_png
from napari_histoseg.training.splits import holdout_validation, split_tiles

__all__ = ["MIN_HOLDOUT_TILES", "TrainingPlan", "check_init_checkpoint", "training_plan"]

MIN_HOLDOUT_TILES = 4  # with fewer training tiles in a folder, none is held out for validation


@dataclass
class TrainingPlan:
    """What :func:`training_plan` found in the training-data folders.

    Attributes
    ----------
    train_tiles, val_tiles : int
        Tiles trained on and tiles validated on (all folders together). Where
        ``validate_on_train`` is set for a folder, its validation tiles are its training
        tiles and count in both.
    message : str
        One or a few plain sentences saying what training will use (for a log or status line).
    validate_on_train : bool
        True where any folder had too few tiles to hold some out.
    warnings : list of str
        What a person should know but that does not stop training (skipped tiles, a class
        that no mask marks).
    folders : list of dict
        Per folder: ``dataset`` (path), ``name``, ``train`` and ``val`` (:class:`Dataset`),
        ``how`` (the validation choice), ``validate_on_train``.
    classes, ignore_index : dict, int
        Of the first folder (every folder must declare the same classes).
    labelled : dict
        Labelled training pixels per class code.
    """

    train_tiles: int
    val_tiles: int
    message: str
    validate_on_train: bool = False
    warnings: list = field(default_factory=list)
    folders: list = field(default_factory=list)
    classes: dict = field(default_factory=dict)
    ignore_index: int = 255
    labelled: dict = field(default_factory=dict)
    key: tuple = ()


def _labelled_counts(ds: Dataset, codes) -> list[dict]:
    """Per tile of ``ds``: pixels of each class code (the ignore index excluded)."""
    out = []
    for t in ds.tiles:
        m = read_mask_png(ds.root / t["mask"])
        out.append({c: int((m == c).sum()) for c in codes})
    return out


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def training_plan(dataset_dirs, val_fraction: float = 0.15, seed: int = 0,
                  min_holdout_tiles: int = MIN_HOLDOUT_TILES) -> TrainingPlan:
    """Check training-data folder(s) and say what training on them will use, before training.

    Each folder is read and validated (:func:`load_dataset`). Tiles without a ``split``
    are split by group as :func:`split_tiles` does (test fraction 0.2; a folder of one
    source keeps all its tiles for training). Training tiles whose mask holds no labelled
    pixel (all ``ignore_index``) are left out. Of the rest, ``val_fraction`` is held out
    for validation by :func:`holdout_validation`; a folder with fewer than
    ``min_holdout_tiles`` such tiles (or ``val_fraction <= 0``) holds none out: it trains
    on all of them and validates on the same tiles, and the message says so.

    Tiles may have any size (edge tiles of an export are smaller than the others, and
    tiles smaller than the training patch are padded with the ignore index).

    Parameters
    ----------
    dataset_dirs : path or list of paths
        Training-data folders.
    val_fraction : float
        Fraction of the training tiles held out for validation.
    seed : int
        Seed of the split and of the hold-out.
    min_holdout_tiles : int
        Fewest training tiles in a folder for a separate validation hold-out.

    Returns
    -------
    TrainingPlan

    Raises
    ------
    DatasetError (a ValueError)
        When the data cannot train a model: a folder that is not a training-data folder
        or holds no tiles, no training tile at all (every tile is a ``test`` tile), or no
        labelled pixel in any training mask. The message says how many tiles are needed.
    """
    dirs = [dataset_dirs] if isinstance(dataset_dirs, (str, Path)) else list(dataset_dirs)
    if not dirs:
        raise DatasetError("no training-data folder given")
    folders, problems, warnings, notes = [], [], [], []
    classes = ignore = None
    labelled: dict = {}
    for d in dirs:
        ds = load_dataset(d)
        if classes is None:
            classes, ignore = ds.classes, ds.ignore_index
            codes = sorted(int(k) for k in classes)
            labelled = {c: 0 for c in codes}
        elif ds.classes != classes:
            raise DatasetError(f"{d}: classes {ds.classes} differ from {classes} of the first folder")
        if not any(t.get("split") for t in ds.tiles):
            ds = split_tiles(ds, val_fraction=0.0, test_fraction=0.2, seed=seed)
        train = ds.subset("train")
        if not train.tiles:
            splits = sorted({str(t.get("_split", t.get("split"))) for t in ds.tiles})
            which = "its only tile is not" if len(ds) == 1 else f"none of its {len(ds)} tiles is"
            problems.append(f"{d}: {which} a training tile (split {' / '.join(splits)})")
            continue
        counts = _labelled_counts(train, codes)
        keep = [t for t, c in zip(train.tiles, counts) if sum(c.values())]
        if not keep:
            problems.append(f"{d}: the masks of its {_plural(len(train), 'training tile')} hold no labelled "
                            f"pixel (every pixel is {ds.ignore_index}, ignore)")
            continue
        if len(keep) < len(train):
            warnings.append(f"{d}: {_plural(len(train) - len(keep), 'tile')} whose mask is all ignore "
                            f"({ds.ignore_index}) left out")
        for c in counts:
            for k, v in c.items():
                labelled[k] += v
        usable = Dataset(ds.root, ds.classes, ds.ignore_index, keep, ds.name)
        if val_fraction > 0 and len(usable) >= min_holdout_tiles:
            tr, va, how = holdout_validation(usable, val_fraction, seed)
            same = False
            notes.append(f"{ds.name}: {_plural(len(tr), 'tile')} to train on, {len(va)} held out for "
                         f"validation ({how})")
        else:
            tr, va, same = usable, usable, True
            why = ("no validation fraction was asked for" if val_fraction <= 0 else
                   f"a separate validation needs at least {min_holdout_tiles} tiles")
            how = "none held out: validated on the training tiles"
            notes.append(f"{ds.name}: {_plural(len(tr), 'tile')} to train on and none held out ({why}); "
                         f"validation uses the same {_plural(len(tr), 'tile')}, so its Dice shows how well "
                         "the model fits its training data, not how well it does on new tissue")
        folders.append({"dataset": str(d), "name": ds.name, "train": tr, "val": va, "how": how,
                        "validate_on_train": same})
    if not folders:
        raise DatasetError("cannot train: " + "; ".join(problems) + ". Training needs at least 1 training "
                           f"tile whose mask marks {' or '.join(repr(v) for v in classes.values())} pixels "
                           f"(a separate validation hold-out needs at least {min_holdout_tiles})")
    warnings = problems + warnings
    names = {int(k): v for k, v in classes.items()}
    absent = [names[c] for c, n in labelled.items() if n == 0]
    if absent:
        warnings.append(f"no mask marks any {' or '.join(repr(a) for a in absent)} pixel: the model "
                        "learns nothing about it from this data")
    n_tr = sum(len(f["train"]) for f in folders)
    n_va = sum(len(f["val"]) for f in folders)
    message = "; ".join(notes) + "." + "".join(f" Note: {w}." for w in warnings)
    return TrainingPlan(n_tr, n_va, message, any(f["validate_on_train"] for f in folders), warnings,
                        folders, classes, ignore, labelled, (tuple(str(d) for d in dirs), val_fraction, seed))


def check_init_checkpoint(ref, n_classes: int):
    """The path and :class:`ModelMeta` of a checkpoint to fine-tune (``"bundled"``: the
    bundled model). :class:`CheckpointError` (a ValueError) when it is not a tumour
    segmentation model of this data's classes."""
    from napari_histoseg.models import CheckpointError, list_architectures, read_meta

    if str(ref) == "bundled":
        from napari_histoseg.models.bundled import bundled_model_path

        ref = bundled_model_path()
    meta = read_meta(ref)
    what = f"{ref} is a {meta.task} model ({meta.name} v{meta.model_version}, {meta.arch})"
    if meta.task != "segmentation":
        raise CheckpointError(f"{what}; training here fine-tunes segmentation models: start from "
                              "'bundled' or a checkpoint written by histoseg train")
    if meta.arch not in list_architectures():
        raise CheckpointError(f"{what}, an architecture this install does not have")
    n_out = 1 if n_classes == 2 else n_classes
    if meta.out_channels != n_out:
        raise CheckpointError(f"{what} predicting {meta.out_channels} channel(s); the data has "
                              f"{n_classes} classes, which needs {n_out}")
    return ref, meta
