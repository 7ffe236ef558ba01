"""The ``histoseg`` command line: segment, demo (and train, evaluate where installed).

    histoseg segment IMAGE -o MASK [--prob PROB.tif] [--model PATH] [--device auto]
                     [--tile N] [--overlap N] [--threshold T] [--level L] [--engine torch|onnx]
                     [--backend http://host:port [--token-file PATH]] [--no-tissue-gate]
    histoseg demo [--screenshot PNG]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_histoseg.core.runs import tile_bar
from napari_histoseg.io.masks import write_mask


def cmd_segment(args) -> int:
    from napari_histoseg.api import load_model
    from napari_histoseg.core.tiling import predict
    from napari_histoseg.io import open_image

    token = None
    if args.token_file:
        from napari_histoseg.server.security import read_token

        token = read_token(args.token_file)
    model = load_model(args.model, device=args.device, engine=args.engine, backend=args.backend, token=token)
    with open_image(args.image) as slide:
        if not 0 <= args.level < len(slide.levels):
            raise SystemExit(f"histoseg: level {args.level} does not exist; {args.image} has {len(slide.levels)}")
        image = slide.levels[args.level]
        downsample = slide.shape[0] / image.shape[0]
        mpp = slide.mpp * downsample if slide.mpp else None
        tissue = None
        if not args.no_tissue_gate:
            from napari_histoseg.core.tissue import TissueMask, slide_tissue

            found = slide_tissue(slide)   # as segment-slides finds it, then in this level's pixels
            tissue = TissueMask(found.mask, found.downsample / downsample)
        bar, progress = tile_bar(f"segmenting {Path(args.image).name}")
        pred = predict(image, model, tile=args.tile or model.meta.tile_size, overlap=args.overlap,
                       threshold=args.threshold, batch_size=args.batch_size, progress=progress,
                       tissue_gate=not args.no_tissue_gate, tissue=tissue, mpp=mpp)
        bar.close()
    write_mask(Path(args.output), pred.mask)
    if args.prob:
        import tifffile

        tifffile.imwrite(args.prob, pred.probability, compression="zlib")
    print(f"{args.output}: {pred.mask.shape[1]} x {pred.mask.shape[0]} px, {summary(pred, mpp)} "
          f"(model {model.description}, {model.device.type})")
    return 0


def summary(pred, mpp=None) -> str:
    """``"8.5 % tumour of the tissue (tumour 0.052 mm², tissue 0.609 mm²)"``; areas in px without mpp."""
    tumour = int((pred.mask == 1).sum())
    tissue = pred.tissue_px
    frac = pred.tumour_fraction_of_tissue
    where = "of the tissue" if pred.tissue is not None else "of the image (no tissue gate)"
    head = "no tissue found: 0 % tumour" if frac is None else f"{100 * frac:.1f} % tumour {where}"
    if mpp:
        return f"{head} (tumour {tumour * mpp ** 2 / 1e6:.3g} mm², tissue {tissue * mpp ** 2 / 1e6:.3g} mm²)"
    return f"{head} (tumour {tumour} px, tissue {tissue} px; mpp unknown)"


def cmd_demo(args) -> int:
    from napari_histoseg.plugin.widgets.demo import run_demo

    return run_demo(image=args.image, screenshot=args.screenshot, model=args.model)


# Modules that add subcommands through ``register(subparsers)``; each must import
# without torch or napari (the parser is built on every call of ``histoseg``).
_SUBCOMMAND_MODULES = (
    "tasks",            # train, evaluate (--task segmentation|instances|classification)
    "refinement.cli",   # refine
    "explanations.cli", # explain
    "tumour.cli",       # export, measure
    "wsi.cli",          # segment-slides
    "server.cli",       # serve
    "nuclei.cli",       # nuclei
    "classifier.cli",   # classify
    "review.cli",       # review-queue
)


def _optional_module(name: str):
    """Import ``napari_histoseg.<name>``; None only if that module itself does not exist."""
    import importlib

    full = f"{__package__}.{name}"
    try:
        return importlib.import_module(full)
    except ModuleNotFoundError as e:
        if e.name and (full == e.name or full.startswith(e.name + ".")):
            return None
        raise


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="histoseg", description="H&E tumour segmentation (napari-histoseg)")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("segment", help="segment an image or slide into a tumour mask")
    s.add_argument("image", help="PNG, JPEG, TIFF, OME-TIFF or SVS")
    s.add_argument("-o", "--output", required=True, help="mask to write (.png or .tif): 0 not tumour, 1 tumour")
    s.add_argument("--prob", help="also write the float32 tumour probability (.tif)")
    s.add_argument("--model", help="a .safetensors checkpoint (default: the bundled model)")
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda", "mps"])
    s.add_argument("--engine", default="torch", choices=["torch", "onnx"], help="onnx: ONNX Runtime on the CPU")
    s.add_argument("--tile", type=int, default=None, help="tile edge in px (default: the model's)")
    s.add_argument("--overlap", type=int, default=64, help="tile overlap in px (default 64)")
    s.add_argument("--threshold", type=float, default=0.5)
    s.add_argument("--batch-size", type=int, default=None, help="tiles per forward pass (default: by tile size and device)")
    s.add_argument("--level", type=int, default=0, help="pyramid level (0 = full resolution)")
    s.add_argument("--no-tissue-gate", action="store_true",
                   help="let the model judge glass and background too (default: only detected tissue "
                        "can be tumour, as in segment-slides)")
    s.add_argument("--backend", help="http://host:port of a `histoseg serve` to run the model on")
    s.add_argument("--token-file", help="file holding that server's bearer token")
    s.set_defaults(func=cmd_segment)

    d = sub.add_parser("demo", help="open napari with the sample image and its segmentation")
    d.add_argument("--image", help="an image to open instead of the bundled sample")
    d.add_argument("--model", help="a .safetensors checkpoint (default: the bundled model)")
    d.add_argument("--screenshot", help="save a screenshot of the window to this PNG and quit")
    d.set_defaults(func=cmd_demo)

    for name in _SUBCOMMAND_MODULES:
        module = _optional_module(name)
        if module is not None:
            module.register(sub)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("histoseg: interrupted", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as e:  # bad input: a message, not a traceback
        print(f"histoseg: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
