"""Training: losses, a few steps lower the loss, checkpoints load, resume, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.io import imsave

from napari_histoseg.models import build_model, load_checkpoint
from napari_histoseg.tumour.losses import (
    SegmentationLoss,
    class_weights,
    generalized_dice_loss,
    soft_dice_loss,
    weighted_cross_entropy,
)
from napari_histoseg.tumour.train import to_input, train

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared"


def make_dataset(root: Path, n: int = 6, size: int = 64) -> Path:
    """Tiny dataset: tumour (1) is dark purple, the rest pale pink; 4 train, 2 test."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(0)
    tiles = []
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[8 + i : 40 + i, 10:50] = 1
        img = np.where(mask[..., None] == 1, [90, 40, 120], [230, 200, 220]).astype(float)
        img = np.clip(img + rng.normal(0, 8, img.shape), 0, 255).astype(np.uint8)
        imsave(root / "images" / f"t{i}.png", img, check_contrast=False)
        imsave(root / "masks" / f"t{i}.png", mask, check_contrast=False)
        tiles.append({"id": f"t{i}", "image": f"images/t{i}.png", "mask": f"masks/t{i}.png",
                      "split": "test" if i >= 4 else "train", "source": "synthetic",
                      "x": 0, "y": 0, "width": size, "height": size})
    (root / "dataset.json").write_text(json.dumps({"format": "histoseg-dataset", "version": 1,
                                                   "classes": {"0": "not tumour", "1": "tumour"},
                                                   "ignore_index": 255, "tiles": tiles}))
    return root


def test_losses_by_value():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    target[0, :2] = 1
    perfect = torch.where(target[:, None] == 1, 20.0, -20.0).float()
    assert soft_dice_loss(perfect, target) < 1e-4
    assert generalized_dice_loss(perfect, target) < 1e-4
    assert soft_dice_loss(-perfect, target) > 0.99
    ign = target.clone()
    ign[0, 2:] = 255  # wrong logits only on ignored pixels: no loss from them
    half_wrong = perfect.clone()
    half_wrong[0, 0, 2:] = 20.0
    assert soft_dice_loss(half_wrong, ign) < 1e-4
    assert weighted_cross_entropy(half_wrong, ign, [1.0, 1.0]) < 1e-4
    assert class_weights([0.75, 0.25]) == pytest.approx([0.5, 1.5])
    multi = torch.randn(2, 3, 8, 8, requires_grad=True)
    loss = SegmentationLoss(dice="generalized")(multi, torch.randint(0, 3, (2, 8, 8)))
    loss.backward()
    assert multi.grad is not None


def test_a_few_steps_lower_the_loss():
    torch.manual_seed(0)
    model = build_model("unet-mobilenet_v2", classes=1, dropout=0.0)
    rng = np.random.default_rng(0)
    mask = np.zeros((2, 32, 32), np.uint8)
    mask[:, 8:24, 4:20] = 1
    img = np.where(mask[..., None] == 1, [90, 40, 120], [230, 200, 220]).astype(np.uint8)
    img = np.clip(img + rng.normal(0, 5, img.shape), 0, 255).astype(np.uint8)
    x, y = to_input(img), torch.from_numpy(mask).long()
    crit = SegmentationLoss(weights=[1.0, 1.0])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        loss = crit(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] * 0.9


def test_train_writes_a_loadable_checkpoint_and_resumes(tmp_path):
    data = make_dataset(tmp_path / "d")
    out = tmp_path / "m.safetensors"
    events = []
    s = train(data, out, epochs=2, patch_size=32, batch_size=2, steps_per_epoch=1, val_fraction=0.25,
              seed=1, name="tiny", log=lambda *_: None, progress=events.append, half_weights=True)
    assert s["epochs_run"] == 2 and out.is_file() and out.with_suffix(".json").is_file()
    assert {e["kind"] for e in events} == {"start", "step", "epoch"} and events[0]["kind"] == "start"
    assert events[0]["train_tiles"] == 3 and events[0]["val_tiles"] == 1 and events[0]["steps"] == 1
    assert s["data"][0]["train_tiles"] == 3 and s["data"][0]["val_tiles"] == 1
    module, meta = load_checkpoint(out)  # float16 file, float32 module
    assert meta.name == "tiny" and meta.arch == "unet-mobilenet_v2" and meta.mean == [127.5] * 3
    assert next(module.parameters()).dtype == torch.float32
    assert meta.training["data"][0]["val_ids"] and "settings" in meta.training
    s2 = train(data, out, epochs=3, patch_size=32, batch_size=2, steps_per_epoch=1, val_fraction=0.25,
               seed=1, resume=True, log=lambda *_: None)
    assert [h["epoch"] for h in s2["history"]] == [0, 1, 2]


