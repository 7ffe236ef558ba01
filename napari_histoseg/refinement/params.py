"""The refinement's parameters: defaults, allowed ranges and one check for all of them.

Every entry point (``RefineSession``, ``refine``, ``histoseg refine``, the Refine widget)
goes through :func:`check_params`, which uses the project's one input-checking layer
(:mod:`napari_histoseg.io.checks`): a value out of range, NaN or of the wrong type gets a
message naming the parameter and its range.

Parameters of ``method="confined"`` and ``"region"``
----------------------------------------------------
confidence_weight (1; region 0.3)
    Leak ``confidence_weight * |2 p - 1| * (d / reach)^2`` per superpixel, ``d`` the sum
    of the colour steps along its shortest path from the seeds, at most ``reach``: a
    confident superpixel resists and passes little on, the more so the more colour lies
    between it and the seeds (its reach shrinks like one over the square root of the leak).
reach (12; region 24)
    Geodesic radius in units of the median colour step between neighbouring superpixels;
    each hop also costs ``hop_cost``. Superpixels beyond it from every seed keep the
    model's answer.
hop_cost (0.5)
    Cost of one hop on top of its colour step.
texture_weight (1)
    The coarse graph's superpixels also differ by their local contrast
    (:func:`~napari_histoseg.refinement.graph.texture_features`, times this weight, in
    colour units); 0 for colour alone.
hold (0)
    With a prior: a superpixel whose answer is confident stays as the model has it unless
    a seed of the other class lies within ``reach * (1 - hold * |2p - 1|)``; 1 stops a
    stroke from taking confident ground away from it (and also slows corrections of a
    confidently wrong model: see BENCHMARKS.md, Refinement).
click_extent (16)
    New seed pixels of one class that one update adds are a stroke when a connected
    piece of them is more than this many pixels high or wide, else clicks
    (:func:`~napari_histoseg.refinement.reach.stroke_flags`). Clicks reach ``reach``; a
    stroke means "these pixels and what is clearly like them" and is kept local by the
    three parameters below (:mod:`~napari_histoseg.refinement.reach`).
stroke_hold (2)
    Superpixels farther than this (same units as ``reach``) from every stroke and beyond
    ``reach`` of every click keep the model's answer and pass nothing on, so two strokes
    do not carry each other's correction across the ground between them. 0: strokes
    reach as far as clicks.
stroke_px (12)
    A pixel is given a stroke's class against the model only within this many pixels of
    a stroke of that class (or within reach of a click of it), unless the propagation
    carries the stroke there at nearly full strength (``stroke_margin``). 0: off.
stroke_margin (0.7)
    That strength: ``F >= stroke_margin`` for tumour, ``<= -stroke_margin`` for not
    tumour (seeds are +1 / -1), which holds inside a region closed by colour edges, such
    as a lumen, and not where the correction fades into tissue of a similar colour.
stroke_reach (0)
    How far (as ``reach``) a stroke counts as reaching a superpixel for the coarse label
    that places the pixel band. Measured on every bcss and camelyon test tile
    (BENCHMARKS.md, Refinement).
affinity ("colour"), feature_weight (1)
    What the superpixel graph's affinities are made of
    (:func:`~napari_histoseg.refinement.graph.affinity_channels`): ``"colour"`` the
    colour and its local contrast (as above); ``"features"`` the segmentation network's
    own features alone (``features=`` of the session, from
    :func:`~napari_histoseg.refinement.features.session_features`); ``"mixed"`` colour,
    contrast and ``feature_weight`` times the features (scaled to the colour's variance).
    The pixel grid keeps colour in every case. On every bcss and camelyon test tile, with
    and without the model's prior, the features needed more clicks than colour (bcss with the
    prior 15.9 against 15.5, camelyon 6.2 against 5.2) and strokes stayed as local
    (BENCHMARKS.md, Refinement), so colour stays the default.
zone_factor (1.5), zone_hop (1), zone_confidence (2), zone_max (6)
    ``"region"`` only (:mod:`napari_histoseg.refinement.zones`): a group of at most
    ``zone_max`` seeded superpixels of one class inside a region the model gave to the
    other class discredits the model within ``zone_factor`` times its geodesic distance
    to that region's border; a hop there costs its colour step plus ``zone_hop`` plus
    ``zone_confidence`` times the confidence.
"""

from __future__ import annotations

import warnings

from napari_histoseg.io.checks import InputError, check_float, check_int

__all__ = ["METHODS", "AFFINITIES", "DEFAULTS", "PRESETS", "RANGES", "RENAMED", "check_params", "resolve"]

#: Old (American) names still taken, with a DeprecationWarning.
RENAMED = {"sigma_color": "sigma_colour", "color_sensitivity": "colour_sensitivity", "color_space": "colour_space"}

#: ``confined``: a seed's reach bounded by colour and the model's confidence (the
#: default); ``region``: confined, plus the prior discredited in the zone of a correcting
#: seed (:mod:`napari_histoseg.refinement.zones`); ``lgc``: the plain propagation.
METHODS = ("confined", "region", "lgc")

