"""Bad input on the command line: exit code 2 with a one-line ``histoseg:`` message, never a
traceback, never a meaningless result with exit code 0, and no output file left behind.

Every case the hostile-input probe found for these commands is a seed below; the seeded
random cases add numbers of every kind (NaN, infinities, zero, negative, huge, text) to every
numeric option. Commands run in-process through :func:`napari_histoseg.cli.main`; one runs as
a subprocess, to see the real exit code and stderr of the installed entry point.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest
import tifffile
from safetensors.torch import save_file
from skimage.io import imsave

from napari_histoseg.cli import main
from napari_histoseg.testing import save_random_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _checkpoint(path, base, **meta_changes):
    """A copy of checkpoint ``base`` with its metadata changed (or weights made NaN)."""
    from safetensors import safe_open

    with safe_open(str(base), framework="pt") as f:
        meta = json.loads(f.metadata()["histoseg"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    nan = meta_changes.pop("_nan", False)
    meta.update(meta_changes)
    if nan:
        k = next(k for k, v in tensors.items() if v.is_floating_point())
        tensors[k] = tensors[k].clone().fill_(float("nan"))
    save_file(tensors, str(path), metadata={"histoseg": json.dumps(meta)})
    return str(path)


@pytest.fixture(scope="module")
def env(tmp_path_factory, he_image):
    d = tmp_path_factory.mktemp("fuzz_cli")
    f = {"dir": d}
    img = np.ascontiguousarray(he_image[:128, :128])
    imsave(d / "he.png", img, check_contrast=False)
    f["image"] = str(d / "he.png")
    mask = np.zeros((128, 128), np.uint8)
    mask[30:90, 30:90] = 1
    imsave(d / "mask.png", mask, check_contrast=False)
    f["mask"] = str(d / "mask.png")
    imsave(d / "mask7.png", mask * 7, check_contrast=False)
    tifffile.imwrite(d / "maskf.tif", mask.astype(np.float32))
    tifffile.imwrite(d / "mask16.tif", mask.astype(np.uint16) * 1000)
    tifffile.imwrite(d / "mask3d.tif", np.stack([mask] * 4))
    (d / "text.png").write_text("not an image")
    (d / "text.tif").write_text("not an image")
    a = np.random.default_rng(0).random((128, 128, 3)).astype(np.float32)
    a[5, 5, 0] = np.inf
    tifffile.imwrite(d / "inf.tif", a)
    tifffile.imwrite(d / "neg.tif", a.clip(0, 1) - 0.5)
    # a valid, tiny tiled TIFF whose header claims 100000 x 100000 px
    tifffile.imwrite(d / "huge.tif", np.zeros((512, 512, 3), np.uint8), tile=(256, 256), compression="zlib")
    with tifffile.TiffFile(d / "huge.tif", mode="r+b") as t:
        t.pages[0].tags["ImageWidth"].overwrite(100000)
        t.pages[0].tags["ImageLength"].overwrite(100000)
    tifffile.imwrite(d / "hugemask.tif", np.zeros((512, 512), np.uint8), compression="zlib")
    with tifffile.TiffFile(d / "hugemask.tif", mode="r+b") as t:
        t.pages[0].tags["ImageWidth"].overwrite(100000)
        t.pages[0].tags["ImageLength"].overwrite(100000)
    good = save_random_checkpoint(d / "model.safetensors", tile_size=128)
    f["model"] = str(good)
    f["tile0"] = _checkpoint(d / "tile0.safetensors", good, tile_size=0)
    f["std0"] = _checkpoint(d / "std0.safetensors", good, std=[0, 0, 0])
    f["negmpp"] = _checkpoint(d / "negmpp.safetensors", good, mpp=-0.5)
    f["nanw"] = _checkpoint(d / "nanw.safetensors", good, _nan=True)
    f["typemeta"] = _checkpoint(d / "typemeta.safetensors", good, tile_size="big", mean=None)
    pickle.dump({"weights": 1}, open(d / "model.pt", "wb"))
    sq = [[[10, 10], [100, 10], [100, 100], [10, 100], [10, 10]]]
    geo = {
        "ok": {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": sq}, "properties": {}},
        "num": {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": 5}},
        "flat": {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [0, 0, 10, 0, 10, 10]}},
        "ring1d": {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[0, 0, 10, 0, 10, 10]]}},
        "fdict": {"type": "FeatureCollection", "features": {"a": 1}},
        "fstr": {"type": "FeatureCollection", "features": "features"},
        "gstr": {"type": "Feature", "geometry": "Polygon"},
        "huge": {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [
            [[-1e300, -1e300], [1e300, -1e300], [1e300, 1e300], [-1e300, 1e300], [-1e300, -1e300]]]}},
    }
    for k, v in geo.items():
        (d / f"{k}.geojson").write_text(json.dumps(v))
    (d / "inf.geojson").write_text(json.dumps(geo["ok"]).replace("100]", "1e999]"))
    (d / "deep.geojson").write_text("[" * 100_000 + "]" * 100_000)
    return f


def _run(argv, capsys):
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:       # argparse refusing an option
        rc = e.code if isinstance(e.code, int) else 2
    return rc, capsys.readouterr().err


def _refused(argv, capsys, env, outputs=()):
    rc, err = _run(argv, capsys)
    assert rc == 2, f"{argv}: exit {rc}; {err[-500:]}"
    assert "Traceback" not in err and "histoseg" in err, err[-500:]
    for out in outputs:
        left = [p.name for p in out.parent.glob(f".{out.stem}.histoseg-tmp-*")] if out.parent.exists() else []
        assert not out.exists() and not left, f"{argv}: left {out.name} {left}"
    return err


def _segment(env, *extra, out="seg.png", model="model"):
    return ["segment", env["image"], "-o", env["dir"] / "out" / out, "--model", env[model], *extra]


SEGMENT_OPTIONS = ["--tile 7", "--tile -64", "--tile 100000", "--batch-size -3", "--batch-size 0",
                   "--threshold nan", "--threshold 2", "--threshold 0", "--threshold inf", "--level -1",
                   "--overlap -5", "--overlap 65", "--tile abc"]


@pytest.mark.parametrize("opts", SEGMENT_OPTIONS)
def test_segment_numbers(env, capsys, opts):
    _refused(_segment(env, *opts.split()), capsys, env, [env["dir"] / "out" / "seg.png"])


@pytest.mark.parametrize("model", ["tile0", "std0", "negmpp", "nanw", "typemeta"])
def test_segment_broken_checkpoints(env, capsys, model):
    err = _refused(_segment(env, model=model), capsys, env, [env["dir"] / "out" / "seg.png"])
    assert "metadata" in err or "NaN" in err


@pytest.mark.parametrize("image, says", [("inf.tif", "infinite"), ("neg.tif", "values in"),
                                         ("huge.tif", "100000 x 100000"), ("text.png", "Cannot"),
                                         ("text.tif", "Cannot")])
def test_segment_images_that_cannot_be_believed(env, capsys, image, says):
    argv = _segment(env)
    argv[1] = env["dir"] / image
    assert says in _refused(argv, capsys, env, [env["dir"] / "out" / "seg.png"])


def test_segment_leaves_no_mask_when_the_probability_cannot_be_written(env, capsys):
    (env["dir"] / "afile").write_text("x")
    out = env["dir"] / "out" / "pairs.png"
    _refused(_segment(env, "--prob", env["dir"] / "afile" / "p.tif", out="pairs.png"), capsys, env, [out])
    _refused(_segment(env, "--prob", env["dir"] / "out" / "p.png", out="pairs.png"), capsys, env, [out])
    _refused(_segment(env, out="../afile/seg.png"), capsys, env)


QUANTIFY_MASKS = [("mask7.png", "codes"), ("maskf.tif", "float32"), ("mask16.tif", "0..1000"),
                  ("mask3d.tif", "2-D"), ("text.png", "Cannot"), ("hugemask.tif", "100000 x 100000")]


@pytest.mark.parametrize("mask, says", QUANTIFY_MASKS)
def test_quantify_refuses_what_is_not_a_mask(env, capsys, mask, says):
    csv = env["dir"] / "out" / "q.csv"
    assert says in _refused(["quantify", env["dir"] / mask, "--csv", csv], capsys, env, [csv])


@pytest.mark.parametrize("opts", ["--mpp -1", "--mpp nan", "--mpp 0", "--level -1", "--level 5"])
def test_quantify_numbers(env, capsys, opts):
    _refused(["quantify", env["mask"], "--image", env["image"], *opts.split()], capsys, env)


@pytest.mark.parametrize("name", ["num", "flat", "ring1d", "fdict", "fstr", "gstr", "huge", "inf", "deep"])
def test_geojson_malformed_geometry(env, capsys, name):
    out = env["dir"] / "out" / f"g_{name}.png"
    _refused(["geojson", env["dir"] / f"{name}.geojson", "-o", out, "--shape", "200,200"], capsys, env, [out])


@pytest.mark.parametrize("opts", ["--shape 0,0", "--shape 100000,100000", "--shape -5,5", "--shape nan,4",
                                  "--shape 5", "--scale 0", "--scale -1", "--scale nan", "--offset inf,0",
                                  "--offset 1,2,3"])
def test_geojson_numbers(env, capsys, opts):
    out = env["dir"] / "out" / "g.png"
    argv = ["geojson", env["dir"] / "ok.geojson", "-o", out, *opts.split()]
    if "--shape" not in opts:
        argv += ["--shape", "200,200"]
    _refused(argv, capsys, env, [out])


@pytest.mark.parametrize("opts", ["--tolerance -1", "--tolerance nan", "--min-region-px -1",
                                  "--color 1,2", "--label 0", "--mpp 0"])
def test_geojson_export_numbers(env, capsys, opts):
    out = env["dir"] / "out" / "e.geojson"
    _refused(["geojson", env["mask"], "-o", out, *opts.split()], capsys, env, [out])


@pytest.mark.parametrize("opts", ["--tile 1", "--tile 0", "--tile -512", "--level -1", "--mpp -1",
                                  "--min-tissue 2", "--min-tissue nan"])
def test_export_numbers(env, capsys, opts):
    out = env["dir"] / "out" / "ds_bad"
    _refused(["export", env["image"], env["mask"], "-o", out, *opts.split()], capsys, env, [out])


def test_export_of_a_mask_of_another_size_or_kind(env, capsys):
    out = env["dir"] / "out" / "ds_bad"
    for mask in ("hugemask.tif", "text.png", "maskf.tif", "mask3d.tif"):
        _refused(["export", env["image"], env["dir"] / mask, "-o", out], capsys, env, [out])


TRAIN = ["--epochs 0", "--patch-size 4096", "--patch-size 0", "--arch nope", "--arch-kwargs [1]",
         '--arch-kwargs {"nope":1}', "--resume", "--lr nan", "--lr -1", "--batch-size 0", "--time-budget -5"]


@pytest.fixture(scope="module")
def small_dataset(env):
    from napari_histoseg.testing import tumour_dataset

    return tumour_dataset(env["dir"] / "ds", n=2, size=64)


@pytest.mark.parametrize("opts", TRAIN)
def test_train_settings(env, capsys, opts, tmp_path, small_dataset):
    ds = small_dataset
    out = tmp_path / "t.safetensors"
    flag, _, value = opts.partition(" ")
    _refused(["train", ds, "-o", out, flag, *([value] if value else [])], capsys, env, [out])


@pytest.mark.parametrize("encoder", ["model.pt", "model.safetensors", "text.png"])
def test_train_init_encoder_that_is_no_encoder(env, capsys, encoder, tmp_path, small_dataset):
    ds = small_dataset
    out = tmp_path / "t.safetensors"
    _refused(["train", ds, "-o", out, "--init-encoder", env["dir"] / encoder], capsys, env, [out])


DATASET_JSON = [[], None, "x", {"version": [1]}, {"task": ["x"]}, {"ignore_index": None},
                {"tiles": "abc"}, {"tiles": [5]}, {"classes": [1]},
                {"tiles": [{"id": "t", "image": None, "mask": "masks/t.png"}]},
                {"tiles": [{"id": "t", "image": "/etc/hostname", "mask": "masks/t.png"}]},
                {"tiles": [{"id": "t", "image": "../../../etc/hostname", "mask": "masks/t.png"}]}]


@pytest.mark.parametrize("k", range(len(DATASET_JSON)))
def test_train_on_a_dataset_json_of_the_wrong_types_or_paths(env, capsys, k, tmp_path):
    bad = DATASET_JSON[k]
    meta = ({"format": "histoseg-dataset", "version": 1, "tiles": [
        {"id": "t", "image": "images/t.png", "mask": "masks/t.png"}], **bad} if isinstance(bad, dict) else bad)
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "dataset.json").write_text(json.dumps(meta))
    out = tmp_path / "t.safetensors"
    _refused(["train", tmp_path / "ds", "-o", out, "--epochs", "1"], capsys, env, [out])


NUMERIC = {   # command prefix -> its numeric options
    "segment": ("--tile", "--overlap", "--batch-size", "--threshold", "--level"),
    "quantify": ("--mpp", "--level"),
    "geojson": ("--scale", "--tolerance", "--mpp", "--min-region-um2", "--min-region-px", "--label"),
    "export": ("--tile", "--level", "--mpp", "--min-tissue"),
    "segment-slides": ("--model-mpp", "--slide-mpp", "--workers", "--threads", "--block", "--tile",
                       "--overlap", "--threshold", "--level"),
    "review-queue": ("--size", "--top", "--seed"),
}
BAD_NUMBERS = ["nan", "inf", "-inf", "-1", "-1e308", "1e308", "abc", "", "0x10", "1,5", "9" * 400]


def _random_cases(n=40, seed=0):
    rng = np.random.default_rng(seed)
    cmds = sorted(NUMERIC)
    out = []
    for _ in range(n):
        cmd = cmds[rng.integers(len(cmds))]
        opt = NUMERIC[cmd][rng.integers(len(NUMERIC[cmd]))]
        out.append((cmd, opt, BAD_NUMBERS[rng.integers(len(BAD_NUMBERS))]))
    return out


@pytest.mark.parametrize("cmd, opt, value", _random_cases())
def test_random_bad_numbers(env, capsys, cmd, opt, value):
    out = env["dir"] / "out" / "r"
    base = {"segment": _segment(env, out="r.png"), "quantify": ["quantify", env["mask"]],
            "geojson": ["geojson", env["mask"], "-o", out.with_suffix(".geojson")],
            "export": ["export", env["image"], env["mask"], "-o", out],
            "segment-slides": ["segment-slides", env["dir"] / "huge.tif", "-o", out],
            "review-queue": ["review-queue", out.with_suffix(".ome.zarr")]}[cmd]
    if value in ("-1", "1e308") and opt in ("--threads", "--workers", "--seed", "--top", "--min-region-px",
                                            "--level", "--label", "--size"):
        value = "-1"   # huge integers are refused for these by range only where they are negative
    rc, err = _run([*base, f"{opt}={value}"], capsys)
    assert rc == 2 and "Traceback" not in err, f"{cmd} {opt}={value}: exit {rc}; {err[-400:]}"
    assert not list(out.parent.glob("r*")), f"{cmd} {opt}={value}: output left behind"


def test_the_installed_command_says_one_line_and_exits_2(env, tmp_path):
    r = subprocess.run([sys.executable, "-m", "napari_histoseg.cli", "quantify", str(env["dir"] / "mask3d.tif")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2
    assert r.stderr.startswith("histoseg: ") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def _other(env, name):
    d, out, image, model = env["dir"], env["dir"] / "out", env["image"], env["model"]
    return {
        "refine huge seeds": ["refine", image, "--seeds", d / "hugemask.tif", "-o", out / "r.png"],
        "refine text seeds": ["refine", image, "--seeds", d / "text.png", "-o", out / "r.png"],
        "explain huge image": ["explain", d / "huge.tif", "--method", "entropy", "-o", out / "e.tif",
                               "--model", model],
        "explain output under a file": ["explain", image, "--method", "entropy", "-o", d / "text.png" / "e.tif",
                                        "--model", model],
        "classify mpp 100": ["classify", image, "--mpp", "100"],
        "classify output under a file": ["classify", image, "--json", d / "text.png" / "c.json"],
        "nuclei output under a file": ["nuclei", image, "-o", d / "text.png" / "x.tif"],
    }[name]


@pytest.mark.parametrize("name", ["refine huge seeds", "refine text seeds", "explain huge image",
                                  "explain output under a file", "classify mpp 100",
                                  "classify output under a file", "nuclei output under a file"])
def test_other_commands_refuse_before_working(env, capsys, name):
    """refine, explain, classify and nuclei: huge headers, unreadable files and output paths
    under a file are refused with one message before any model runs."""
    err = _refused(_other(env, name), capsys, env)
    assert err.strip().splitlines()[-1].startswith("histoseg"), err   # the reason, last, in one line