def test_should_stop_and_frozen_encoder(tmp_path):
    data = make_dataset(tmp_path / "d")
    s = train(data, tmp_path / "v1.safetensors", arch="lightmuseg-v1", epochs=5, patch_size=32,
              batch_size=2, steps_per_epoch=3, optimizer="sgd-adam", sgd_epochs=1, loss="generalized",
              should_stop=lambda: True, log=lambda *_: None)
    assert s["stop_reason"] == "cancelled" and s["epochs_run"] == 1
    assert s["trainable_parameters"] < s["parameters"]


def test_cli_train_and_evaluate(tmp_path, capsys):
    from napari_histoseg.tasks import main

    data = make_dataset(tmp_path / "d")
    out = tmp_path / "c.safetensors"
    assert main(["train", str(data), "-o", str(out), "--epochs", "1", "--patch-size", "32",
                 "--batch-size", "2", "--steps-per-epoch", "1", "--summary", str(tmp_path / "s.json")]) == 0
    assert json.loads((tmp_path / "s.json").read_text())["epochs_run"] == 1
    assert main(["evaluate", str(data), "--model", str(out), "--json", str(tmp_path / "e.json")]) == 0
    printed = capsys.readouterr().out
    assert "boundary F tolerance 5.0 px" in printed
    assert len(json.loads((tmp_path / "e.json").read_text())["per_image"]) == 2


@pytest.mark.skipif(not (SHARED / "weights" / "mobilenet_v2_imagenet.safetensors").is_file(),
                    reason="../shared/weights absent")
def test_imagenet_encoder_loads_into_both_mobilenet_models():
    from safetensors.torch import load_file

    state = load_file(str(SHARED / "weights" / "mobilenet_v2_imagenet.safetensors"))
    for arch in ("unet-mobilenet_v2", "lightmuseg-v2"):
        build_model(arch).encoder.load_state_dict(state)


