"""``histoseg classify`` and the classification task of ``histoseg train|evaluate``.

Import-light: no torch at import (the parser is built on every ``histoseg`` call)::

    histoseg classify IMAGE [--region MASK.png] [--mpp 0.25 | --magnification 400x] [--model PATH] [--json OUT]
    histoseg train ../shared/data/breakhis --task classification -o cls.safetensors ...
    histoseg evaluate ../shared/data/breakhis --task classification --split test \
        [--simulate-magnification 100x 200x 400x]
"""

from __future__ import annotations

import json
import sys

from napari_histoseg.classifier.magnification import magnification_arg
from napari_histoseg.io.checks import float_arg


def add_evaluate_options(p) -> None:
    """Classification-only flags of ``histoseg evaluate``."""
    g = p.add_argument_group("classification (benign/malignant)")
    g.add_argument("--per-image", action="store_true", help="classification: also print every image")
    g.add_argument("--simulate-magnification", type=magnification_arg, nargs="+", default=None, metavar="MAG",
                   help="classification: also evaluate on higher-power fields simulated from the images "
                        "(e.g. 200x 400x: four fields per image, enlarged with optical blur); 100x = as stored")


def run_evaluate(args) -> int:
    from napari_histoseg.classifier.evaluate import evaluate_classifier, format_report

    mags = getattr(args, "simulate_magnification", None) or [None]
    out = {}
    for mag in mags:
        res = evaluate_classifier(args.dataset, args.model, split=args.split,
                                  simulate_magnification=None if mag in (None, 100) else mag)
        out[f"{mag:g}x" if mag else "as stored"] = res
        print(format_report(res))
        if getattr(args, "per_image", False):
            for r in res["images"]:
                print(f"{r['id']:<40} {r['label']}  {r['p_malignant']:.3f}")
        print()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out if len(out) > 1 else next(iter(out.values())), f, indent=2)
    return 0


def cmd_classify(args) -> int:
    import warnings

    from napari_histoseg.classifier.infer import ClassifierInputError, classify_region, load_classifier
    from napari_histoseg.io import open_image
    from napari_histoseg.io.masks import read_region

    slide = open_image(args.image)
    image = slide.levels[0] if hasattr(slide, "levels") else slide
    region = read_region(args.region, image.shape) if args.region else None
    mpp = args.mpp if args.mpp is not None else getattr(slide, "mpp", None)
    model = load_classifier(args.model)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = classify_region(image, model, region, mpp, magnification=args.magnification,
                                estimate=not args.no_estimate)
    except ClassifierInputError as e:
        print(f"histoseg classify: {e}", file=sys.stderr)
        return 2
    for note in r.warnings:
        print(f"warning: {note}", file=sys.stderr)
    sc = r.scale
    how = {"given": "from the file" if args.mpp is None else "given", "magnification": "stated",
           "estimate": "estimated from nuclei", "unknown": "unknown"}.get(sc.get("source"), "")
    at = (f"{sc['magnification']:.0f}x, {sc['mpp']:.3g} µm/px {how}" if sc.get("mpp") else "scale unknown")
    print(f"{args.image}: {r.label} (P = {r.probability:.3f}; P(malignant) {r.probabilities[-1]:.3f}, "
          f"spread over {r.n_tiles} tiles ±{r.spread:.3f}; {at}, read at {sc.get('model_mpp') or '?'} µm/px; "
          f"model {model.description})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"image": args.image, "region": args.region, "mpp": mpp, "magnification": args.magnification,
                   "model": model.description,
                       **r.to_json(model.class_names)}, f, indent=2)
    return 0


def register(subparsers) -> None:
    """Add ``classify`` to the ``histoseg`` subcommands."""
    p = subparsers.add_parser("classify", help="benign or malignant: classify an H&E image or region",
                              description="Calibrated probability that an H&E image (or the region "
                                          "of a mask) is malignant, from the bundled classifier.")
    p.add_argument("image", help="RGB H&E image (PNG, JPEG, TIFF, SVS)")
    p.add_argument("--region", default=None, metavar="MASK", help="mask image; non-zero = the region")
    p.add_argument("--mpp", type=float_arg(lo=0, lo_open=True, hi=100), default=None,
                   help="µm per pixel (default: from the file)")
    p.add_argument("--magnification", type=magnification_arg, default=None, metavar="MAG",
                   help="the field's magnification as the microscope states it (40x, 100x, 200x, 400x; "
                        "objective x 10 eyepiece), when the file has no µm per pixel; without either it is "
                        "estimated from nucleus size")
    p.add_argument("--no-estimate", action="store_true",
                   help="do not measure nuclei to estimate or cross-check the magnification")
    p.add_argument("--model", default=None, help="classification checkpoint (default: the bundled one)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the answer as JSON")
    p.set_defaults(func=cmd_classify)
