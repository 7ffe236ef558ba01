"""The histoseg command line, run as a user would run it."""

import subprocess
import sys

import numpy as np
import pytest
import tifffile
from skimage.io import imread, imsave

from napari_histoseg.cli import main
from napari_histoseg.plugin.samples import sample_path


def test_segment_writes_mask_and_probability(tmp_path, random_checkpoint, capsys):
    image = tmp_path / "crop.png"
    imsave(image, imread(sample_path("breast_carcinoma"))[:300, :400])
    mask, prob = tmp_path / "out" / "mask.png", tmp_path / "prob.tif"
    rc = main(["segment", str(image), "-o", str(mask), "--prob", str(prob), "--model",
               str(random_checkpoint), "--device", "cpu", "--tile", "128", "--overlap", "32"])
    assert rc == 0
    m, p = imread(mask), tifffile.imread(prob)
    assert m.shape == p.shape == (300, 400) and m.dtype == np.uint8 and p.dtype == np.float32
    assert np.array_equal(m, (p >= 0.5).astype(np.uint8))
    assert "% tumour" in capsys.readouterr().out


def test_segment_reads_a_slide_region_of_the_svs(tmp_path, random_checkpoint):
    mask = tmp_path / "svs.tif"
    rc = main(["segment", str(sample_path("skin_slide")), "-o", str(mask), "--model",
               str(random_checkpoint), "--tile", "512", "--overlap", "0", "--batch-size", "8"])
    assert rc == 0 and tifffile.imread(mask).shape == (2967, 2220)


@pytest.mark.parametrize("content,suffix,message", [
    (b"not an image", ".tif", "crop"),
    (None, ".png", "No such image file"),
])
def test_bad_input_gives_a_message_not_a_traceback(tmp_path, random_checkpoint, content, suffix, message):
    path = tmp_path / f"crop{suffix}"
    if content is not None:
        path.write_bytes(content)
    out = subprocess.run(
        [sys.executable, "-m", "napari_histoseg.cli", "segment", str(path), "-o", str(tmp_path / "m.png"),
         "--model", str(random_checkpoint)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "Traceback" not in out.stderr and out.stderr.startswith("histoseg: ")
    import re

    assert re.search(message, out.stderr)


def test_grayscale_image_and_pickle_model_are_refused(tmp_path, random_checkpoint, capsys):
    gray = tmp_path / "gray.png"
    imsave(gray, np.zeros((64, 64), np.uint8), check_contrast=False)
    assert main(["segment", str(gray), "-o", str(tmp_path / "m.png"), "--model", str(random_checkpoint)]) == 2
    assert "grayscale" in capsys.readouterr().err
    pth = tmp_path / "model.pth"
    pth.write_bytes(b"\x80\x04")
    assert main(["segment", str(gray), "-o", str(tmp_path / "m.png"), "--model", str(pth)]) == 2
    assert "pickled" in capsys.readouterr().err


@pytest.mark.parametrize("task, batch, lr", [("segmentation", 8, 1e-3), ("instances", 2, 2e-4),
                                             ("classification", 16, 3e-4)])
def test_train_flags_left_out_take_the_tasks_own_defaults(task, batch, lr, monkeypatch, tmp_path):
    """`histoseg train --task instances` without --batch-size must not train Mask R-CNN at
    the segmentation model's batch 8 and learning rate 1e-3; a flag given always wins."""
    import importlib

    from napari_histoseg.tasks import TRAINING

    seen = []
    module = importlib.import_module(TRAINING[task][1])
    monkeypatch.setattr(module, "train", lambda data, out, cfg, **kw: seen.append(cfg) or {})
    (tmp_path / "data").mkdir()
    base = ["train", str(tmp_path / "data"), "-o", str(tmp_path / "m.safetensors"), "--task", task]
    assert main(base) == 0 and main([*base, "--batch-size", "3"]) == 0
    assert (seen[0].batch_size, seen[0].lr) == (batch, lr)
    assert (seen[1].batch_size, seen[1].lr) == (3, lr)


@pytest.mark.parametrize("task, flag", [("instances", ["--loss", "generalized"]),
                                        ("classification", ["--nuclei-val-every", "2"]),
                                        ("segmentation", ["--cls-dropout", "0.1"])])
def test_a_flag_the_task_does_not_use_is_refused_by_name(task, flag, tmp_path, capsys):
    rc = main(["train", str(tmp_path), "-o", str(tmp_path / "m.safetensors"), "--task", task, *flag])
    assert rc == 2 and f"--task {task} does not use {flag[0]}" in capsys.readouterr().err
    assert not (tmp_path / "m.safetensors").exists()


def test_nuclei_writes_qupath_geojson_detections_with_their_measurements(tmp_path):
    import json

    import pandas as pd

    from napari_histoseg.testing import disks_image

    img, _ = disks_image((160, 160), [(40, 40), (40, 120), (120, 80)], 14)
    imsave(tmp_path / "he.png", img, check_contrast=False)
    out = tmp_path / "qupath" / "nuclei.geojson"
    assert main(["nuclei", str(tmp_path / "he.png"), "-o", str(tmp_path / "n.tif"), "--classical", "--mpp", "0.25",
                 "--csv", str(tmp_path / "n.csv"), "--geojson", str(out)]) == 0
    fc = json.loads(out.read_text())
    table = pd.read_csv(tmp_path / "n.csv")
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == len(table) == 3
    for f in fc["features"]:
        props = f["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"] == "Nucleus"
        assert f["geometry"]["type"] == "Polygon" and props["metadata"]["source"] == "he.png"
    areas = sorted(f["properties"]["measurements"]["Nucleus: Area µm^2"] for f in fc["features"])
    assert areas == pytest.approx(sorted(table["area_um2"]), rel=0.02)


def test_train_sets_the_nuclei_warm_up_and_refuses_a_negative_one(monkeypatch, tmp_path, capsys):
    import importlib

    from napari_histoseg.tasks import TRAINING

    seen = []
    module = importlib.import_module(TRAINING["instances"][1])
    monkeypatch.setattr(module, "train", lambda data, out, cfg, **kw: seen.append(cfg) or {})
    (tmp_path / "data").mkdir()
    base = ["train", str(tmp_path / "data"), "-o", str(tmp_path / "m.safetensors"), "--task", "instances"]
    assert main(base) == 0 and main([*base, "--nuclei-warmup", "30"]) == 0
    assert [cfg.warmup for cfg in seen] == [100, 30]
    with pytest.raises(SystemExit):
        main([*base, "--nuclei-warmup", "-5"])
    assert "--nuclei-warmup" in capsys.readouterr().err and len(seen) == 2
    rc = main(["train", str(tmp_path), "-o", str(tmp_path / "m.safetensors"), "--task", "segmentation",
               "--nuclei-warmup", "30"])
    assert rc == 2 and "--task segmentation does not use --nuclei-warmup" in capsys.readouterr().err
