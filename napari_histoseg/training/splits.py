"""Train/validation splits that keep a group (slide, patient) on one side."""

from __future__ import annotations

import random

from napari_histoseg.io.dataset import Dataset


def split_tiles(
    ds: Dataset, val_fraction: float = 0.15, test_fraction: float = 0.0, seed: int = 0
) -> Dataset:
    """Assign every tile a ``_split`` of ``"train"``, ``"val"`` or ``"test"``.

    Tiles with a ``split`` in ``dataset.json`` keep it. The others are split by
    ``group`` (the tile's own id where it has none): groups are shuffled with ``seed``
    and whole groups go to test, then val, until the fractions are reached, so no
    group straddles the split. Returns a new :class:`Dataset` (the input is unchanged).
    """
    tiles = [dict(t) for t in ds.tiles]
    free = [t for t in tiles if t.get("split") is None]
    for t in tiles:
        if t.get("split") is not None:
            t["_split"] = t["split"]
    groups = sorted({str(t.get("group", t["id"])) for t in free})
    random.Random(seed).shuffle(groups)
    n = len(free)
    sizes = {g: sum(1 for t in free if str(t.get("group", t["id"])) == g) for g in groups}
    assign, count_test, count_val = {}, 0, 0
    for i, g in enumerate(groups):
        last = i == len(groups) - 1 and "train" not in assign.values()  # keep one group to train on
        if count_test < test_fraction * n and not last:
            assign[g], count_test = "test", count_test + sizes[g]
        elif count_val < val_fraction * n and not last:
            assign[g], count_val = "val", count_val + sizes[g]
        else:
            assign[g] = "train"
    for t in free:
        t["_split"] = assign[str(t.get("group", t["id"]))]
    return Dataset(ds.root, ds.classes, ds.ignore_index, tiles, ds.name)


def holdout_validation(ds: Dataset, fraction: float = 0.15, seed: int = 0) -> tuple[Dataset, Dataset, str]:
    """Split the *training* tiles of ``ds`` into (train, val) for early stopping.

    Whole groups are held out (seeded). Where the training tiles form a single group
    (one slide region, as in ``bcss``), no group split exists; the tiles are then
    held out as a spatial block (the largest ``x`` coordinates, i.e. the right-hand
    columns of the region) so validation tiles are at least not interleaved with
    training tiles. Returns ``(train, val, how)`` where ``how`` describes the choice.
    """
    train = ds.subset("train")
    if not train.tiles:
        return train, train, "no training tiles"
    groups = sorted({str(t.get("group", t["id"])) for t in train.tiles})
    k = max(1, round(fraction * len(train)))
    if len(groups) >= 2:
        rng = random.Random(seed)
        rng.shuffle(groups)
        val_groups, n = set(), 0
        for g in groups:
            if n >= k:
                break
            val_groups.add(g)
            n += sum(1 for t in train.tiles if str(t.get("group", t["id"])) == g)
        how = f"{len(val_groups)} of {len(groups)} groups held out (seed {seed})"
        is_val = lambda t: str(t.get("group", t["id"])) in val_groups  # noqa: E731
    else:
        xs = sorted({int(t.get("x", 0)) for t in train.tiles}, reverse=True)
        cols, n = [], 0
        for x in xs:
            if n >= k:
                break
            cols.append(x)
            n += sum(1 for t in train.tiles if int(t.get("x", 0)) == x)
        how = f"single group: spatial block x >= {min(cols)} px held out"
        is_val = lambda t: int(t.get("x", 0)) in cols  # noqa: E731
    tr = [t for t in train.tiles if not is_val(t)]
    va = [t for t in train.tiles if is_val(t)]
    mk = lambda ts: Dataset(ds.root, ds.classes, ds.ignore_index, ts, ds.name)  # noqa: E731
    return mk(tr), mk(va), how