def _bn_stats(module):
    return {k: v.clone() for k, v in module.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def test_fine_tune_freezes_batchnorm_statistics_by_default(tmp_path):
    from napari_histoseg.cli import build_parser
    from napari_histoseg.models import ModelMeta, save_checkpoint

    data = make_dataset(tmp_path / "d")
    torch.manual_seed(0)
    start = save_checkpoint(build_model("unet-mobilenet_v2", classes=1), tmp_path / "start.safetensors",
                            ModelMeta(arch="unet-mobilenet_v2", arch_kwargs={"classes": 1}))
    before = _bn_stats(load_checkpoint(start)[0])
    assert before
    kw = dict(epochs=1, patch_size=32, batch_size=2, steps_per_epoch=1, val_fraction=0.25, lr=1e-2,
              log=lambda *_: None)
    train(data, tmp_path / "frozen.safetensors", init_checkpoint=start, **kw)  # default: frozen
    train(data, tmp_path / "free.safetensors", init_checkpoint=start, freeze_bn=False, **kw)
    frozen, meta = load_checkpoint(tmp_path / "frozen.safetensors")
    after = _bn_stats(frozen)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert meta.training["settings"]["freeze_bn"] is True
    free, meta_free = load_checkpoint(tmp_path / "free.safetensors")
    assert any(not torch.allclose(before[k], v) for k, v in _bn_stats(free).items())
    assert meta_free.training["settings"]["freeze_bn"] is False
    # weights other than the BN statistics did train in the frozen run
    start_sd, frozen_sd = load_checkpoint(start)[0].state_dict(), frozen.state_dict()
    assert any(not torch.equal(start_sd[k], frozen_sd[k]) for k in start_sd if k not in before)
    parse = build_parser().parse_args
    assert parse(["train", "d", "-o", "x"]).freeze_bn is None
    assert parse(["train", "d", "-o", "x", "--no-freeze-bn"]).freeze_bn is False


# --- export -> train, for any image size -------------------------------------------------

BUNDLED_SEG = Path(__file__).resolve().parents[1] / "napari_histoseg" / "weights" / "default.safetensors"
needs_bundled = pytest.mark.skipif(not BUNDLED_SEG.is_file(), reason="the bundled model is not in this checkout")
QUICK = ["--epochs", "1", "--patch-size", "32", "--batch-size", "2", "--steps-per-epoch", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def exported_sample(tmp_path_factory):
    """The bundled 1000 x 1000 sample exported at tile 512: tiles of 512 and 488 px."""
    from napari_histoseg.plugin.samples import breast_carcinoma
    from napari_histoseg.tumour.export import export_tiles

    image = np.asarray(breast_carcinoma()[0][0])
    mask = (image.mean(-1) < 170).astype(np.uint8)  # dark (nuclei-dense) tissue as "tumour"
    mask[:40] = 255
    out = tmp_path_factory.mktemp("export") / "ds"
    recs = export_tiles(image, mask, out, tile=512)
    assert sorted((r["width"], r["height"]) for r in recs) == [(488, 488), (488, 512), (512, 488), (512, 512)]
    return out


def test_histoseg_train_on_an_export_of_the_bundled_sample_with_edge_tiles(exported_sample, tmp_path, capsys):
    from napari_histoseg.cli import main

    out = tmp_path / "m.safetensors"
    assert main(["train", str(exported_sample), "-o", str(out), *QUICK, "--summary", str(tmp_path / "s.json")]) == 0
    printed = capsys.readouterr().out
    assert "2 tiles to train on, 2 held out for validation" in printed
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["data"][0]["val_tiles"] == 2 and 0.0 <= summary["best_val_dice"] <= 1.0
    assert load_checkpoint(out)[1].training["data"][0]["train_tiles"] == 2


@needs_bundled
def test_histoseg_train_init_checkpoint_bundled_fine_tunes_the_bundled_model(exported_sample, tmp_path, capsys):
    from napari_histoseg.cli import main

    out = tmp_path / "ft.safetensors"
    assert main(["train", str(exported_sample), "-o", str(out), *QUICK, "--init-checkpoint", "bundled"]) == 0
    assert "fine-tuning histoseg-default" in capsys.readouterr().out
    meta = load_checkpoint(out)[1]
    assert meta.arch == "unet-mobilenet_v2"
    assert Path(meta.training["settings"]["init_checkpoint"]).name == "default.safetensors"
    assert meta.training["settings"]["freeze_bn"] is True


def test_a_checkpoint_of_another_task_is_refused_before_training(exported_sample, tmp_path, capsys):
    from napari_histoseg.cli import main

    other = BUNDLED_SEG.with_name("classifier.safetensors")
    if not other.is_file():
        pytest.skip("the bundled classifier is not in this checkout")
    out = tmp_path / "x.safetensors"
    assert main(["train", str(exported_sample), "-o", str(out), *QUICK, "--init-checkpoint", str(other)]) == 2
    err = capsys.readouterr().err
    assert "classification model" in err and "fine-tunes segmentation models" in err
    assert not out.exists()


@needs_bundled
def test_one_exported_tile_fine_tunes_and_says_it_validates_on_that_tile(tmp_path):
    """One tile smaller than the patch: trained on, validated on itself, and told so."""
    from napari_histoseg.backends.local import LocalBackend
    from napari_histoseg.tumour.export import export_tiles

    rng = np.random.default_rng(0)
    mask = np.zeros((24, 40), np.uint8)
    mask[:, :15] = 1
    image = np.where(mask[..., None] == 1, [90, 40, 120], [230, 200, 220]).astype(float)
    image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
    export_tiles(image, mask, tmp_path / "one", tile=512)
    events = []
    summary = LocalBackend().fine_tune(tmp_path / "one", tmp_path / "ft.safetensors", epochs=1, patch_size=32,
                                       batch_size=2, steps_per_epoch=2, threads=1, progress=events.append)
    assert events[0]["kind"] == "start" and events[0]["validate_on_train"]
    assert "1 tile to train on and none held out" in events[0]["message"]
    assert "validation uses the same 1 tile" in summary["plan"] and summary["validate_on_train"]
    assert [e["kind"] for e in events[1:]] == ["step", "step", "epoch"]
    assert 0.0 <= events[-1]["val_dice"] <= 1.0 and (tmp_path / "ft.safetensors").is_file()


def _folder(root: Path, masks, splits=None) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    tiles = []
    for i, m in enumerate(masks):
        imsave(root / "images" / f"t{i}.png", np.full((*m.shape, 3), 200, np.uint8), check_contrast=False)
        imsave(root / "masks" / f"t{i}.png", m, check_contrast=False)
        tiles.append({"id": f"t{i}", "image": f"images/t{i}.png", "mask": f"masks/t{i}.png",
                      **({"split": splits[i]} if splits else {})})
    (root / "dataset.json").write_text(json.dumps({"format": "histoseg-dataset", "version": 1, "tiles": tiles}))
    return root


def test_data_that_cannot_train_is_refused_before_training_with_the_reason(tmp_path, capsys):
    from napari_histoseg.backends.local import LocalBackend
    from napari_histoseg.cli import main

    ignored = _folder(tmp_path / "ignored", [np.full((30, 30), 255, np.uint8)] * 2)
    tested = _folder(tmp_path / "tested", [np.ones((30, 30), np.uint8)], splits=["test"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "dataset.json").write_text(json.dumps({"format": "histoseg-dataset", "version": 1, "tiles": []}))
    for folder, reason in [(ignored, "hold no labelled pixel"), (tested, "its only tile is not a training tile"),
                           (empty, "no tiles listed")]:
        out = tmp_path / f"{folder.name}.safetensors"
        assert main(["train", str(folder), "-o", str(out), *QUICK]) == 2
        err = capsys.readouterr().err
        assert reason in err and not out.exists()
        with pytest.raises(ValueError, match=reason):
            LocalBackend().fine_tune(folder, out, epochs=1, patch_size=32, steps_per_epoch=1)
        assert not out.exists()
    assert "needs at least 1 training tile" in str(pytest.raises(ValueError, LocalBackend().fine_tune,
                                                                  ignored, tmp_path / "y.safetensors").value)


@pytest.mark.parametrize("task, flags, refused", [
    ("instances", ["--val-fraction", "0.2", "--loss", "soft"], "--loss, --val-fraction"),
    ("classification", ["--loss", "generalized"], "--loss"),
    ("segmentation", ["--cls-ema", "0.99", "--nuclei-mpp", "0.5"], "--cls-ema, --nuclei-mpp"),
])
def test_a_flag_the_task_does_not_use_is_refused_by_name(tmp_path, capsys, task, flags, refused):
    from napari_histoseg.cli import main

    out = tmp_path / "x.safetensors"
    assert main(["train", str(tmp_path), "-o", str(out), "--task", task, *flags]) == 2
    assert f"--task {task} does not use {refused}" in capsys.readouterr().err and not out.exists()


def test_every_task_declares_the_loop_settings_it_now_honours():
    from napari_histoseg.tasks import TRAINING, train_config

    for task in TRAINING:
        names = train_config(task).field_names()
        assert {"freeze_bn", "resume", "patience", "name", "optimizer", "arch", "init_checkpoint"} <= names, task
    assert "val_fraction" in train_config("classification").field_names()


# -- scale, heavy augmentation, negatives, consistency, calibration --------------------------

def _with_mpp(root: Path, mpp: float) -> Path:
    meta = json.loads((root / "dataset.json").read_text())
    for t in meta["tiles"]:
        t["mpp"] = mpp
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def test_tiles_are_trained_at_the_models_scale_and_the_checkpoint_says_which(tmp_path):
    """Tiles recorded at 0.25 µm/px train a 0.5 µm/px model at half their size; the checkpoint
    carries mpp 0.5, a calibration temperature with ECE before and after, and the unlabelled
    folder used by the consistency term."""
    data = _with_mpp(make_dataset(tmp_path / "d", size=128), 0.25)
    out = tmp_path / "m.safetensors"
    logs = []
    s = train(data, out, epochs=1, patch_size=32, batch_size=2, steps_per_epoch=2, val_fraction=0.25,
              mpp=0.5, consistency=1.0, unlabelled=[str(data)], unlabelled_batch=1, background=0.5,
              log=logs.append)
    module, meta = load_checkpoint(out)
    assert meta.mpp == 0.5
    assert s["data"][0]["mpp"] == 0.25 and s["data"][0]["resampled_to"] == 0.5
    cal = meta.training["calibration"]
    assert meta.preprocessing["temperature"] == cal["temperature"] > 0
    assert cal["ece_after"] <= cal["ece_before"] + 1e-6
    assert meta.training["unlabelled"][0]["images"] == 6
    assert meta.training["settings"]["augmentation"]["stain_vector_sigma"] > 0   # heavy by default
    assert any("unlabelled" in line for line in logs)


def test_tiles_of_unknown_scale_are_used_as_they_are_and_the_log_says_so(tmp_path):
    from napari_histoseg.training.plan import training_plan
    from napari_histoseg.tumour.config import TumourConfig
    from napari_histoseg.tumour.data import load_plan

    data = make_dataset(tmp_path / "d", size=64)
    plan = training_plan([data], 0.25, 0)
    logs = []
    imgs, masks, *_ = load_plan(plan, TumourConfig(), logs.append)
    assert imgs[0].shape[:2] == (64, 64) and any("no mpp recorded" in line for line in logs)
    imgs, masks, *_ = load_plan(plan, TumourConfig(data_mpp={"d": 1.0}), logs.append)
    assert imgs[0].shape[:2] == (128, 128) and set(np.unique(masks[0])) <= {0, 1}


def test_heavy_augmentation_keeps_the_mask_and_changes_the_stain():
    from napari_histoseg.training.augment import AugmentConfig, background_patch, random_patch

    rng = np.random.default_rng(0)
    img = np.zeros((96, 96, 3), np.uint8)
    img[:] = (200, 120, 180)
    img[20:60, 20:60] = (80, 40, 130)
    mask = np.zeros((96, 96), np.uint8)
    mask[20:60, 20:60] = 1
    mask[:4] = 255
    colours = []
    for _ in range(12):
        x, y = random_patch(img, mask, 64, rng, AugmentConfig.heavy())
        assert x.shape == (64, 64, 3) and x.dtype == np.uint8 and set(np.unique(y)) <= {0, 1, 255}
        colours.append(x.reshape(-1, 3).mean(0))
    assert np.std(colours, axis=0).max() > 5            # the stain really varies between draws
    glass = background_patch(64, rng)
    assert glass.shape == (64, 64, 3) and glass.mean() > 150   # glass or fat: pale, never dark tissue


def test_perturb_stains_is_the_identity_at_zero_and_keeps_white():
    from napari_histoseg.colour.stain import perturb_stains

    rng = np.random.default_rng(0)
    img = np.full((8, 8, 3), (190, 100, 170), np.uint8)
    img[0, 0] = 255
    assert np.array_equal(perturb_stains(img, rng, 0, 0, 0), img)
    out = perturb_stains(img, rng, 0.3, 0.1, 0.15)
    assert tuple(out[0, 0]) == (255, 255, 255) and not np.array_equal(out[1:, 1:], img[1:, 1:])


def test_temperature_scaling_cures_overconfidence():
    from napari_histoseg.tumour.metrics import expected_calibration_error, fit_temperature

    rng = np.random.default_rng(0)
    truth = rng.random(20000) < 0.5
    z = np.where(truth, 1.0, -1.0) + rng.normal(0, 1.0, truth.size)   # the true log-odds are 2 z ...
    cal = fit_temperature(4 * z, truth)                                  # ... so 4 z is 2x overconfident
    assert 1.7 < cal["temperature"] < 2.3 and cal["ece_after"] < cal["ece_before"] / 3
    assert expected_calibration_error([0.0, 1.0], [0, 1]) == 0.0
