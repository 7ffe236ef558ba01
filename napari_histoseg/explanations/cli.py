"""``histoseg explain``: a Grad-CAM, SHAP or uncertainty map of an image, as a float32 TIFF.

``cli.py`` calls :func:`register` with its subparsers::

    histoseg explain IMAGE --method METHOD -o OUT.tif
                     [--model PATH] [--device auto] [--tile N] [--overlap N]
                     [--region y,x,h,w] [--target mask|all] [--layer NAME]
                     [--samples N] [--regions N] [--scale S] [--level L] [--estimate]

Every number is checked by :mod:`napari_histoseg.io.checks` (a bad one is refused with a
message before anything is loaded). ``--estimate`` prints what the run would cost and stops.

Nothing heavy (torch, captum) is imported until the command runs.
"""

from __future__ import annotations

from pathlib import Path

from napari_histoseg.explanations.methods import METHODS
from napari_histoseg.io.checks import int_arg


def _region(text: str) -> tuple[int, int, int, int]:
    import argparse

    from napari_histoseg.io.checks import InputError, check_int

    parts = text.split(",")
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--region takes y,x,h,w (four integers), not {text!r}")
    try:
        y, x = (check_int(v.strip(), f"--region {n}", lo=0) for v, n in zip(parts[:2], "yx"))
        h, w = (check_int(v.strip(), f"--region {n}", lo=1) for v, n in zip(parts[2:], "hw"))
    except InputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return y, x, h, w


def register(subparsers) -> None:
    """Add the ``explain`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "explain", help="write a Grad-CAM, SHAP or uncertainty map of an image (float32 TIFF)",
        description="Explain the tumour segmentation of an image. gradcam: 0..1, where the model looked; "
                    "shap: -1..1, positive pushes towards tumour, negative away; entropy: 0..1 bits; "
                    "mc-dropout / tta: standard deviation of the probability over dropout samples / flips and "
                    "quarter turns; hirescam 0..1, inputxgrad -1..1, gradcam-ixg 0..1 (Grad-CAM ranked "
                    "inside by input x gradient); superpixel-shap -1..1 (Kernel SHAP over SLIC regions); "
                    "tta-entropy / tta-boundary 0..1 (entropy of the flip/turn mean, or it or the nearness of "
                    "the predicted outline).")
    p.add_argument("image", help="PNG, JPEG, TIFF, OME-TIFF or SVS")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("-o", "--output", required=True, help="float32 map to write (.tif)")
    p.add_argument("--model", help="a .safetensors checkpoint (default: the bundled model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--tile", type=int_arg(64, 8192), default=None, help="tile edge in px (default: the model's)")
    p.add_argument("--overlap", type=int_arg(0, 4096), default=64, help="tile overlap in px (default 64)")
    p.add_argument("--region", type=_region, default=None, metavar="Y,X,H,W",
                   help="explain only this window (the map then has its size)")
    p.add_argument("--target", default="mask", choices=["mask", "all"],
                   help="gradcam/shap: the predicted tumour (mask) or every pixel (all)")
    p.add_argument("--layer", default=None, help="gradcam layer, a dotted module path (default: the model's)")
    p.add_argument("--samples", type=int_arg(1, 4096), default=None,
                   help="SHAP samples (8), superpixel-SHAP coalitions (64), dropout passes (16) or flips/turns (8)")
    p.add_argument("--regions", type=int_arg(2, 1024), default=None,
                   help="superpixel-shap: about how many SLIC regions (default ~48 per 1024 x 1024 px)")
    p.add_argument("--scale", type=int_arg(1, 8), default=1,
                   help="superpixel-shap: score the coalitions on the view shrunk by this factor (1: faithful)")
    p.add_argument("--level", type=int_arg(0, 64), default=0, help="pyramid level (0 = full resolution)")
    p.add_argument("--estimate", action="store_true", help="print the estimated cost and stop")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``histoseg explain`` with parsed arguments."""
    import numpy as np
    import tifffile

    from napari_histoseg.core.runs import tile_bar
    from napari_histoseg.explanations import explain
    from napari_histoseg.explanations.cost import estimate
    from napari_histoseg.io import open_image
    from napari_histoseg.io.atomic import output_folder
    from napari_histoseg.io.checks import check_pixels
    from napari_histoseg.models.segmenter import load_segmenter as load_model

    out = Path(args.output)
    if out.suffix.lower() not in {".tif", ".tiff"}:
        raise SystemExit(f"histoseg: cannot write {out.name}: the map is float32, use .tif or .tiff")
    output_folder(out)   # a bad output path fails now, not after the map is computed
    model = load_model(args.model, device=args.device)
    with open_image(args.image) as slide:
        if not 0 <= args.level < len(slide.levels):
            raise SystemExit(f"histoseg: level {args.level} does not exist; {args.image} has {len(slide.levels)}")
        image = slide.levels[args.level]
        h, w = (args.region[2], args.region[3]) if args.region else image.shape[:2]
        check_pixels((h, w), f"the {'region' if args.region else f'level {args.level}'} of {Path(args.image).name}",
                     hint="explain a region (--region Y,X,H,W) or a lower pyramid level (--level)")
        tile = args.tile or model.meta.tile_size
        cost = estimate(args.method, image.shape, args.region, tile=tile, overlap=args.overlap,
                        samples=args.samples, scale=args.scale)
        print(f"{args.method}: about {cost['seconds']:.0f} s on 2 CPU cores ({cost['passes']:g} forward-pass "
              f"equivalents over {cost['megapixels']:.2f} Mpx)")
        if args.estimate:
            return 0
        bar, progress = tile_bar(f"{args.method} {Path(args.image).name}")
        extra = {"regions": args.regions, "scale": args.scale} if args.method == "superpixel-shap" else {}
        heat = explain(image, model, args.method, target=args.target, region=args.region, layer=args.layer,
                       tile=tile, overlap=args.overlap, samples=args.samples, progress=progress, **extra)
        bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out, heat.astype(np.float32), compression="zlib")
    print(f"{out}: {args.method} map {heat.shape[1]} x {heat.shape[0]} px, range "
          f"{float(heat.min()):.3g} .. {float(heat.max()):.3g} (model {model.description}, {model.device.type})")
    return 0
