"""``histoseg refine IMAGE --seeds SEEDS.png [--prior PROB.tif] [--affinity mixed] -o OUT.png``.

Seeds: 0 no seed, 1 tumour, 2 not tumour (PNG or TIFF of the image's size). The prior is
the model's float32 tumour probability (``histoseg segment --prob``). ``--affinity features``
or ``mixed`` runs the segmentation model (``--model``, default the bundled one) once for its
features (:mod:`napari_histoseg.refinement.features`). Writes 0/1 uint8.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

__all__ = ["register", "cmd_refine"]


def _read_plain(path: str, what: str) -> np.ndarray:
    """Seeds or prior as stored; the header checked against the pixel budget before decoding."""
    from napari_histoseg.io.bounded import read_plane

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"No such file: '{p}'")
    return read_plane(p, what)


def cmd_refine(args) -> int:
    import time

    from napari_histoseg.io import open_image
    from napari_histoseg.refinement import RefineSession
    from napari_histoseg.refinement.seeds import check_seeds

    with open_image(args.image) as slide:
        image = np.asarray(slide.levels[0])
    seeds = _read_plain(args.seeds, "the seeds")
    if seeds.ndim == 3:  # an RGB(A) PNG of a label layer: take the first channel
        seeds = seeds[..., 0]
    seeds = check_seeds(seeds, image.shape[:2])
    prior = _read_plain(args.prior, "the prior").astype(np.float32) if args.prior else None
    params = {k: v for k, v in (("prior_weight", args.prior_weight), ("sigma_colour", args.sigma_colour),
                                ("colour_sensitivity", args.colour_sensitivity), ("alpha", args.alpha),
                                ("method", args.method), ("affinity", args.affinity),
                                ("feature_weight", args.feature_weight))
              if v is not None}
    t0 = time.perf_counter()
    features = None
    if args.affinity not in (None, "colour"):
        from napari_histoseg.models.segmenter import choose_engine, load_segmenter
        from napari_histoseg.refinement.features import session_features

        model = load_segmenter(args.model, device="auto", engine=choose_engine("auto")[0])
        features = session_features(image, model)
    labels = RefineSession(image, prior, features=features, **params).update(seeds)
    dt = time.perf_counter() - t0
    from napari_histoseg.io.masks import write_mask

    out = Path(args.output)
    write_mask(out, labels)
    print(f"{out}: {labels.shape[1]} x {labels.shape[0]} px, {100.0 * labels.mean():.1f} % tumour "
          f"({int((seeds == 1).sum())} tumour and {int((seeds == 2).sum())} not-tumour seed pixels, "
          f"{'with' if prior is not None else 'without'} prior, {dt:.1f} s)")
    return 0


def register(subparsers) -> None:
    """Add the ``refine`` command to the ``histoseg`` sub-command parsers."""
    from napari_histoseg.io.checks import float_arg
    from napari_histoseg.refinement.params import AFFINITIES, DEFAULTS, METHODS, RANGES

    def arg(name):  # the parameter's own range (params.RANGES), checked by io.checks
        lo, hi, lo_open, hi_open = RANGES[name]
        return float_arg(lo, hi, lo_open=lo_open, hi_open=hi_open)

    p = subparsers.add_parser("refine", help="redraw a tumour mask from seeds (label propagation)")
    p.add_argument("image", help="PNG, JPEG, TIFF, OME-TIFF or SVS (level 0 is used)")
    p.add_argument("--seeds", required=True, help="seed labels (.png/.tif): 0 none, 1 tumour, 2 not tumour")
    p.add_argument("--prior", help="the model's tumour probability, float32 .tif (histoseg segment --prob)")
    p.add_argument("-o", "--output", required=True, help="mask to write (.png or .tif): 0 not tumour, 1 tumour")
    d = DEFAULTS
    p.add_argument("--prior-weight", type=arg("prior_weight"), default=None,
                   help=f"weight of the prior against the seeds' +1/-1 (default {d['prior_weight']})")
    p.add_argument("--sigma-colour", "--sigma-color", dest="sigma_colour", type=arg("sigma_colour"), default=None,
                   help="colour sigma in Lab units (default: from the image)")
    p.add_argument("--colour-sensitivity", "--color-sensitivity", dest="colour_sensitivity",
                   type=arg("colour_sensitivity"), default=None,
                   help=f"divides the automatic colour sigma (default {d['colour_sensitivity']})")
    p.add_argument("--alpha", type=arg("alpha"), default=None,
                   help=f"propagation weight on the superpixel graph (default {d['alpha']})")
    p.add_argument("--method", choices=METHODS, default=None,
                   help=f"confined: a seed's reach follows colour and the model's confidence; region: confined, "
                        f"and a correcting seed overrides the model in its region around it; lgc: the plain "
                        f"propagation (default {d['method']})")
    p.add_argument("--affinity", choices=AFFINITIES, default=None,
                   help="what tells neighbouring regions apart: colour (and its contrast), the segmentation "
                        "model's features, or both mixed (one pass of --model; on the bcss and camelyon test "
                        f"tiles more clicks than colour, see BENCHMARKS.md) (default {d['affinity']})")
    p.add_argument("--feature-weight", type=arg("feature_weight"), default=None,
                   help=f"weight of the model's features against colour with --affinity mixed "
                        f"(default {d['feature_weight']})")
    p.add_argument("--model", default=None,
                   help="checkpoint whose features --affinity features/mixed uses (default: bundled)")
    p.set_defaults(func=cmd_refine)
