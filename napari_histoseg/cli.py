"""The ``histoseg`` command line: segment, demo (and train, evaluate where installed).

    histoseg segment IMAGE -o MASK [--prob PROB.tif] [--model PATH] [--device auto]
                     [--tile N] [--overlap N] [--threshold T] [--level L] [--engine auto|torch|torch-bf16|onnx|onnx-int8]
                     [--backend http://host:port [--token-file PATH]] [--no-tissue-gate]
                     [--mpp UM | --magnification 20x] [--stain-norm macenko|reinhard] [--tta]
    histoseg demo [--screenshot PNG]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_histoseg.core.runs import tile_bar
from napari_histoseg.io.checks import float_arg, int_arg, magnification_arg

MIN_TILE, MAX_TILE = 64, 4096


def cmd_segment(args) -> int:
    from napari_histoseg.api import load_model
    from napari_histoseg.core.tiling import predict
    from napari_histoseg.io import open_image

    token = None
    if args.token_file:
        from napari_histoseg.server.security import read_token

        token = read_token(args.token_file)
    from napari_histoseg.io.atomic import atomic_path, output_folder
    from napari_histoseg.io.checks import InputError, batch_bytes, check_memory, check_pixels
    from napari_histoseg.io.masks import MASK_SUFFIXES, write_mask

    out = Path(args.output)
    if out.suffix.lower() not in MASK_SUFFIXES:
        raise InputError(f"-o {out.name}: a mask is written as .png, .tif or .tiff")
    if args.prob and Path(args.prob).suffix.lower() not in (".tif", ".tiff"):
        raise InputError(f"--prob {Path(args.prob).name}: the probability is written as .tif or .tiff")
    for path in (out, *([Path(args.prob)] if args.prob else [])):
        output_folder(path)   # before the model runs: a bad output path fails in a second, not after
    model = load_model(args.model, device=args.device, engine=args.engine, backend=args.backend, token=token)
    tile = args.tile or model.meta.tile_size
    if not MIN_TILE <= tile <= MAX_TILE:
        raise InputError(f"tile size {tile} px (the model's) is outside {MIN_TILE}..{MAX_TILE}; give --tile")
    if 2 * args.overlap > tile:
        raise InputError(f"--overlap {args.overlap} must be at most half the tile ({tile} px)")
    if args.batch_size:
        check_memory(batch_bytes(args.batch_size, tile), f"--batch-size {args.batch_size} of {tile} px tiles",
                     hint="use a smaller --batch-size")
    with open_image(args.image) as slide:
        if not 0 <= args.level < len(slide.levels):
            raise InputError(f"level {args.level} does not exist; {args.image} has {len(slide.levels)}")
        image = slide.levels[args.level]
        check_pixels(image.shape, f"{Path(args.image).name} level {args.level}",
                     hint="give a lower resolution --level, or run `histoseg segment-slides` for whole slides")
        warn(slide.warnings)
        downsample = slide.shape[0] / image.shape[0]
        mpp = scale_note(args, slide.mpp, model, Path(args.image).name)
        mpp = mpp * downsample if mpp else None
        preprocess = None
        if args.stain_norm:
            import numpy as np

            from napari_histoseg.colour.preprocess import PreprocessConfig, Preprocessor

            thumb = min(slide.levels, key=lambda lv: abs(max(lv.shape[:2]) - 1024))
            step = max(1, max(thumb.shape[:2]) // 1024)
            preprocess = Preprocessor(PreprocessConfig(stain_norm=args.stain_norm)).fit(
                np.asarray(thumb[::step, ::step]))
        tissue = None
        if not args.no_tissue_gate:
            from napari_histoseg.core.tissue import TissueMask, slide_tissue

            found = slide_tissue(slide)   # as segment-slides finds it, then in this level's pixels
            tissue = TissueMask(found.mask, found.downsample / downsample)
        bar, progress = tile_bar(f"segmenting {Path(args.image).name}")
        pred = predict(image, model, tile=tile, overlap=args.overlap,
                       threshold=args.threshold, batch_size=args.batch_size, progress=progress,
                       tissue_gate=not args.no_tissue_gate, tissue=tissue, mpp=mpp, preprocess=preprocess,
                       tta=args.tta)
        bar.close()
    if args.prob:   # both files or neither: the probability is renamed into place only with the mask
        import tifffile

        with atomic_path(args.prob) as tmp:
            tifffile.imwrite(tmp, pred.probability, compression="zlib")
            write_mask(out, pred.mask)
    else:
        write_mask(out, pred.mask)
    scaled = (f"; resampled {pred.image_mpp:g} -> {pred.model_mpp:g} µm/px for the model"
              if getattr(pred, "scale", 1.0) != 1.0 else "")
    print(f"{args.output}: {pred.mask.shape[1]} x {pred.mask.shape[0]} px, {summary(pred, mpp)} "
          f"(model {model.description}{' + flip TTA' if args.tta else ''}, "
          f"{model.device.type}{scaled})")
    return 0


def scale_note(args, metadata_mpp, model, name: str):
    """The image's full-resolution µm per pixel (``--mpp``, else ``--magnification``, else its
    metadata), after saying once on stderr where the scale is unknown or stated by hand."""
    from napari_histoseg.io.checks import MPP_AT_1X, InputError

    if args.mpp and args.magnification:
        raise InputError("give --mpp or --magnification, not both")
    model_mpp = getattr(model.meta, "mpp", None)
    if args.mpp or args.magnification:
        mpp = args.mpp or MPP_AT_1X / args.magnification
        if metadata_mpp and abs(mpp / metadata_mpp - 1) > 0.02:
            warn([f"{name} says {metadata_mpp:g} µm/px; using the {mpp:g} µm/px given"])
        return mpp
    if not metadata_mpp and model_mpp:
        warn([f"{name} does not record its pixel size, so it is used as it is; the model works at "
              f"{model_mpp:g} µm/px ({MPP_AT_1X / model_mpp:g}x). If the image is at another scale the "
              "map will be wrong: give --mpp or --magnification (e.g. --magnification 40x)"])
    return metadata_mpp


def warn(messages, what: str = "") -> None:
    """Print conversions done to the input (``slide.warnings``) as ``histoseg: warning: ...``."""
    for m in messages or ():
        print(f"histoseg: warning: {what + ': ' if what else ''}{m}", file=sys.stderr)


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
    "tumour.adapt_cli", # adapt
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
    s.add_argument("--engine", default="auto", choices=["auto", "torch", "torch-bf16", "onnx", "onnx-int8"],
                   help="auto (default): the fastest path measured to keep the model's Dice on this machine "
                        "(ONNX int8 where the model ships checked int8 ranges and the CPU has VNNI, else "
                        "PyTorch bfloat16 where the CPU has it, else PyTorch float32; printed when it runs); "
                        "torch: PyTorch float32 (fp16 on cuda); torch-bf16; onnx: ONNX Runtime float32; "
                        "onnx-int8: quantised")
    s.add_argument("--tile", type=int_arg(MIN_TILE, MAX_TILE), default=None,
                   help=f"tile edge in px, {MIN_TILE}..{MAX_TILE} (default: the model's)")
    s.add_argument("--overlap", type=int_arg(0, MAX_TILE // 2), default=64,
                   help="tile overlap in px, at most half the tile (default 64)")
    s.add_argument("--threshold", type=float_arg(0, 1, lo_open=True, hi_open=True), default=0.5,
                   help="tumour probability at or above which a pixel is tumour, in (0, 1) (default 0.5)")
    s.add_argument("--batch-size", type=int_arg(1, 1024), default=None,
                   help="tiles per forward pass (default: by tile size and device)")
    s.add_argument("--level", type=int_arg(0, 64), default=0, help="pyramid level (0 = full resolution)")
    s.add_argument("--no-tissue-gate", action="store_true",
                   help="let the model judge glass and background too (default: only detected tissue "
                        "can be tumour, as in segment-slides)")
    s.add_argument("--mpp", type=float_arg(0.01, 100), default=None,
                   help="µm per pixel of the image's full resolution (default: its metadata); the image is "
                        "resampled to the model's scale for the prediction, the mask comes back at the image's")
    s.add_argument("--magnification", type=magnification_arg(), default=None, metavar="MAG",
                   help="the image's objective magnification, e.g. 20x (read as 10 / MAG µm per pixel: "
                        "20x = 0.5, 40x = 0.25), where its pixel size is not known")
    s.add_argument("--stain-norm", choices=["macenko", "reinhard"], default=None,
                   help="normalise the stains to the reference before the model (fitted on a thumbnail)")
    s.add_argument("--tta", action="store_true",
                   help="average the prediction over 4 flips (about 3x the time for +0.00 to +0.03 Dice; "
                        "see the model card)")
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


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"histoseg: warning: {message}", file=sys.stderr)


def main(argv=None) -> int:
    """Run ``histoseg``; bad input ends as ``histoseg: <message>`` with exit code 2."""
    import warnings

    args = build_parser().parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning   # conversions and skipped input are said on the CLI
        try:
            return int(args.func(args) or 0)
        except KeyboardInterrupt:
            print("histoseg: interrupted", file=sys.stderr)
            return 130
        except Exception as e:
            from napari_histoseg.io.errors import user_error

            message = user_error(e)
            if message is None:
                raise
            print(f"histoseg: {message}", file=sys.stderr)
            return 2


if __name__ == "__main__":
    sys.exit(main())