#: What the superpixel graph's affinities are made of (see ``affinity`` above).
AFFINITIES = ("colour", "features", "mixed")

DEFAULTS = dict(prior_weight=0.5, sigma_colour=None, colour_sensitivity=1.0, alpha=0.999,
                alpha_fine=0.9999, superpixel_size=16, colour_space="lab", no_prior_bias=0.05,
                change_tol=1e-2, tol=1e-3, compactness=10.0, method="confined",
                confidence_weight=1.0, reach=12.0, hop_cost=0.5, texture_weight=1.0,
                zone_factor=1.5, zone_hop=1.0, zone_confidence=2.0, zone_max=6, hold=0.0,
                stroke_reach=0.0, click_extent=16, stroke_px=12.0,
                stroke_margin=0.7, stroke_hold=2.0, affinity="colour", feature_weight=1.0)

#: What a method changes in DEFAULTS unless given: ``region`` lets a seed reach twice as
#: far with a third of the confidence leak (its zones, not the leak, keep a click local).
#: On every bcss test tile with model 0.2.0 as prior: NoC@90 14.0 against confined's 15.5
#: (lgc 13.4); its strokes are confined's on bcss, on one camelyon tile a stroke cost 0.052.
PRESETS = {"region": dict(confidence_weight=0.3, reach=24.0)}

# name: (lo, hi, lo_open, hi_open); superpixel_size is an integer
RANGES = dict(prior_weight=(0, 100, False, False), sigma_colour=(0, None, True, False),
              colour_sensitivity=(0, None, True, False), alpha=(0, 1, False, True),
              alpha_fine=(0, 1, False, True), superpixel_size=(2, 512, False, False),
              no_prior_bias=(0, 1, False, False), change_tol=(0, 1, True, False), tol=(0, 1, True, True),
              compactness=(0, None, True, False), confidence_weight=(0, 100, False, False),
              reach=(0, None, True, False), hop_cost=(0, 100, False, False),
              texture_weight=(0, 100, False, False), zone_factor=(0, 100, True, False),
              zone_hop=(0, 100, False, False), zone_confidence=(0, 100, False, False),
              zone_max=(0, 10 ** 6, False, False), hold=(0, 1, False, False),
              stroke_reach=(0, None, False, False), click_extent=(1, 10 ** 6, False, False),
              stroke_px=(0, 10 ** 4, False, False), stroke_margin=(0, 1, False, False),
              stroke_hold=(0, None, False, False), feature_weight=(0, 100, False, False))


def check_params(params: dict, known=DEFAULTS) -> dict:
    """``params`` checked and converted (numbers to float, ``superpixel_size`` to int).

    Raises ``TypeError`` for an unknown name and
    :class:`~napari_histoseg.io.checks.InputError` (a ``ValueError``) for a bad value.

    >>> check_params({"alpha": 0.99, "superpixel_size": 12.0})
    {'alpha': 0.99, 'superpixel_size': 12}
    >>> check_params({"alpha": 1.0})
    Traceback (most recent call last):
    ...
    napari_histoseg.io.checks.InputError: alpha must be a number ≥ 0 and < 1; got 1
    """
    from napari_histoseg.refinement.graph import COLOUR_SPACES

    old = [k for k in params if k in RENAMED]
    if old:
        warnings.warn(f"refinement parameter(s) {', '.join(old)} are now spelt "
                      f"{', '.join(RENAMED[k] for k in old)}; the old names will go", DeprecationWarning,
                      stacklevel=3)
        params = {RENAMED.get(k, k): v for k, v in params.items()}
    unknown = set(params) - set(known)
    if unknown:
        raise TypeError(f"unknown refinement parameter(s): {', '.join(sorted(unknown))}; "
                        f"known: {', '.join(known)}")
    out = {}
    for k, v in params.items():
        if k == "method":
            if v not in METHODS:
                raise InputError(f"method must be one of {', '.join(METHODS)}; got {v!r}")
        elif k == "affinity":
            if v not in AFFINITIES:
                raise InputError(f"affinity must be one of {', '.join(AFFINITIES)}; got {v!r}")
        elif k == "colour_space":
            if v not in COLOUR_SPACES:
                raise InputError(f"colour_space must be one of {', '.join(COLOUR_SPACES)}; got {v!r}")
        elif k == "sigma_colour" and v is None:
            pass
        elif k in ("superpixel_size", "zone_max", "click_extent"):
            lo, hi, _, _ = RANGES[k]
            v = check_int(v, k, lo=lo, hi=hi)
        else:
            lo, hi, lo_open, hi_open = RANGES[k]
            v = check_float(v, k, lo=lo, hi=hi, lo_open=lo_open, hi_open=hi_open)
        out[k] = v
    return out


def resolve(params: dict) -> dict:
    """Every parameter: ``params`` checked, over the method's presets, over DEFAULTS."""
    given = check_params(params)
    return {**DEFAULTS, **PRESETS.get(given.get("method", DEFAULTS["method"]), {}), **given}
