"""``histoseg explain``: a Grad-CAM, SHAP or uncertainty map of an image, as a float32 TIFF.

``cli.py`` calls :func:`register` with its subparsers::

    histoseg explain IMAGE --method gradcam|hirescam|inputxgrad|gradcam-ixg|shap|entropy|mc-dropout|tta -o OUT.tif
                     [--model PATH] [--device auto] [--tile N] [--overlap N]
                     [--region y,x,h,w] [--target mask|all] [--layer NAME]
                     [--samples N] [--level L]

Nothing heavy (torch, captum) is imported until the command runs.
"""

from __future__ import annotations

from pathlib import Path

from napari_histoseg.explanations.methods import METHODS


def _region(text: str) -> tuple[int, int, int, int]:
    import argparse

    try:
        parts = tuple(int(v) for v in text.split(","))
    except ValueError:
        parts = ()
    if len(parts) != 4:
        raise argparse.ArgumentTypeError(f"--region takes y,x,h,w (four integers), not {text!r}")
    return parts


def register(subparsers) -> None:
    """Add the ``explain`` subcommand to an argparse subparsers object."""
    p = subparsers.add_parser(
        "explain", help="write a Grad-CAM, SHAP or uncertainty map of an image (float32 TIFF)",
        description="Explain the tumour segmentation of an image. gradcam: 0..1, where the model looked; "
                    "shap: -1..1, positive pushes towards tumour, negative away; entropy: 0..1 bits; "
                    "mc-dropout / tta: standard deviation of the probability over dropout samples / flips and "
                    "quarter turns; hirescam 0..1, inputxgrad -1..1, gradcam-ixg 0..1 (Grad-CAM ranked "
                    "inside by input x gradient).")
    p.add_argument("image", help="PNG, JPEG, TIFF, OME-TIFF or SVS")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("-o", "--output", required=True, help="float32 map to write (.tif)")
    p.add_argument("--model", help="a .safetensors checkpoint (default: the bundled model)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    p.add_argument("--tile", type=int, default=None, help="tile edge in px (default: the model's)")
    p.add_argument("--overlap", type=int, default=64, help="tile overlap in px (default 64)")
    p.add_argument("--region", type=_region, default=None, metavar="Y,X,H,W",
                   help="explain only this window (the map then has its size)")
    p.add_argument("--target", default="mask", choices=["mask", "all"],
                   help="gradcam/shap: the predicted tumour (mask) or every pixel (all)")
    p.add_argument("--layer", default=None, help="gradcam layer, a dotted module path (default: the model's)")
    p.add_argument("--samples", type=int, default=None, help="SHAP samples (8) or dropout passes (16)")
    p.add_argument("--level", type=int, default=0, help="pyramid level (0 = full resolution)")
    p.set_defaults(func=run)


def run(args) -> int:
    """Run ``histoseg explain`` with parsed arguments."""
    import numpy as np
    import tifffile

    from napari_histoseg.core.runs import tile_bar
    from napari_histoseg.explanations import explain
    from napari_histoseg.io import open_image
    from napari_histoseg.models.segmenter import load_segmenter as load_model

    out = Path(args.output)
    if out.suffix.lower() not in {".tif", ".tiff"}:
        raise SystemExit(f"histoseg: cannot write {out.name}: the map is float32, use .tif or .tiff")
    model = load_model(args.model, device=args.device)
    with open_image(args.image) as slide:
        if not 0 <= args.level < len(slide.levels):
            raise SystemExit(f"histoseg: level {args.level} does not exist; {args.image} has {len(slide.levels)}")
        image = slide.levels[args.level]
        bar, progress = tile_bar(f"{args.method} {Path(args.image).name}")

        heat = explain(image, model, args.method, target=args.target, region=args.region, layer=args.layer,
                       tile=args.tile or model.meta.tile_size, overlap=args.overlap, samples=args.samples,
                       progress=progress)
        bar.close()
    out.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(out, heat.astype(np.float32), compression="zlib")
    print(f"{out}: {args.method} map {heat.shape[1]} x {heat.shape[0]} px, range "
          f"{float(heat.min()):.3g} .. {float(heat.max()):.3g} (model {model.description}, {model.device.type})")
    return 0
