"""histoseg refine on the command line, and the simulated annotator (clicks and strokes)."""

from __future__ import annotations

import numpy as np
import pytest
from refine_cases import click, disk_image
from skimage.io import imread, imsave

from napari_histoseg.refinement import refine
from napari_histoseg.refinement.robot import next_click, noc, simulate_clicks


def test_cli_writes_a_01_png(tmp_path, capsys):
    import tifffile

    from napari_histoseg.cli import main

    img, inside = disk_image(256, 80)
    imsave(tmp_path / "img.png", img, check_contrast=False)
    imsave(tmp_path / "seeds.png", click(inside.shape, 128, 128, 1) + click(inside.shape, 10, 10, 2),
           check_contrast=False)
    tifffile.imwrite(tmp_path / "prob.tif", np.full(inside.shape, 0.3, np.float32))
    out = tmp_path / "out" / "mask.png"
    rc = main(["refine", str(tmp_path / "img.png"), "--seeds", str(tmp_path / "seeds.png"),
               "--prior", str(tmp_path / "prob.tif"), "-o", str(out)])
    assert rc == 0
    m = imread(out)
    assert m.dtype == np.uint8 and m.shape == inside.shape and set(np.unique(m)) <= {0, 1}
    assert m[inside].mean() > 0.95 and m[~inside].mean() < 0.05
    assert "% tumour" in capsys.readouterr().out
    imsave(tmp_path / "bad.png", np.full((256, 256), 7, np.uint8), check_contrast=False)
    rc = main(["refine", str(tmp_path / "img.png"), "--seeds", str(tmp_path / "bad.png"), "-o", str(out)])
    assert rc == 2 and "only 0" in capsys.readouterr().err


@pytest.mark.parametrize("option, value, says", [("--alpha", "1.5", "< 1"), ("--prior-weight", "nan", "finite"),
                                                 ("--sigma-color", "0", "> 0")])
def test_cli_refuses_a_bad_number_naming_the_option(tmp_path, capsys, option, value, says):
    from napari_histoseg.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["refine", str(tmp_path / "img.png"), "--seeds", str(tmp_path / "s.png"), "-o",
              str(tmp_path / "o.png"), option, value])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and option in err and says in err


def test_robot_clicks_into_the_largest_error_and_counts_clicks():
    truth = np.zeros((100, 100), np.uint8)
    truth[10:60, 10:60] = 1  # 50 x 50 missed
    pred = np.zeros_like(truth)
    pred[80:90, 80:90] = 1  # 10 x 10 false
    assert next_click(pred, truth) == (34, 34, 1) or next_click(pred, truth)[2] == 1
    assert next_click(truth, truth) is None
    img, inside = disk_image(256, 80)
    dices = simulate_clicks(img, inside.astype(np.uint8), refine, max_clicks=3)
    assert len(dices) == 4 and dices[0] == 0.0 and dices[1] > 0.9
    assert noc(dices) == 1 and noc([0.1, 0.2]) == 1


def test_robot_strokes_along_the_largest_error_inside_it():
    from napari_histoseg.refinement.robot import next_stroke, simulate_strokes, worst_drop

    truth = np.zeros((100, 100), np.uint8)
    truth[10:60, 10:90] = 1
    stroke, label = next_stroke(np.zeros_like(truth), truth)
    assert label == 1 and stroke.any() and np.all(truth[stroke] == 1)
    assert stroke[35].sum() >= 30  # along the long axis of the 50 x 80 block
    img, inside = disk_image(256, 80)
    dices = simulate_strokes(img, inside.astype(np.uint8), refine, max_strokes=3)
    assert len(dices) == 4 and dices[1] > 0.9 and worst_drop(dices) < 0.02

