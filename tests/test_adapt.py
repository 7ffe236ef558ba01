"""Slide adaptation: learns from corrected fields into a versioned checkpoint that loads like any
model and says where it came from; cancel writes nothing; reviewed pixels are never re-segmented."""

import json

import numpy as np
import pytest

from napari_histoseg import testing
from napari_histoseg.models import read_meta
from napari_histoseg.tumour.adapt import adapt, adapted_path, keep_reviewed, root_start
from napari_histoseg.tumour.adapt_data import Correction, corrections_from_dataset, corrections_from_mask

pytestmark = pytest.mark.filterwarnings("ignore")


def _fields(n=3, size=64):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        mask = np.zeros((size, size), np.uint8)
        mask[:, : size // 2] = 1
        edits = np.zeros_like(mask, bool)
        edits[:, size // 2 - 4: size // 2] = True
        out.append(Correction(f"slide-y0-x{i * size}", testing.tumour_tile(mask, rng), mask, edits))
    return out


def test_adapted_checkpoint_loads_through_load_model_and_names_its_corrections(tmp_path, random_checkpoint):
    from napari_histoseg.api import load_model

    fields = _fields()
    out, version = adapted_path(tmp_path / "models", read_meta(random_checkpoint))
    s = adapt(str(random_checkpoint), fields, out, steps=5, replay=[], version=version)
    assert s["checkpoint"] == str(out) and s["stop_reason"] == "steps" and s["steps"] == 5
    model = load_model(str(out))
    assert model.meta.model_version == "0+adapt1" and model.meta.name.endswith("-adapted")
    rec = model.meta.training["adaptation"]
    assert [c["id"] for c in rec["corrections"]] == [f.id for f in fields]
    assert [c["edited_pixels"] for c in rec["corrections"]] == [4 * 64] * 3
    assert rec["start"]["path"] == str(random_checkpoint) and len(rec["start"]["sha256"]) == 64
    assert rec["settings"]["train"] == "head" and rec["settings"]["freeze_bn"] is True
    assert json.loads(out.with_suffix(".json").read_text())["training"]["adaptation"]["steps_run"] == 5
    # the next adaptation gets the next version, and knows the original
    assert adapted_path(tmp_path / "models", model.meta)[0].name.endswith("-adapt2.safetensors")
    assert root_start(model.meta, out)[0] == str(random_checkpoint)
    prob = model.predict(fields[0].image[None])
    assert prob.shape[-2:] == (64, 64)


def test_only_the_head_changes_and_batchnorm_statistics_stay(tmp_path, random_checkpoint):
    from napari_histoseg.models import load_checkpoint

    before = load_checkpoint(random_checkpoint)[0].state_dict()
    adapt(str(random_checkpoint), _fields(), tmp_path / "a.safetensors", steps=20, replay=[])
    after = load_checkpoint(tmp_path / "a.safetensors")[0].state_dict()
    changed = {k for k in before if not np.allclose(before[k].numpy(), after[k].numpy())}
    assert changed and all("segmentation_head" in k for k in changed), changed


def test_cancel_writes_nothing_and_keeps_the_last_good_checkpoint(tmp_path, random_checkpoint):
    out = tmp_path / "a.safetensors"
    calls = []
    s = adapt(str(random_checkpoint), _fields(), out, steps=50, replay=[],
              should_stop=lambda: calls.append(1) or len(calls) > 5)
    assert s["stop_reason"] == "cancelled" and s["checkpoint"] is None
    assert s["kept"] == str(random_checkpoint) and not out.exists()
    good = adapt(str(random_checkpoint), _fields(), out, steps=2, replay=[])["checkpoint"]
    stamp = out.stat().st_mtime_ns
    adapt(str(random_checkpoint), _fields(), out, steps=50, replay=[], should_stop=lambda: True)
    assert good == str(out) and out.stat().st_mtime_ns == stamp  # the earlier adaptation stays as it was


def test_replay_draws_from_the_start_models_training_split(tmp_path, random_checkpoint):
    data = testing.tumour_dataset(tmp_path / "train", n=4, splits=["train", "train", "train", "test"])
    s = adapt(str(random_checkpoint), _fields(1), tmp_path / "a.safetensors", steps=2, replay=[data],
              replay_count=8)
    assert s["replay"] == 3  # the test tile is never replayed
    assert all(r.split("/")[-1] in {"t0", "t1", "t2"} for r in s["adaptation"]["replay"])


def test_corrections_come_from_an_export_folder_with_its_edit_maps(tmp_path, he_image):
    from napari_histoseg.tumour.export import export_tiles

    image = np.ascontiguousarray(he_image[:256, :256])
    mask = np.zeros((256, 256), np.uint8)
    mask[20:120, 20:120] = 1
    edits = np.zeros((256, 256), bool)
    edits[20:40, 20:120] = True
    export_tiles(image, mask, tmp_path / "ds", tile=128, edits=edits)
    cs = corrections_from_dataset(tmp_path / "ds")
    assert len(cs) == 4 and sum(c.edited for c in cs) == 20 * 100


def test_fields_with_edits_become_corrections_and_reviewed_pixels_stay():
    image = np.zeros((100, 150, 3), np.uint8)
    mask = np.zeros((100, 150), np.uint8)
    edits = np.zeros((100, 150), bool)
    edits[60, 120] = True
    cs = corrections_from_mask(image, mask, edits, size=64)
    assert [c.id for c in cs] == ["field-y0-x64"] or [c.id for c in cs] == ["field-y64-x64"]
    reviewed = np.zeros((100, 150), bool)
    reviewed[:50] = True
    accepted = np.ones((100, 150), np.uint8)
    merged = keep_reviewed(np.zeros((100, 150), np.uint8), accepted, reviewed)
    assert merged[:50].all() and not merged[50:].any()


def test_bad_input_is_refused_with_a_message(tmp_path, random_checkpoint):
    with pytest.raises(ValueError, match="no corrected fields"):
        adapt(str(random_checkpoint), [], tmp_path / "a.safetensors")
    with pytest.raises(ValueError, match="seconds"):
        adapt(str(random_checkpoint), _fields(1), tmp_path / "a.safetensors", seconds=float("nan"))
    with pytest.raises(ValueError, match="mask"):
        Correction("x", np.zeros((8, 8, 3), np.uint8), np.full((8, 8), 7, np.uint8))


def test_histoseg_adapt_from_an_export_folder(tmp_path, random_checkpoint, he_image, capsys):
    from napari_histoseg.cli import main
    from napari_histoseg.tumour.export import export_tiles

    mask = np.zeros((128, 128), np.uint8)
    mask[10:60, 10:60] = 1
    export_tiles(np.ascontiguousarray(he_image[:128, :128]), mask, tmp_path / "ds", tile=64,
                 edits=mask.astype(bool))
    assert main(["adapt", str(tmp_path / "ds"), "--model", str(random_checkpoint), "--steps", "3",
                 "--no-replay"]) == 0
    out = tmp_path / "ds" / "models" / "random unet-mobilenet_v2-adapt1.safetensors"
    assert out.is_file(), capsys.readouterr().out
    assert len(read_meta(out).training["adaptation"]["corrections"]) == 4
