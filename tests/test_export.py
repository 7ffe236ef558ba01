"""Export of corrected masks into a training-data folder, read back with dataset.py."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from napari_histoseg.core.hashing import file_sha256
from napari_histoseg.io.dataset import load_dataset
from napari_histoseg.tumour import export as export_mod
from napari_histoseg.tumour.export import ExportError, export_tiles


def _scene(h=100, w=130, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[20:70, 30:90] = 1
    mask[0:5, :] = 255
    edits = np.zeros((h, w), np.uint8)
    edits[60:70, 80:90] = 1
    return image, mask, edits


@pytest.fixture
def scene(tmp_path):
    image, mask, edits = _scene()
    src = tmp_path / "slide.tif"
    src.write_bytes(b"pretend slide bytes")
    return image, mask, edits, src


def test_export_reads_back_exactly(tmp_path, scene):
    image, mask, edits, src = scene
    out = tmp_path / "ds"
    recs = export_tiles(image, mask, out, tile=64, edits=edits, source=src, level=0, mpp=0.5,
                        model={"name": "bundled", "version": "3"}, annotator="A. Path", x0=1000, y0=2000)
    assert len(recs) == 6 and not any(r["replaced"] for r in recs)
    ds = load_dataset(out)  # validates files, sizes and class codes
    assert ds.classes == {"0": "not tumour", "1": "tumour"} and ds.ignore_index == 255
    for i, t in enumerate(ds.tiles):
        x, y = t["x"] - 1000, t["y"] - 2000
        img, m = ds.load(i)
        assert (img.shape[1], img.shape[0]) == (t["width"], t["height"])
        np.testing.assert_array_equal(img, image[y:y + t["height"], x:x + t["width"]])
        np.testing.assert_array_equal(m, mask[y:y + t["height"], x:x + t["width"]])
        from skimage.io import imread

        e = imread(str(out / t["edits"]))
        np.testing.assert_array_equal(e, edits[y:y + t["height"], x:x + t["width"]])
        assert t["source"] == str(src.resolve()) and t["source_sha256"] == file_sha256(src)
        assert t["level"] == 0 and t["mpp"] == 0.5 and t["annotator"] == "A. Path"
        assert t["model"] == {"name": "bundled", "version": "3"}
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", t["created"])
    assert sorted((t["x"], t["y"]) for t in ds.tiles) == sorted(
        (1000 + x, 2000 + y) for y in (0, 64) for x in (0, 64, 128))
    # no temporary files are left behind
    assert not list(out.rglob(".*histoseg-tmp*"))


def test_file_sha256_matches_hashlib(tmp_path):
    import hashlib

    p = tmp_path / "big.bin"
    data = np.random.default_rng(1).integers(0, 255, 3_000_000, dtype=np.uint8).tobytes()
    p.write_bytes(data)
    assert file_sha256(p, chunk=1 << 16) == hashlib.sha256(data).hexdigest()


def test_append_twice_is_idempotent_and_other_tiles_add(tmp_path, scene):
    image, mask, edits, src = scene
    out = tmp_path / "ds"
    export_tiles(image, mask, out, tile=64, source=src)
    first = json.loads((out / "dataset.json").read_text())
    recs = export_tiles(image, mask, out, tile=64, source=src)
    assert all(r["replaced"] for r in recs)
    second = json.loads((out / "dataset.json").read_text())
    strip = lambda m: [{k: v for k, v in t.items() if k != "created"} for t in m["tiles"]]  # noqa: E731
    assert strip(first) == strip(second)
    assert len(list((out / "images").iterdir())) == len(first["tiles"])
    # the same tiles, corrected again: replaced in place, never duplicated
    mask2 = mask.copy()
    mask2[80:100, 0:20] = 1
    export_tiles(image, mask2, out, tile=64, source=src)
    ds = load_dataset(out)
    assert len(ds) == len(first["tiles"])
    i = next(i for i, t in enumerate(ds.tiles) if (t["x"], t["y"]) == (0, 64))
    np.testing.assert_array_equal(ds.load(i)[1], mask2[64:100, 0:64])
    # another region of the slide: added
    export_tiles(image, mask, out, tile=64, source=src, x0=4096)
    assert len(load_dataset(out)) == 2 * len(first["tiles"])


def test_only_edited_and_tissue_filter(tmp_path, scene):
    image, mask, edits, src = scene
    recs = export_tiles(image, mask, tmp_path / "a", tile=64, edits=edits, only_edited=True, source=src)
    assert [(r["x"], r["y"]) for r in recs] == [(64, 0), (64, 64)]  # edits span 60:70 x 80:90
    with pytest.raises(ExportError, match="edits"):
        export_tiles(image, mask, tmp_path / "b", only_edited=True)
    white = np.full_like(image, 255)
    white[:, :64] = (150, 60, 140)  # stained tissue on the left
    recs = export_tiles(white, mask, tmp_path / "c", tile=64, min_tissue=0.5)
    assert {r["x"] for r in recs} == {0}


def test_refuses_a_folder_that_is_not_a_dataset(tmp_path, scene):
    image, mask, _, _ = scene
    other = tmp_path / "photos"
    other.mkdir()
    (other / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(ExportError, match="no dataset.json"):
        export_tiles(image, mask, other)
    assert [p.name for p in other.iterdir()] == ["holiday.jpg"]
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "dataset.json").write_text(json.dumps({"format": "coco", "tiles": []}))
    with pytest.raises(ExportError, match="format"):
        export_tiles(image, mask, foreign)
    bad = mask.copy()
    bad[50, 50] = 7
    with pytest.raises(ExportError, match="codes"):
        export_tiles(image, bad, tmp_path / "new")


class _Boom(RuntimeError):
    pass


@pytest.mark.parametrize("fail_after", [0, 3, 7])
@pytest.mark.parametrize("error", ["exception", "enospc"])
def test_interrupted_export_leaves_earlier_dataset_intact(tmp_path, scene, monkeypatch, fail_after, error):
    import errno

    image, mask, edits, src = scene
    out = tmp_path / "ds"
    export_tiles(image, mask, out, tile=64, source=src)
    before_json = (out / "dataset.json").read_bytes()
    before_files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    real = export_mod._write_png
    calls = {"n": 0}

    def flaky(path, array):
        if calls["n"] >= fail_after:
            if error == "enospc":
                raise OSError(errno.ENOSPC, "No space left on device")
            raise _Boom("injected")
        calls["n"] += 1
        real(path, array)

    monkeypatch.setattr(export_mod, "_write_png", flaky)
    mask2 = 1 - np.clip(mask, 0, 1)  # a different correction of the same tiles, plus new tiles
    with pytest.raises((_Boom, OSError)):
        export_tiles(image, mask2, out, tile=64, edits=edits, source=src)
    with pytest.raises((_Boom, OSError)):
        export_tiles(image, mask2, out, tile=64, source=src, x0=640)
    assert (out / "dataset.json").read_bytes() == before_json
    after_files = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after_files == before_files  # no half tile, no temporary file, nothing changed
    ds = load_dataset(out)
    assert len(ds) == len(json.loads(before_json)["tiles"])


def test_full_disk_while_writing_dataset_json_changes_nothing(tmp_path, scene, monkeypatch):
    import errno

    image, mask, edits, src = scene
    out = tmp_path / "ds"
    export_tiles(image, mask, out, tile=64, source=src)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_mod.os, "fsync", full)  # the JSON is staged after every tile
    with pytest.raises(OSError, match="No space"):
        export_tiles(image, 1 - np.clip(mask, 0, 1), out, tile=64, edits=edits, source=src)
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert len(load_dataset(out)) == 6


def test_interrupted_first_export_leaves_a_usable_folder(tmp_path, scene, monkeypatch):
    image, mask, _, src = scene
    out = tmp_path / "ds"

    def boom(path, array):
        raise _Boom("injected")

    monkeypatch.setattr(export_mod, "_write_png", boom)
    with pytest.raises(_Boom):
        export_tiles(image, mask, out, tile=64, source=src)
    assert not (out / "dataset.json").exists()
    monkeypatch.undo()
    assert len(export_tiles(image, mask, out, tile=64, source=src)) == 6


def test_ids_without_source_hash_the_pixels(tmp_path):
    image, mask, _ = _scene()
    a = export_tiles(image, mask, tmp_path / "a", tile=64)
    b = export_tiles(image, mask, tmp_path / "b", tile=64)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert a[0]["source"] is None and a[0]["source_sha256"] is None
    image2 = image.copy()
    image2[0, 0] ^= 1
    c = export_tiles(image2, mask, tmp_path / "a", tile=64)
    assert len(load_dataset(tmp_path / "a")) == len(a) + len(c)


def test_cli_export_geojson_quantify(tmp_path, capsys):
    from skimage.io import imread, imsave

    from napari_histoseg.cli import main

    image, mask, edits = _scene()
    for name, arr in (("img.png", image), ("mask.png", mask), ("edits.png", edits)):
        imsave(str(tmp_path / name), arr, check_contrast=False)
    p = lambda n: str(tmp_path / n)  # noqa: E731
    assert main(["export", p("img.png"), p("mask.png"), "-o", p("ds"), "--tile", "64",
                 "--edits", p("edits.png"), "--annotator", "me", "--model", "bundled v1"]) == 0
    ds = load_dataset(tmp_path / "ds")
    assert len(ds) == 6 and ds.tiles[0]["annotator"] == "me" and ds.tiles[0]["model"] == "bundled v1"
    assert main(["export", p("img.png"), p("mask.png"), "-o", p("ds"), "--tile", "64"]) == 0
    assert "0 tiles added, 6 replaced" in capsys.readouterr().out
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("x")
    assert main(["export", p("img.png"), p("mask.png"), "-o", p("junk")]) == 2
    m1 = (mask == 1).astype(np.uint8)
    imsave(p("m1.png"), m1, check_contrast=False)
    assert main(["geojson", p("m1.png"), "-o", p("t.geojson"), "--offset", "10,20", "--scale", "2"]) == 0
    assert main(["geojson", p("t.geojson"), "-o", p("back.png"), "--shape", "100,130",
                 "--offset", "10,20", "--scale", "2"]) == 0
    np.testing.assert_array_equal(imread(p("back.png")), m1)
    assert main(["quantify", p("mask.png"), "--mpp", "0.5", "--csv", p("q.csv")]) == 0
    assert "tumour area" in capsys.readouterr().out and (tmp_path / "q.csv").is_file()


def test_extends_a_dataset_without_tiles_and_refuses_broken_json(tmp_path):
    image, mask, _ = _scene()
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dataset.json").write_text(json.dumps({"format": "histoseg-dataset", "version": 1,
                                                    "classes": {"0": "bg", "1": "tumour"}, "tiles": []}))
    export_tiles(image, mask, empty, tile=64)
    assert load_dataset(empty).classes == {"0": "bg", "1": "tumour"}
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "dataset.json").write_text("{not json")
    with pytest.raises(ExportError, match="cannot be read"):
        export_tiles(image, mask, broken)
    assert (broken / "dataset.json").read_text() == "{not json"
