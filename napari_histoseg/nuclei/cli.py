"""Command line for nuclei (import-light: no torch at import).

    histoseg nuclei IMAGE -o LABELS.tif [--csv FEATURES.csv] [--geojson NUCLEI.geojson]
                    [--region MASK.png] [--mpp M] [--model PATH] [--classical] [--tile N] [--overlap N]
                    [--batch N] [--score-threshold T] [--split-touching | --no-split-touching]
                    [--stain | --no-stain]
    histoseg train DATASET --task instances -o NUCLEI.safetensors --init-encoder MNV2.safetensors
                   --time-budget MIN --batch-size 2 --lr 2e-4 [--nuclei-val-every MIN] [--nuclei-warmup STEPS]
    histoseg evaluate DATASET --task instances [--model PATH] [--split test] [--json OUT]
                      [--no-baseline] [--nuclei-split-touching | --no-nuclei-split-touching]
                      [--nuclei-stain | --no-nuclei-stain]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from napari_histoseg.io.checks import float_arg, int_arg

DEFAULT_ARCH = "maskrcnn-mobilenet_v2"


def add_evaluate_options(p) -> None:
    g = p.add_argument_group("instances (nuclei)")
    g.add_argument("--no-baseline", action="store_true",
                   help="instances: skip the classical watershed baseline")
    g.add_argument("--nuclei-tile", type=int_arg(64, 4096), default=640, help="instances: tile size (default 640)")
    g.add_argument("--nuclei-overlap", type=int_arg(0, 1024), default=128,
                   help="instances: tile overlap (default 128)")
    g.add_argument("--nuclei-split-touching", action=argparse.BooleanOptionalAction, default=None,
                   help="instances: cut non-convex nuclei at their waists (default: the model's setting)")
    g.add_argument("--nuclei-stain", action=argparse.BooleanOptionalAction, default=None,
                   help="instances: normalise each image's stain to the model's training stain first "
                        "(default: only if the model names a stain target)")


def run_evaluate(args) -> int:
    from napari_histoseg.nuclei.evaluate import evaluate_nuclei, format_table

    result = evaluate_nuclei(args.dataset, args.model, split=args.split, baseline=not args.no_baseline,
                             tile=args.nuclei_tile, overlap=args.nuclei_overlap,
                             split_touching=args.nuclei_split_touching, stain=args.nuclei_stain,
                             log=lambda s: print(s, flush=True))
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser("nuclei", help="find, outline and measure every nucleus",
                              description="One label per nucleus (Mask R-CNN, or the classical "
                                          "watershed with --classical), per-nucleus features as CSV.")
    p.add_argument("image", help="RGB H&E image (PNG, JPEG, TIFF, ...)")
    p.add_argument("-o", "--output", required=True, help="labels to write (.tif; .png up to 65535 nuclei)")
    p.add_argument("--csv", help="write one row of features per nucleus here")
    p.add_argument("--geojson", help="also write the nuclei as QuPath GeoJSON (.geojson): one detection per "
                                     "nucleus, classified Nucleus, with its measurements, as the Nuclei "
                                     "widget exports them")
    p.add_argument("--region", help="mask (PNG/TIFF, non-zero = tumour): keep nuclei whose centroid "
                                    "is inside, and print tumour vs rest")
    p.add_argument("--mpp", type=float_arg(0.05, 20), default=None,
                   help="microns per pixel (default: from the file; the image is resampled to the model's)")
    p.add_argument("--model", default=None, help="nucleus checkpoint (default: the bundled model)")
    p.add_argument("--classical", action="store_true", help="use the classical watershed baseline")
    p.add_argument("--tile", type=int_arg(64, 4096), default=640, help="tile side in model pixels (default 640)")
    p.add_argument("--overlap", type=int_arg(0, 1024), default=128, help="tile overlap (default 128)")
    p.add_argument("--batch", type=int_arg(1, 64), default=2, help="tiles per detector call (default 2)")
    p.add_argument("--score-threshold", type=float_arg(0, 1), default=None,
                   help="minimum detection score (default: the model's, chosen on validation tiles)")
    p.add_argument("--split-touching", action=argparse.BooleanOptionalAction, default=None,
                   help="cut non-convex nuclei at their waists (default: the model's setting)")
    p.add_argument("--stain", action=argparse.BooleanOptionalAction, default=None,
                   help="normalise the image's stain to the model's training stain first: worth it for "
                        "another lab's or scanner's slides (default: only if the model names a stain target)")
    p.set_defaults(func=cmd_nuclei)


def cmd_nuclei(args) -> int:
    import numpy as np

    from napari_histoseg.core.runs import tile_bar
    from napari_histoseg.io import open_image
    from napari_histoseg.io.atomic import output_folder
    from napari_histoseg.io.masks import read_region

    for out in (args.output, args.csv, args.geojson):
        if out:
            output_folder(out)   # a bad output path fails now, not after the model has run
    with open_image(args.image) as slide:
        rgb = np.asarray(slide.levels[0])
        mpp = args.mpp or slide.mpp
    region = read_region(args.region, rgb.shape) if args.region else None
    if args.classical:
        from napari_histoseg.nuclei.baseline import detect_nuclei_classical

        labels, table = detect_nuclei_classical(rgb, mpp=mpp)
    else:
        from napari_histoseg.nuclei.infer import detect_nuclei

        bar, progress = tile_bar(f"nuclei in {Path(args.image).name}")
        labels, table = detect_nuclei(rgb, args.model, mpp=mpp, tile=args.tile, overlap=args.overlap,
                                      score_threshold=args.score_threshold, progress=progress,
                                      batch=args.batch, split_touching=args.split_touching, stain=args.stain)
        bar.close()
    from napari_histoseg.nuclei.features import region_summary

    if region is not None:
        summary = region_summary(table, {"tumour": region, "rest": ~region}, mpp)
        cy = np.clip(table["centroid_y"].round().astype(int), 0, region.shape[0] - 1)
        cx = np.clip(table["centroid_x"].round().astype(int), 0, region.shape[1] - 1)
        table["in_region"] = region[cy, cx]
    else:
        summary = region_summary(table, {"image": np.ones(labels.shape, bool)}, mpp)
    _write_labels(Path(args.output), labels)
    if args.csv:
        Path(args.csv).parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.csv, index=False)
    if args.geojson:
        method = "classical watershed" if args.classical else (args.model or "bundled")
        from napari_histoseg.core.geojson import write_nuclei_geojson

        write_nuclei_geojson(args.geojson, labels, table, mpp=mpp,
                             provenance={"source": Path(args.image).name, "model": method})
    print(f"{args.output}: {int(labels.max())} nuclei in {labels.shape[1]} x {labels.shape[0]} px"
          + (f" at {mpp:.3f} µm/px" if mpp else " (mpp unknown: areas in px²)"))
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


def _write_labels(path: Path, labels) -> None:
    import tifffile

    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in {".tif", ".tiff"}:
        tifffile.imwrite(path, labels, compression="zlib")
    elif path.suffix.lower() == ".png":
        if labels.max() > 65535:
            raise ValueError(f"{path.name}: more than 65535 nuclei do not fit a PNG; use .tif")
        from skimage.io import imsave

        imsave(path, labels.astype("uint16"), check_contrast=False)
    else:
        raise ValueError(f"cannot write {path.name}: use .tif, .tiff or .png")
