"""Slide review without napari: fields, ranking, the saved state, export, GeoJSON, CLI."""

import json

import numpy as np
import pytest

from napari_histoseg.review import ReviewSource, make_fields, open_review, rank_fields, reviewers
from napari_histoseg.review.export import export_reviewed, review_geojson
from napari_histoseg.review.state import ReviewState


def slide(h=300, w=400):
    """Sure tumour top-left, an unsure band in field (1, 2), glass in the bottom row."""
    p = np.zeros((h, w), np.float32)
    p[20:90, 20:180] = 0.97
    p[100:200, 200:300] = 0.5
    tissue = np.ones((h // 10, w // 10), np.uint8)
    tissue[20:, :] = 0
    return p, (p >= 0.5).astype(np.uint8), tissue


@pytest.fixture
def source(tmp_path):
    p, m, t = slide()
    return ReviewSource.from_arrays(p, m, t, review_dir=tmp_path / "rev")


def test_fields_cover_the_tissue_and_skip_glass(source):
    fields = make_fields(source, 100)
    assert len(fields) == 8                       # 3 x 4 grid, the glass row left out
    assert {f.index for f in fields} == set(range(8))
    assert all(f.h == 100 and f.w == 100 for f in fields)


def test_entropy_ranks_the_unsure_field_first_and_raster_keeps_rows(source):
    ranked = rank_fields(make_fields(source, 100), "entropy")
    assert ranked[0].index == 6                   # row 1, column 2: p = 0.5 everywhere
    assert ranked[0].entropy == pytest.approx(1.0, abs=1e-3)
    assert [f.index for f in rank_fields(make_fields(source, 100), "raster")] == list(range(8))
    a = [f.index for f in rank_fields(make_fields(source, 100), "random", seed=1)]
    assert sorted(a) == list(range(8)) and a == [f.index for f in rank_fields(make_fields(source, 100), "random", seed=1)]
    with pytest.raises(ValueError, match="unknown ranking"):
        rank_fields(make_fields(source, 100), "vibes")


def test_disagreement_finds_where_the_mask_overrules_the_model(tmp_path):
    p, m, t = slide()
    m[0:100, 300:400] = 1                          # someone painted tumour the model did not see
    src = ReviewSource.from_arrays(p, m, t, review_dir=tmp_path)
    assert rank_fields(make_fields(src, 100), "disagreement")[0].index == 3


def test_statuses_edits_and_progress_persist_per_reviewer(source):
    st = open_review(source, "A. Path", size=100)
    assert st.progress() == "0 of 8 fields reviewed, 0 % of tumour area"
    first, second = st.fields[0], st.fields[1]
    st.set_status(first, "accepted")
    corrected = np.zeros((second.h, second.w), np.uint8)
    corrected[:10] = 1
    st.save_edit(second, corrected)
    st.set_status(st.fields[2], "skipped")
    again = open_review(source, "A. Path")
    assert again.resumed and again.status(first) == "accepted" and again.status(second) == "corrected"
    assert np.array_equal(again.edit_of(second), corrected)
    assert again.record(first)["who"] == "A. Path" and again.record(first)["when"].endswith("Z")
    assert again.progress().startswith("2 of 8 fields reviewed") and "1 skipped" in again.progress()
    other = open_review(source, "B. Second")          # a second reviewer starts fresh, first is kept
    assert other.status(first) == "unreviewed"
    assert reviewers(source.review_dir) == ["A._Path", "B._Second"]
    assert open_review(source, "A. Path").status(first) == "accepted"


def test_a_saved_review_is_not_replaced_by_other_settings(source):
    open_review(source, "A", size=100).set_status(0, "flagged")
    with pytest.raises(ValueError, match="already reviews"):
        open_review(source, "A", size=200)
    assert ReviewState.load(source.review_dir / "A.json").status(0) == "flagged"


def test_the_saved_file_follows_the_design(source):
    st = open_review(source, "A", size=100)
    d = json.loads((source.review_dir / "A.json").read_text())
    assert d["grid"] == {"origin": [0, 0], "size": 100, "level": 0, "shape": [300, 400]}
    assert set(d["fields"][0]) >= {"index", "y", "x", "h", "w", "status", "who", "when", "edit_map"}
    assert not list(source.review_dir.glob(".*tmp*")) and st.path.is_file()


def test_arrays_review_beside_the_image(tmp_path):
    p, m, _ = slide()
    src = ReviewSource.from_arrays(p, m, image_path=tmp_path / "region.png")
    assert src.review_dir == tmp_path / "region.png.histoseg-review"
    with pytest.raises(ValueError, match="where the review is kept"):
        ReviewSource.from_arrays(p, m)


def test_export_and_geojson_carry_the_status(source, tmp_path):
    st = open_review(source, "A", size=100)
    st.set_status(st.fields[0], "accepted")
    fix = np.zeros((st.fields[1].h, st.fields[1].w), np.uint8)
    st.save_edit(st.fields[1], fix)
    st.set_status(st.fields[2], "flagged")
    img = np.full(source.shape + (3,), 200, np.uint8)
    recs = export_reviewed(st, source, img, tmp_path / "ds")
    assert sorted(r["review_status"] for r in recs) == ["accepted", "corrected"]
    side = json.loads((tmp_path / "ds" / "review.json").read_text())
    assert sorted(v["status"] for v in side.values()) == ["accepted", "corrected"]
    ds = json.loads((tmp_path / "ds" / "dataset.json").read_text())
    assert len(ds["tiles"]) == 2 and all(t["annotator"] == "A" for t in ds["tiles"])
    corrected = next(r for r in recs if r["review_status"] == "corrected")
    assert "edits" in corrected                       # where the reviewer changed the model's mask
    g = review_geojson(st, source, offset=(10, 20), scale=2.0)
    boxes = [f for f in g["features"] if f["properties"].get("name", "").startswith("field")]
    assert len(boxes) == 8
    byfield = {f["properties"]["field"]: f["properties"]["classification"]["name"] for f in boxes}
    assert byfield[st.fields[0].index] == "Review: accepted" and byfield[st.fields[2].index] == "Review: flagged"
    f0 = next(f for f in boxes if f["properties"]["field"] == st.fields[3].index)
    assert f0["properties"]["reviewStatus"] == "unreviewed"
    x0, y0 = f0["geometry"]["coordinates"][0][0]
    assert (x0, y0) == (10 + st.fields[3].x * 2, 20 + st.fields[3].y * 2)
    tumour = [f for f in g["features"] if not f["properties"].get("name", "").startswith("field")]
    assert tumour and all(f["properties"]["reviewStatus"] in ("accepted", "flagged") for f in tumour)


def test_review_queue_command_on_an_ome_zarr(tmp_path, capsys):
    pytest.importorskip("zarr")
    from napari_histoseg.cli import main
    from napari_histoseg.wsi import omezarr

    p, m, t = slide()
    root, _ = omezarr.create_store(tmp_path / "s.ome.zarr", shape=p.shape, chunk=128, mpp=0.5, tissue=t,
                                   tissue_scale=10, settings={"x": 1})
    omezarr.write_block(root, 0, 0, np.rint(p * 255).astype(np.uint8), m)
    assert main(["review-queue", str(tmp_path / "s.ome.zarr"), "--size", "100", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "8 fields of 100 px with tissue, ranked by entropy" in out
    assert out.splitlines()[2].split()[:2] == ["1", "6"]        # rank 1 is field 6, the unsure one
    assert "... 5 more" in out and "0 of 8 fields reviewed" in out
    assert not (tmp_path / "s.ome.zarr" / "histoseg-review").exists()   # a look writes nothing
    assert main(["review-queue", str(tmp_path / "s.ome.zarr"), "--size", "100", "--reviewer", "A", "--save",
                 "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows[0]["index"] == 6 and rows[0]["status"] == "unreviewed"
    assert (tmp_path / "s.ome.zarr" / "histoseg-review" / "A.json").is_file()
