"""An export killed between any two file operations of its commit leaves a dataset that loads
and equals either the one before or the one after, never a mix; the next export cleans up.

A kill is simulated by raising a BaseException at the k-th ``os.replace`` or ``unlink`` with
the export's own clean-up disabled (a killed process runs none), for every k.
"""

from __future__ import annotations

import os
import pathlib
import shutil

import numpy as np
import pytest

from napari_histoseg.io.dataset import load_dataset
from napari_histoseg.tumour import export as export_mod
from napari_histoseg.tumour.export import export_tiles


class _Kill(BaseException):
    """The process dies here."""


def _scene(seed=0, h=100, w=130):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[20:70, 30:90] = 1
    edits = np.zeros((h, w), np.uint8)
    edits[60:70, 80:90] = 1
    return image, mask, edits


def _state(root) -> dict:
    """What a reader sees: every tile's record fields that matter and its pixels."""
    ds = load_dataset(root)   # checks files, sizes and codes
    out = {}
    for i, t in enumerate(ds.tiles):
        img, mask = ds.load(i)
        edits = None
        if t.get("edits"):
            edits = ds.path(i, "edits").read_bytes()
        out[t["id"]] = (t["x"], t["y"], t["width"], t["height"], img.tobytes(), mask.tobytes(), edits)
    return out


def _orphans(root) -> list:
    named = {p for t in load_dataset(root, check_masks=False).tiles
             for p in (t.get("image"), t.get("mask"), t.get("edits")) if p}
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if p.is_file() and p.name != "dataset.json" and str(p.relative_to(root)) not in named)


def _second(image, mask, edits, src, out):
    """A correction of the same tiles (some pixels changed, one tile unchanged), with edits,
    plus tiles of another region."""
    mask2 = mask.copy()
    mask2[64:100, 0:64] = 1           # changes the tiles of the lower left
    export_tiles(image, mask2, out, tile=64, edits=edits, source=src)


@pytest.fixture
def before(tmp_path):
    image, mask, edits = _scene()
    src = tmp_path / "slide.tif"
    src.write_bytes(b"pretend slide bytes")
    old = tmp_path / "old"
    export_tiles(image, mask, old, tile=64, source=src)
    new = tmp_path / "new"
    shutil.copytree(old, new)
    _second(image, mask, edits, src, new)
    return (image, mask, edits, src), old, new


def _kill_at(monkeypatch, k: int) -> dict:
    calls = {"n": 0}
    real_replace, real_unlink = os.replace, pathlib.Path.unlink

    def count():
        calls["n"] += 1
        if calls["n"] == k:
            raise _Kill(f"killed at file operation {k}")

    def replace(a, b, *args, **kwargs):
        count()
        return real_replace(a, b, *args, **kwargs)

    def unlink(self, missing_ok=False):
        count()
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(pathlib.Path, "unlink", unlink)
    monkeypatch.setattr(export_mod, "_discard", lambda *a, **kw: None)   # a dead process cleans nothing
    return calls


def test_kill_between_any_two_file_operations_leaves_old_or_new(tmp_path, before, monkeypatch):
    scene, old, new = before
    old_state, new_state = _state(old), _state(new)
    assert old_state != new_state

    # how many file operations the commit makes, uninterrupted
    probe = tmp_path / "probe"
    shutil.copytree(old, probe)
    calls = _kill_at(monkeypatch, 0)
    _second(*scene, probe)
    monkeypatch.undo()
    total = calls["n"]
    assert total >= 10   # tile renames, the commit, the removal of replaced files

    seen = {"old": 0, "new": 0}
    for k in range(1, total + 1):
        trial = tmp_path / f"trial{k}"
        shutil.copytree(old, trial)
        _kill_at(monkeypatch, k)
        with pytest.raises(_Kill):
            _second(*scene, trial)
        monkeypatch.undo()
        state = _state(trial)
        assert state in (old_state, new_state), f"killed at operation {k} of {total}: a mix"
        seen["old" if state == old_state else "new"] += 1
        # the same command again finishes the job and leaves no stray file
        _second(*scene, trial)
        assert _state(trial) == new_state
        assert _orphans(trial) == [], f"killed at operation {k}: files left behind"
    assert seen["old"] and seen["new"]


def test_export_never_changes_a_file_a_record_names(tmp_path, before, monkeypatch):
    """Every rename of the commit goes to a name no record of the old dataset uses."""
    scene, old, _ = before
    named = {str(old / p) for t in load_dataset(old).tiles for p in (t["image"], t["mask"])}
    trial = tmp_path / "trial"
    shutil.copytree(old, trial)
    named = {n.replace(str(old), str(trial)) for n in named}
    targets = []
    real = os.replace

    def replace(a, b):
        targets.append(str(b))
        return real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    _second(*scene, trial)
    assert targets[-1].endswith("dataset.json")
    assert not set(targets[:-1]) & named
