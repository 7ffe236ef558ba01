"""``histoseg review-queue``: the ranked fields of a slide's result (import-light)."""

from __future__ import annotations

import json
import sys

from napari_histoseg.io.checks import int_arg
from napari_histoseg.review.ranking import DEFAULT_RANKING, RANKINGS


def register(sub) -> None:
    p = sub.add_parser(
        "review-queue", help="print the fields of a segment-slides result in review order",
        description="Cut the tissue of RESULT.ome.zarr into fields and print them most uncertain first, with "
                    "each field's status in REVIEWER's saved review (RESULT.ome.zarr/histoseg-review/REVIEWER.json) "
                    "when there is one. Nothing is written unless --save is given.")
    p.add_argument("result", help="RESULT.ome.zarr written by histoseg segment-slides")
    p.add_argument("--size", type=int_arg(64, 16384), default=None, help="field edge in map px (default 512, or the saved review's)")
    p.add_argument("--ranking", default=None, choices=list(RANKINGS),
                   help=f"order (default {DEFAULT_RANKING}, or the saved review's)")
    p.add_argument("--seed", type=int_arg(0, 2 ** 32 - 1), default=0, help="seed of the random order")
    p.add_argument("--reviewer", help="show this reviewer's statuses (default: a new, unsaved queue)")
    p.add_argument("--save", action="store_true", help="start REVIEWER's review with this queue if there is none")
    p.add_argument("--top", type=int_arg(1), default=None, help="print only the first N fields")
    p.add_argument("--json", action="store_true", help="one JSON object per field instead of a table")
    p.add_argument("--geojson", help="also write the review as QuPath GeoJSON (map px coordinates)")
    p.set_defaults(func=cmd_review_queue)


def cmd_review_queue(args) -> int:
    from napari_histoseg.review.fields import ReviewSource, make_fields
    from napari_histoseg.review.ranking import rank_fields
    from napari_histoseg.review.state import ReviewState, open_review, reviewer_file

    src = ReviewSource.from_result(args.result)
    if args.save and not args.reviewer:
        raise ValueError("--save needs --reviewer")
    if args.reviewer and (args.save or reviewer_file(src.review_dir, args.reviewer).is_file()):
        state = open_review(src, args.reviewer, size=args.size, ranking=args.ranking, seed=args.seed)
    else:
        fields = rank_fields(make_fields(src, args.size or 512), args.ranking or DEFAULT_RANKING, seed=args.seed)
        if not fields:
            raise ValueError("no field holds tissue: nothing to review")
        state = ReviewState(reviewer=args.reviewer or "-", review_dir=src.review_dir, fields=fields,
                            size=args.size or 512, shape=src.shape, ranking=args.ranking or DEFAULT_RANKING, seed=args.seed)
    shown = state.fields[:args.top] if args.top else state.fields
    out = sys.stdout
    if args.json:
        for k, f in enumerate(shown, 1):
            out.write(json.dumps({"rank": k, **f.to_dict(), **state.record(f)}) + "\n")
    else:
        out.write(f"{src.name}: {len(state.fields)} fields of {state.size} px with tissue, "
                  f"ranked by {state.ranking}\n")
        out.write(f"{'rank':>5} {'field':>6} {'x':>7} {'y':>7} {'w':>5} {'h':>5} {'entropy':>8} "
                  f"{'disagree':>8} {'tumour%':>7} {'tissue%':>7}  status\n")
        for k, f in enumerate(shown, 1):
            out.write(f"{k:>5} {f.index:>6} {f.x:>7} {f.y:>7} {f.w:>5} {f.h:>5} {f.entropy:>8.3f} "
                      f"{f.disagreement:>8.3f} {100 * f.tumour_px / (f.h * f.w):>7.1f} {100 * f.tissue:>7.0f}  "
                      f"{state.status(f)}\n")
        if len(shown) < len(state.fields):
            out.write(f"... {len(state.fields) - len(shown)} more\n")
        out.write(state.progress() + "\n")
    if args.geojson:
        from napari_histoseg.io.atomic import atomic_write_text
        from napari_histoseg.review.export import review_geojson

        atomic_write_text(args.geojson, json.dumps(review_geojson(state, src), allow_nan=False))
        print(f"wrote {args.geojson}", file=sys.stderr)
    return 0
