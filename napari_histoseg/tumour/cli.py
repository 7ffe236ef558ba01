"""``histoseg export``, ``histoseg geojson`` and ``histoseg quantify``.

``cli.py`` calls :func:`register` with its subparsers::

    histoseg export IMAGE MASK -o DATASET [--tile 512] [--only-edited] [--edits EDITS.png]
                    [--annotator NAME] [--model NAME] [--level L] [--mpp MPP] [--min-tissue F]
    histoseg geojson MASK -o OUT.geojson [--offset X,Y] [--scale S] [--classification Tumor]
                     [--mpp MPP] [--min-region-um2 A | --min-region-px N]
    histoseg geojson IN.geojson -o MASK.png --shape H,W [--offset X,Y] [--scale S] [--classes tumour|all|any|A=1,B=2]
    histoseg quantify MASK [--image IMAGE] [--mpp MPP] [--csv OUT]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_histoseg.io.checks import InputError, check_float, check_int, check_pixels, float_arg, int_arg
from napari_histoseg.io.masks import read_mask

MIN_TILE, MAX_TILE = 64, 8192
MAX_COORD = 1e9   # slide pixels: larger offsets are no slide's


def _pair(text: str) -> tuple[float, float]:
    """``X,Y``: two finite numbers."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected two numbers a,b, not {text!r}")
    try:
        return tuple(check_float(v, "the value", lo=-MAX_COORD, hi=MAX_COORD) for v in parts)
    except InputError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {str(e).replace('the value ', '')}") from None


def _shape(text: str) -> tuple[int, int]:
    """``H,W``: two positive integers."""
    parts = text.split(",")
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected H,W (two integers), not {text!r}")
    try:
        return tuple(check_int(v, "the value", lo=1) for v in parts)
    except InputError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: {str(e).replace('the value ', '')}") from None


