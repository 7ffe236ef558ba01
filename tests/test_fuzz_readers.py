"""Seeded random hostile input to the readers: dataset.json, GeoJSON, checkpoint metadata and
NPY/NPZ. Each either reads or refuses with its own error and a message; nothing else escapes,
nothing reads outside its folder, nothing allocates what a header merely claims."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
import pytest

from napari_histoseg.backends.wire import NPY, NPZ, TooLarge, WireError, decode
from napari_histoseg.io.checks import InputError
from napari_histoseg.io.dataset import DatasetError, load_dataset
from napari_histoseg.testing import tumour_dataset
from napari_histoseg.core.geojson_import import geojson_to_mask_report

JUNK = [None, True, 0, -1, 1.5, float("nan"), float("inf"), 1e300, "", "x", "../x", "/etc/hostname",
        [], [1], [[1, 2]], {}, {"a": 1}, [[[0, 0], [1, 0]]], "images/../../etc/hostname"]


def _mutate(value, rng, depth=0):
    """``value`` with one random part replaced by junk."""
    if isinstance(value, dict) and value and depth < 4 and rng.random() < 0.7:
        key = list(value)[rng.integers(len(value))]
        return {**value, key: _mutate(value[key], rng, depth + 1)}
    if isinstance(value, list) and value and depth < 6 and rng.random() < 0.7:
        i = int(rng.integers(len(value)))
        return value[:i] + [_mutate(value[i], rng, depth + 1)] + value[i + 1:]
    return JUNK[rng.integers(len(JUNK))]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return tumour_dataset(tmp_path_factory.mktemp("fuzz_ds") / "ds", n=2, size=32)


def test_dataset_json_mutations_read_or_refuse(dataset):
    good = json.loads((dataset / "dataset.json").read_text())
    rng = np.random.default_rng(0)
    refused = 0
    try:
        for _ in range(150):
            bad = _mutate(good, rng)
            (dataset / "dataset.json").write_text(json.dumps(bad))
            try:
                ds = load_dataset(dataset)
            except DatasetError as e:
                assert str(e)
                refused += 1
                continue
            for t in ds.tiles:   # what was accepted reads files inside the folder only
                for key in ("image", "mask"):
                    assert ds.path(ds.tiles.index(t), key).is_relative_to(dataset.resolve())
    finally:
        (dataset / "dataset.json").write_text(json.dumps(good))
    assert refused > 50


def test_symlink_out_of_the_folder_is_refused(dataset, tmp_path):
    good = json.loads((dataset / "dataset.json").read_text())
    (tmp_path / "secret.png").write_bytes((dataset / good["tiles"][0]["image"]).read_bytes())
    link = dataset / "images" / "link.png"
    link.symlink_to(tmp_path / "secret.png")
    try:
        bad = {**good, "tiles": [{**good["tiles"][0], "image": "images/link.png"}]}
        (dataset / "dataset.json").write_text(json.dumps(bad))
        with pytest.raises(DatasetError, match="outside its folder"):
            load_dataset(dataset)
    finally:
        link.unlink()
        (dataset / "dataset.json").write_text(json.dumps(good))


def test_geojson_mutations_fill_or_refuse():
    sq = [[10, 10], [50, 10], [50, 50], [10, 50], [10, 10]]
    good = {"type": "FeatureCollection", "features": [
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [sq]},
         "properties": {"classification": {"name": "Tumor", "color": [200, 0, 0]}}},
        {"type": "Feature", "geometry": {"type": "MultiPolygon", "coordinates": [[sq]]}, "properties": {}}]}
    rng = np.random.default_rng(1)
    for _ in range(200):
        bad = _mutate(good, rng)
        if isinstance(bad, str):
            continue   # a string is read as the path of a file
        try:
            mask, skipped = geojson_to_mask_report(bad, (64, 64))
        except InputError as e:
            assert str(e)
            continue
        assert mask.shape == (64, 64) and mask.dtype == np.uint8


def test_geojson_far_coordinates_and_deep_nesting_are_refused():
    far = [[-1e300, -1e300], [1e300, -1e300], [1e300, 1e300], [-1e300, 1e300], [-1e300, -1e300]]
    with pytest.raises(InputError, match="beyond any slide"):
        geojson_to_mask_report({"type": "Polygon", "coordinates": [far]}, (8, 8))
    deep: dict = {"type": "Polygon", "coordinates": [sq := [[0, 0], [4, 0], [4, 4], [0, 0]]]}
    for _ in range(40):
        deep = {"type": "GeometryCollection", "geometries": [deep]}
    with pytest.raises(InputError, match="nested"):
        geojson_to_mask_report(deep, (8, 8))
    assert sq


def test_checkpoint_metadata_mutations_load_or_refuse(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import save_file

    from napari_histoseg.models.checkpoint import CheckpointError, load_checkpoint
    from napari_histoseg.testing import random_segmenter, save_random_checkpoint

    base = save_random_checkpoint(tmp_path / "base.safetensors", random_segmenter("lightmuseg"), tile_size=128)
    with safe_open(str(base), framework="pt") as f:
        meta = json.loads(f.metadata()["histoseg"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    rng = np.random.default_rng(2)
    refused = 0
    for k in range(12):
        bad = _mutate(meta, rng)
        path = tmp_path / f"m{k}.safetensors"
        save_file(tensors, str(path), metadata={"histoseg": json.dumps(bad)})
        try:
            _, loaded = load_checkpoint(path)
        except CheckpointError as e:
            assert str(e)
            refused += 1
            continue
        assert 32 <= loaded.tile_size <= 8192 and min(loaded.std) > 0
    assert refused > 4


def _npy(shape_text: str, payload: bytes = b"") -> bytes:
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': {shape_text}, }}"
    header += " " * (63 - len(header) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + payload


def test_npy_and_npz_headers_are_not_believed():
    with pytest.raises(TooLarge, match="over the limit"):
        decode(_npy("(1000000000000,)"), NPY)
    with pytest.raises(WireError, match="holds 16 bytes"):
        decode(_npy("(10,)", b"\0" * 16), NPY)
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(WireError, match="never objects or pickles"):
        decode(buf.getvalue(), NPY)
    ok = io.BytesIO()
    np.savez_compressed(ok, a=np.arange(6).reshape(2, 3))
    assert decode(ok.getvalue(), NPZ)["a"].tolist() == [[0, 1, 2], [3, 4, 5]]
    bomb = io.BytesIO()   # 1.5 MB of zeros compressed to a few kB, claiming more than allowed
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("a.npy", _npy("(200000,)", bytes(1_600_000)))
    with pytest.raises(TooLarge, match="over the limit"):
        decode(bomb.getvalue(), NPZ, max_bytes=800_000)
    with pytest.raises(WireError, match="not a readable NPZ"):
        decode(b"PK junk", NPZ)
