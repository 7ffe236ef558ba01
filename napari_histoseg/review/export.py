"""Reviewed fields to a training-data folder, and the review to a QuPath GeoJSON.

:func:`export_reviewed` sends each accepted or corrected field through
:func:`napari_histoseg.tumour.export.export_tiles` (the Export widget's format: images,
masks, edits = where the reviewer's mask differs from the model's) and records each
tile's review status, reviewer and time in ``DATASET/review.json`` (tile id -> record).

:func:`review_geojson` gives one rectangle annotation per field, classified
``Review: <status>``, with the status, reviewer and time in its properties, plus the
tumour regions of every reviewed field (its edit map where corrected), each carrying
``reviewStatus`` too.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np

from napari_histoseg.review.fields import ReviewSource
from napari_histoseg.review.state import REVIEWED, ReviewState, _atomic_write
from napari_histoseg.tumour.export import export_tiles
from napari_histoseg.core.geojson import mask_to_geojson

__all__ = ["export_reviewed", "review_geojson", "field_mask", "STATUS_COLOURS"]

STATUS_COLOURS = {"unreviewed": (150, 150, 150), "accepted": (40, 200, 60), "corrected": (40, 150, 255),
                  "flagged": (255, 30, 160), "skipped": (255, 255, 255)}


def field_mask(state: ReviewState, source: ReviewSource, f) -> np.ndarray:
    """The mask of a field as the review left it: its edit map, else the source's mask."""
    edit = state.edit_of(f)
    return source.mask_of(f) if edit is None else edit


def export_reviewed(state: ReviewState, source: ReviewSource, image, out_dir, *,
                    statuses=("accepted", "corrected"), **export_kwargs) -> list[dict]:
    """Add the reviewed fields to a training-data folder.

    ``image`` is the RGB at map resolution: an (H, W, 3) array-like of the map's shape,
    or a callable ``image(field) -> (h, w, 3) uint8``. ``export_kwargs`` go to
    ``export_tiles`` (``source``, ``mpp``, ``model``, ``split`` ...); the annotator is the
    one who set each field's status. Returns the tile records (with ``review_status``).
    """
    bad = set(statuses) - set(REVIEWED)
    if bad:
        raise ValueError(f"only reviewed fields can be exported, not {sorted(bad)}")
    if not callable(image) and tuple(np.shape(image)[:2]) != tuple(source.shape):
        raise ValueError(f"the image is {np.shape(image)[:2]} px but the map is {source.shape}: "
                         "give the image at the map's resolution, or a function of the field")
    out = Path(out_dir)
    written = []
    for f in state.fields:
        rec = state.record(f)
        if rec["status"] not in statuses:
            continue
        rgb = image(f) if callable(image) else np.asarray(image[f.slices])
        mask = field_mask(state, source, f)
        edits = mask != source.mask_of(f)
        for r in export_tiles(rgb, mask, out, tile=max(f.h, f.w), edits=edits, x0=f.x, y0=f.y,
                              annotator=rec["who"] or state.reviewer, **export_kwargs):
            written.append({**r, "review_status": rec["status"], "review_field": f.index})
    if written:
        side = out / "review.json"
        old = json.loads(side.read_text()) if side.is_file() else {}
        for r in written:
            rec = state.record(r["review_field"])
            old[r["id"]] = {"status": rec["status"], "reviewer": rec["who"], "when": rec["when"],
                            "field": r["review_field"], "review_file": str(state.path)}
        _atomic_write(side, json.dumps(old, indent=1).encode())
    return written


def review_geojson(state: ReviewState, source: ReviewSource, *, offset=(0, 0), scale: float = 1.0,
                   tumour: bool = True) -> dict:
    """A QuPath FeatureCollection of the review: every field as a rectangle annotation
    (class ``Review: <status>``), and the tumour regions of the reviewed fields.

    ``offset`` (x, y) and ``scale`` (slide px per map px) place map pixels on the slide.
    """
    feats = []
    for f in state.fields:
        rec = state.record(f)
        st = rec["status"]
        x0, y0 = offset[0] + f.x * scale, offset[1] + f.y * scale
        x1, y1 = x0 + f.w * scale, y0 + f.h * scale
        ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        props = {"objectType": "annotation", "name": f"field {f.index} ({st})",
                 "classification": {"name": f"Review: {st}", "color": list(STATUS_COLOURS[st])},
                 "reviewStatus": st, "reviewer": rec["who"], "reviewed": rec["when"], "field": f.index,
                 "measurements": {"entropy": round(f.entropy, 4), "score": round(f.score, 2)}}
        feats.append({"type": "Feature", "id": str(uuid.uuid4()),
                      "geometry": {"type": "Polygon", "coordinates": [[[round(v, 2) for v in p] for p in ring]]},
                      "properties": props})
        if tumour and st in REVIEWED:
            m = field_mask(state, source, f)
            fc = mask_to_geojson(m, offset=(x0, y0), scale=scale, min_region_px=0)
            for t in fc["features"]:
                t["properties"].update(reviewStatus=st, field=f.index, reviewer=rec["who"])
                feats.append(t)
    return {"type": "FeatureCollection", "features": feats}
