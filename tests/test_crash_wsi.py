"""A whole-slide run killed while its store is being created, or after a random block, resumes
with the same command to the map of an uninterrupted run."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from napari_histoseg.models import save_checkpoint
from napari_histoseg.models.segmenter import Segmenter
from napari_histoseg.wsi import omezarr, read_result, segment_slide

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
OPTS = dict(block=128, tile=64, overlap=16, tissue=False)


class _Kill(BaseException):
    """The process dies here."""


class _BlockKill(RuntimeError):
    """The process dies inside a block (an Exception, so Dask's threads hand it back)."""


@pytest.fixture(scope="module")
def files(tmp_path_factory, he_image):
    d = tmp_path_factory.mktemp("crash_wsi")
    model = Segmenter.random(seed=0, device="cpu")
    ckpt = str(save_checkpoint(model.module, d / "tiny.safetensors", model.meta))
    slide = d / "slide.tif"
    tifffile.imwrite(slide, np.ascontiguousarray(he_image[:256, :256]), tile=(64, 64), photometric="rgb",
                     compression="zlib", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    full = d / "full.ome.zarr"
    segment_slide(str(slide), full, model=ckpt, **OPTS)
    return {"slide": str(slide), "model": ckpt, "full": read_result(full)}


def _same_map(out, full) -> bool:
    r = read_result(out)
    return all(np.array_equal(a[:], b[:]) for key in ("probability", "tumour")
               for a, b in zip(r[key], full[key]))


def test_killed_while_creating_the_store_resumes(files, tmp_path, monkeypatch):
    out = tmp_path / "s.ome.zarr"
    real = omezarr._pyramid
    calls = {"n": 0}

    def dies_halfway(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:          # the probability pyramid is written, the labels are not
            raise _Kill("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(omezarr, "_pyramid", dies_halfway)
    monkeypatch.setattr(omezarr.shutil, "rmtree", lambda *a, **kw: None)   # a dead process cleans nothing
    with pytest.raises(_Kill):
        segment_slide(files["slide"], out, model=files["model"], **OPTS)
    monkeypatch.undo()
    assert not out.exists()          # no half store under the result's name
    assert list(tmp_path.glob(".s.ome.zarr*"))   # only the killed creation's leftovers
    segment_slide(files["slide"], out, model=files["model"], **OPTS)   # the same command
    assert _same_map(out, files["full"])
    assert not list(tmp_path.glob(".s.ome.zarr*"))


@pytest.mark.parametrize("seed", [0])
def test_killed_at_a_random_block_resumes_to_the_same_map(files, tmp_path, monkeypatch, seed):
    out = tmp_path / "s.ome.zarr"
    k = int(np.random.default_rng(seed).integers(1, 5))   # of 4 blocks
    real = omezarr.mark_done
    calls = {"n": 0}

    def dies_at_k(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == k:          # block k is written, not yet marked done
            raise _BlockKill("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(omezarr, "mark_done", dies_at_k)
    with pytest.raises(_BlockKill):
        segment_slide(files["slide"], out, model=files["model"], **OPTS)
    monkeypatch.undo()
    assert len(omezarr.finished_blocks(out)) == k - 1
    res = segment_slide(files["slide"], out, model=files["model"], **OPTS)
    assert res.blocks_run == 4 - (k - 1)
    assert _same_map(out, files["full"])


def test_store_of_something_else_is_still_refused(files, tmp_path):
    out = tmp_path / "s.ome.zarr"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not a histoseg result"):
        segment_slide(files["slide"], out, model=files["model"], **OPTS)
    assert (out / "notes.txt").read_text() == "mine"
    shutil.rmtree(out)
