"""``histoseg classify`` and the classification task of ``histoseg train|evaluate``.

Import-light: no torch at import (the parser is built on every ``histoseg`` call)::

    histoseg classify IMAGE [IMAGE ...] [--region MASK.png] [--mpp 0.25 | --magnification 400x] [--model PATH] [--json OUT]
    histoseg train ../shared/data/breakhis --task classification -o cls.safetensors ...
    histoseg evaluate ../shared/data/breakhis --task classification --split test \
        [--simulate-magnification 100x 200x 400x]
"""

from __future__ import annotations

import json
import sys

from napari_histoseg.classifier.magnification import magnification_arg
from napari_histoseg.io.atomic import output_folder
from napari_histoseg.io.checks import float_arg
from napari_histoseg.io.metadata import MPP_RANGE


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
        try:
            res = evaluate_classifier(args.dataset, args.model, split=args.split,
                                      simulate_magnification=None if mag in (None, 100) else mag)
        except ValueError as e:
            print(f"{mag:g}x: {e}" if mag else str(e))
            out[f"{mag:g}x" if mag else "as stored"] = {"error": str(e)}
            continue
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


def _classify_one(path, args, model):
    """``(json record, exit code)`` of one image; prints its line and warnings."""
    import warnings

    from napari_histoseg.classifier.infer import ClassifierInputError, classify_region
    from napari_histoseg.io import open_image
    from napari_histoseg.io.masks import read_region

    try:
        slide = open_image(path)
        image = slide.levels[0] if hasattr(slide, "levels") else slide
        region = read_region(args.region, image.shape) if args.region else None
        mpp = args.mpp if args.mpp is not None else getattr(slide, "mpp", None)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = classify_region(image, model, region, mpp, magnification=args.magnification,
                                estimate=not args.no_estimate)
    except (ClassifierInputError, ValueError, OSError) as e:  # this image only; the others go on
        print(f"histoseg classify: {path}: {e}", file=sys.stderr)
        return {"image": path, "refused": str(e)}, 2
    for note in r.warnings:
        print(f"warning: {path}: {note}", file=sys.stderr)
    sc = r.scale
    how = {"given": "from the file" if args.mpp is None else "given", "magnification": "stated",
           "estimate": "estimated from nuclei", "unknown": "unknown"}.get(sc.get("source"), "")
    at = (f"{sc['magnification']:.0f}x, {sc['mpp']:.3g} µm/px {how}" if sc.get("mpp") else "scale unknown")
    print(f"{path}: {r.label} (P = {r.probability:.3f}; P(malignant) {r.probabilities[-1]:.3f}, "
          f"spread over {r.n_tiles} tiles ±{r.spread:.3f}; {at}, read at {sc.get('model_mpp') or '?'} µm/px; "
          f"model {model.description})")
    return {"image": path, "region": args.region, "mpp": mpp, "magnification": args.magnification,
            "model": model.description, **r.to_json(model.class_names)}, 0


def cmd_classify(args) -> int:
    """One image, or several of one patient: each is classified, then the patient (the mean of
    the images' calibrated probabilities, as ``histoseg evaluate`` aggregates a patient)."""
    from napari_histoseg.classifier.infer import load_classifier

    if args.region and len(args.image) > 1:
        print("histoseg classify: --region goes with one image only", file=sys.stderr)
        return 2
    if args.json:
        output_folder(args.json)   # a bad output path fails now, not after the model has run
    model = load_classifier(args.model)
    records, codes = zip(*(_classify_one(path, args, model) for path in args.image))
    out = records[0]
    if len(records) > 1:
        done = [r for r in records if "refused" not in r]
        out = {"images": list(records), "model": model.description}
        if done:
            p = sum(r["probabilities"][model.class_names[-1]] for r in done) / len(done)
            k = model.class_names[-1] if p >= 0.5 else model.class_names[0]
            out["patient"] = {"label": k, "p_" + model.class_names[-1]: p, "n_images": len(done),
                              "refused": len(records) - len(done),
                              "aggregation": "mean of the images' calibrated probabilities"}
            print(f"patient ({len(done)} of {len(records)} images): {k} (mean P({model.class_names[-1]}) {p:.3f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return max(codes) if len(records) == 1 or all(codes) else 0


def register(subparsers) -> None:
    """Add ``classify`` to the ``histoseg`` subcommands."""
    p = subparsers.add_parser("classify", help="benign or malignant: classify an H&E image or region",
                              description="Calibrated probability that an H&E image (or the region "
                                          "of a mask) is malignant, from the bundled classifier.")
    p.add_argument("image", nargs="+", help="RGB H&E image(s) (PNG, JPEG, TIFF, SVS); several: the fields of one "
                                        "patient, each classified and then the patient (mean probability)")
    p.add_argument("--region", default=None, metavar="MASK", help="mask image; non-zero = the region")
    p.add_argument("--mpp", type=float_arg(*MPP_RANGE), default=None,
                   help=f"µm per pixel, {MPP_RANGE[0]:g}-{MPP_RANGE[1]:g} (default: from the file)")
    p.add_argument("--magnification", type=magnification_arg, default=None, metavar="MAG",
                   help="the field's magnification as the microscope states it (40x, 100x, 200x, 400x; "
                        "objective x 10 eyepiece), when the file has no µm per pixel; without either it is "
                        "estimated from nucleus size")
    p.add_argument("--no-estimate", action="store_true",
                   help="do not measure nuclei to estimate or cross-check the magnification")
    p.add_argument("--model", default=None, help="classification checkpoint (default: the bundled one)")
    p.add_argument("--json", default=None, metavar="OUT", help="write the answer as JSON")
    p.set_defaults(func=cmd_classify)