def _colour(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    try:
        if len(parts) != 3:
            raise InputError("needs three values")
        return tuple(check_int(v, "the value", lo=0, hi=255) for v in parts)
    except InputError:
        raise argparse.ArgumentTypeError(f"expected r,g,b (three integers 0..255), not {text!r}") from None


def _warn(slide) -> None:
    import sys

    for w in slide.warnings:
        print(f"histoseg: warning: {slide.path}: {w}", file=sys.stderr)


def _level(slide, level: int):
    if not 0 <= level < len(slide.levels):
        raise InputError(f"level {level} does not exist; the image has {len(slide.levels)}")
    _warn(slide)
    image = slide.levels[level]
    mpp = None
    if slide.mpp:
        mpp = slide.mpp * slide.levels[0].shape[1] / image.shape[1]
    return image, mpp


def _run_export(args) -> int:
    from napari_histoseg.io import open_image
    from napari_histoseg.io.masks import check_mask
    from napari_histoseg.tumour.export import export_tiles

    mask = check_mask(read_mask(args.mask), f"mask {args.mask}")
    edits = read_mask(args.edits, "--edits") if args.edits else None
    with open_image(args.image) as slide:
        image, mpp = _level(slide, args.level)
        if mask.shape != tuple(image.shape[:2]):
            raise ValueError(f"mask {args.mask} is {mask.shape[1]} x {mask.shape[0]} px but level {args.level} "
                             f"of {args.image} is {image.shape[1]} x {image.shape[0]} px")
        recs = export_tiles(image, mask, args.output, tile=args.tile, only_edited=args.only_edited,
                            edits=edits, source=args.image, level=args.level,
                            mpp=args.mpp if args.mpp is not None else mpp, model=args.model,
                            annotator=args.annotator, min_tissue=args.min_tissue, split=args.split)
    replaced = sum(r["replaced"] for r in recs)
    print(f"{args.output}: {len(recs) - replaced} tiles added, {replaced} replaced")
    return 0


def _run_geojson(args) -> int:
    from napari_histoseg.core import geojson as gj
    from napari_histoseg.core import geojson_import as gji

    src, out = Path(args.input), Path(args.output)
    offset = args.offset or (0.0, 0.0)
    if src.suffix.lower() in (".geojson", ".json"):
        if args.shape is None:
            raise InputError("reading GeoJSON into a mask needs --shape H,W (GeoJSON does not record it)")
        if out.suffix.lower() not in (".png", ".tif", ".tiff"):
            raise InputError(f"-o {out.name}: the mask is written as .png, .tif or .tiff")
        shape = tuple(args.shape)
        check_pixels(shape, f"--shape {shape[0]},{shape[1]}", hint="fill a lower resolution mask "
                     "(a larger --scale, full-resolution px per mask px)")
        data = gji.read_geojson(src)
        codes = gji.class_codes(data, _classes(args.classes))
        mask, skipped = gji.geojson_to_mask_report(data, shape, offset=offset, scale=args.scale, classes=codes)
        from napari_histoseg.io.masks import write_mask

        write_mask(Path(out), mask)
        left = ", ".join(f"{n} {k}" for k, n in sorted(skipped.items()))
        used = ", ".join(f"{'unclassified' if k is None else k} -> {v}" for k, v in
                         sorted(codes.items(), key=lambda kv: (kv[1], str(kv[0]))))
        print(f"{out}: {int((mask > 0).sum())} px filled ({used or 'no class mapped'})"
              + (f"; left out {left}" if left else ""))
        return 0
    mask = read_mask(src)
    color = args.color
    fc, report = gj.mask_to_geojson_report(mask, classification=args.classification, color=color, offset=offset,
                                           scale=args.scale, label=args.label, mpp=args.mpp,
                                           min_region_um2=args.min_region_um2, min_region_px=args.min_region_px,
                                           tolerance=args.tolerance, provenance={"source": str(src)})
    from napari_histoseg.io.atomic import atomic_write_text

    atomic_write_text(out, json.dumps(fc, allow_nan=False))
    dropped = (f"; {report['dropped_regions']} specks under {report['min_region_px']} px left out "
               f"({report['dropped_px']} px)" if report["dropped_regions"] else "")
    what = f"{args.classification!r}" if (args.classification or "").strip() else "unclassified"
    print(f"{out}: {len(fc['features'])} regions as {what} annotations{dropped}")
    return 0


def _classes(text: str):
    """``tumour``, ``all``, ``any`` or ``Name=code,Name=code`` (``=code`` alone: unclassified)."""
    if text in ("tumour", "all", "any"):
        return text
    codes = {}
    for item in text.split(","):
        name, sep, code = item.rpartition("=")
        if not sep or not code.strip().isdigit() or not 0 < int(code) < 255:
            raise ValueError(f"--classes: expected tumour, all, any or Name=code,... with codes 1-254, not {item!r}")
        codes[name.strip() or None] = int(code)
    return codes


def _run_quantify(args) -> int:
    from napari_histoseg.io.masks import check_mask
    from napari_histoseg.tumour.quantify import quantify, rows, to_csv

    mask = check_mask(read_mask(args.mask), f"mask {args.mask}", codes=(0, 1, 255))
    if args.csv and Path(args.csv).is_dir():
        raise InputError(f"--csv {args.csv} is a folder")
    image, mpp = None, args.mpp
    if args.image:
        import numpy as np

        from napari_histoseg.io import open_image

        with open_image(args.image) as slide:
            level, level_mpp = _level(slide, args.level)
            check_pixels(level.shape, f"{args.image} level {args.level}", hint="give the --level of the mask")
            if tuple(level.shape[:2]) != mask.shape:
                raise InputError(f"mask {args.mask} is {mask.shape[1]} x {mask.shape[0]} px but level {args.level} "
                                 f"of {args.image} is {level.shape[1]} x {level.shape[0]} px")
            image = np.asarray(level[0:level.shape[0], 0:level.shape[1]])
        mpp = mpp if mpp is not None else level_mpp
    result = quantify(mask, image=image, mpp=mpp)
    for name, value, unit in rows(result, regions=args.regions):
        text = "" if value is None else (f"{value:.6g}" if isinstance(value, float) else str(value))
        print(f"{name:<28} {text:>14} {unit}")
    if args.csv:
        to_csv(result, args.csv)
        print(f"{args.csv}: written")
    return 0


def register(subparsers) -> None:
    """Add the ``export``, ``geojson`` and ``quantify`` subcommands."""
    p = subparsers.add_parser("export", help="add tiles of an image and its corrected mask to a training-data folder",
                              description="Tiles of IMAGE and MASK into DATASET (docs/ARCHITECTURE.md layout) with "
                                          "provenance; re-exported tiles replace, others are added; atomic.")
    p.add_argument("image", help="the image or slide the mask belongs to")
    p.add_argument("mask", help="corrected mask (.png/.tif): 0 not tumour, 1 tumour, 255 unknown")
    p.add_argument("-o", "--output", required=True, help="training-data folder (created if missing)")
    p.add_argument("--tile", type=int_arg(MIN_TILE, MAX_TILE), default=512,
                   help=f"tile edge in px, {MIN_TILE}..{MAX_TILE} (default 512)")
    p.add_argument("--edits", help="mask of the pixels a person changed (non-zero = changed)")
    p.add_argument("--only-edited", action="store_true", help="export only tiles with edits")
    p.add_argument("--annotator", help="who corrected the mask")
    p.add_argument("--model", help="the model that made the first mask (name and version)")
    p.add_argument("--level", type=int_arg(0, 64), default=0, help="pyramid level the mask is at (default 0)")
    p.add_argument("--mpp", type=float_arg(0, 1000, lo_open=True), help="microns per pixel (default: from the image)")
    p.add_argument("--min-tissue", type=float_arg(0, 1), default=0.0, help="skip tiles with less tissue (0..1)")
    p.add_argument("--split", choices=["train", "val", "test"], help="split to record for the tiles")
    p.set_defaults(func=_run_export)

    g = subparsers.add_parser("geojson", help="mask to QuPath GeoJSON, or GeoJSON to a mask",
                              description="MASK -> annotations QuPath imports (polygons with holes, "
                                          "slide pixel coordinates); a .geojson input is filled into a mask.")
    g.add_argument("input", help="mask (.png/.tif) or GeoJSON (.geojson/.json)")
    g.add_argument("-o", "--output", required=True, help="GeoJSON to write, or the mask (.png/.tif)")
    g.add_argument("--offset", type=_pair, help="slide position X,Y of the mask's top-left corner")
    g.add_argument("--scale", type=float_arg(1e-3, 1e4), default=1.0,
                   help="full-resolution px per mask px, 0.001..10000 (default 1)")
    g.add_argument("--classification", default="Tumor", help="QuPath class name (default Tumor; '' unclassified)")
    g.add_argument("--classes", default="tumour",
                   help="GeoJSON input: class names to mask codes: tumour (default: Tumour/Tumor and unclassified "
                        "-> 1, others left out), all (others 2, 3, ... by name), any (everything 1), "
                        "or Name=code,... (=code for unclassified)")
    g.add_argument("--tolerance", type=float_arg(0, 1000), default=0.0,
                   help="outline simplification in mask px (default 0: exact pixel edges)")
    g.add_argument("--color", type=_colour, default=(200, 0, 0), help="class colour r,g,b (default 200,0,0)")
    g.add_argument("--label", type=int_arg(1, 254), default=1, help="mask code to export (default 1)")
    g.add_argument("--shape", type=_shape, help="H,W of the mask to fill (GeoJSON input)")
    g.add_argument("--mpp", type=float_arg(0, 1000, lo_open=True),
                   help="microns per mask pixel (sets the minimum region size in µm²)")
    g.add_argument("--min-region-um2", type=float_arg(0, 1e12), help="leave out regions and holes smaller than this "
                                                        "(default 50 µm² with --mpp)")
    g.add_argument("--min-region-px", type=int_arg(0, 1 << 40), help="the same in pixels (default 16 without --mpp; 0 keeps all)")
    g.set_defaults(func=_run_geojson)

    q = subparsers.add_parser("quantify", help="tumour area, fraction of tissue, regions; CSV",
                              description="Tumour area in µm² (pixels without mpp), tumour fraction "
                                          "of the tissue (with --image), tumour/stroma ratio, regions.")
    q.add_argument("mask", help="mask (.png/.tif): 1 tumour, 255 unknown")
    q.add_argument("--image", help="the image, for the tissue mask and its mpp")
    q.add_argument("--level", type=int_arg(0, 64), default=0, help="pyramid level of the mask (default 0)")
    q.add_argument("--mpp", type=float_arg(0, 1000, lo_open=True), help="microns per pixel of the mask")
    q.add_argument("--csv", help="write the table here")
    q.add_argument("--no-regions", dest="regions", action="store_false", help="leave out per-region rows")
    q.set_defaults(func=_run_quantify)
