"""The simulated annotator of DESIGN.md over the real test splits in ../shared/data.

For every test tile of camelyon and bcss (``--limit`` per set): the robot clicks on the
largest error, this project's refinement (a warm RefineSession, one update per click) and
skimage's random_walker (mode cg_mg, seeds only: it cannot use a prior) answer, and Dice
is recorded after 0..20 clicks. Two arms: without a prior, and with the model's
probability as prior (the bundled model, or ``--model``). Prints mean Dice after 0, 1, 2,
3, 5, 10, 20 clicks and NoC@90 per set, arm and method.

    python benchmarks/robot_user.py                      # default: 3 tiles per set (< 10 min)
    python benchmarks/robot_user.py --limit 0 --no-rw    # every test tile, ours only
    python benchmarks/robot_user.py --strokes 10         # the stroke annotator (medial axis, 5 px)
    python benchmarks/robot_user.py --postprocess        # coarse vs coarse + LP (paper, a)
    python benchmarks/robot_user.py --colour-spaces      # which colour separates tumour edges
    python benchmarks/robot_user.py --methods confined confined:mixed --feature-cache /tmp/f
                                                         # the network's features in the affinities
    python benchmarks/robot_user.py --split val          # the model's validation tiles (for tuning)

Needs ../shared/data (skips with a message where it is absent).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"
AT = (0, 1, 2, 3, 5, 10, 20)
AT_STROKES = (0, 1, 2, 3, 5, 10)


def val_ids(name: str) -> set:
    """The tiles of ``name`` the bundled model held out for validation (its metadata)."""
    meta = json.loads((REPO / "napari_histoseg" / "weights" / "default.json").read_text())
    return {i for d in meta["training"]["data"] if d["name"] == name for i in d.get("val_ids", ())}


def tiles(name: str, split: str = "test", limit: int = 0):
    from skimage.io import imread

    root = SHARED / name
    meta = json.loads((root / "dataset.json").read_text())
    held = val_ids(name) if split == "val" else set()
    chosen = [t for t in meta["tiles"] if split == "all" or t.get("split") == split or t["id"] in held]
    if limit:
        step = max(1, len(chosen) // limit)  # spread over the set, deterministic
        chosen = chosen[::step][:limit]
    for t in chosen:
        yield t["id"], imread(root / t["image"])[..., :3], imread(root / t["mask"])


def load_prior_fn(model_path, cache=None):
    """``fn(image, set_name, tile_id) -> probability``; reads/writes ``cache/SET-ID.npy``."""
    if cache:
        Path(cache).mkdir(parents=True, exist_ok=True)
    model = []

    def fn(img, name, tid):
        path = Path(cache) / f"{name}-{tid}.npy" if cache else None
        if path is not None and path.exists():
            return np.load(path)
        if not model:
            model.append(_load_model(model_path))
        from napari_histoseg import segment

        p = segment(img, model[0]).astype(np.float32)
        if path is not None:
            np.save(path, p)
        return p

    try:
        if not cache or not any(Path(cache).glob("*.npy")):
            model.append(_load_model(model_path))
    except Exception as e:  # no bundled model yet
        print(f"# no model ({e}); the prior arm is skipped")
        return None
    print(f"# prior: model {model_path or 'bundled'}" + (f", cached in {cache}" if cache else ""))
    return fn


def _load_model(model_path):
    from napari_histoseg import load_model

    return load_model(model_path, device="cpu")


def load_features_fn(model_path, cache=None, channels: int = 4):
    """``fn(image, set_name, tile_id) -> features`` for ``RefineSession(features=)``: the
    model's decoder output (cached raw in ``cache/SET-ID.npy``, float16) reduced to
    ``channels`` principal components scaled to the image's Lab variance."""
    from napari_histoseg.refinement.features import model_features, reduce_features
    from napari_histoseg.refinement.graph import colour_features

    model = []

    def fn(img, name, tid):
        path = Path(cache) / f"{name}-{tid}.npy" if cache else None
        if path is not None and path.exists():
            raw = np.load(path).astype(np.float32)
        else:
            if not model:
                from napari_histoseg import load_model

                model.append(load_model(model_path, device="cpu", engine="torch"))
            raw = model_features(img, model[0])
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, raw.astype(np.float16))
        return reduce_features(raw, channels, scale_to=colour_features(img, "lab"))

    return fn


def parse_method(spec: str) -> dict:
    """``confined``, ``region:mixed`` ... -> the session's ``method`` (and ``affinity``)."""
    method, _, affinity = spec.partition(":")
    return {"method": method, **({"affinity": affinity} if affinity else {})}


def parse_params(items):
    out = {}
    for kv in items or ():
        k, v = kv.split("=", 1)
        text = ("colour_space", "color_space", "method", "affinity")
        out[k] = None if v == "None" else (v if k in text else float(v))
    return out


def run_robot(args):
    from napari_histoseg.refinement.robot import (
        noc,
        random_walker_refiner,
        session_refiner,
        simulate_clicks,
        simulate_strokes,
        worst_drop,
    )

    params = parse_params(args.param)
    prior_fn = None if args.no_prior_arm else load_prior_fn(args.model, args.prior_cache)
    arms = [a for a in args.arms if a == "none" or prior_fn]
    gesture = None if args.infer_gesture else ("stroke" if args.strokes else "click")
    wanted = [m for m in args.methods if m != "random_walker"]
    needs = any(parse_method(m).get("affinity", params.get("affinity", "colour")) != "colour" for m in wanted)
    feat_fn = load_features_fn(args.model, args.feature_cache, args.feature_channels) if needs else None
    current = {}  # the tile's features, read once per tile
    methods = {f"LP {m}": (lambda m=m: session_refiner(gesture, features=current.get("features"),
                                                       **{**params, **parse_method(m)})) for m in wanted}
    if not args.no_rw or "random_walker" in args.methods:
        methods["random_walker"] = lambda: random_walker_refiner()
    steps = args.strokes or args.clicks
    unit = "strokes" if args.strokes else "clicks"
    at = [k for k in (AT_STROKES if args.strokes else AT) if k <= steps]
    print(f"# params {params or 'defaults'}; {steps} {unit}; limit {args.limit or 'all'} per set; "
          f"gesture {gesture or 'from the seeds shape'}")
    for name in args.sets:
        if not (SHARED / name).exists():
            print(f"# {SHARED / name} is absent: skipped")
            continue
        res = {(a, m): [] for a in arms for m in methods}
        times = {m: [] for m in methods}
        feat_s = []
        has_tumour = []
        for tid, img, truth in tiles(name, args.split, args.limit):
            prior = prior_fn(img, name, tid) if prior_fn else None
            if feat_fn is not None:
                t0 = time.perf_counter()
                current["features"] = feat_fn(img, name, tid)
                feat_s.append(time.perf_counter() - t0)
            has_tumour.append(bool((truth == 1).any()))
            for arm in arms:
                for m, make in methods.items():
                    if m == "random_walker" and arm != "none":
                        continue  # seeds only: the same as the no-prior arm
                    fn = make()
                    t0 = time.perf_counter()
                    pr = prior if arm == "model" else None
                    if args.strokes:
                        d = simulate_strokes(img, truth, fn, prior=pr, max_strokes=steps)
                    else:
                        d = simulate_clicks(img, truth, fn, prior=pr, max_clicks=steps)
                    times[m].append((time.perf_counter() - t0) / steps)
                    res[(arm, m)].append(d)
                    if args.verbose:
                        print(f"#   {tid} {arm} {m}: " + " ".join(f"{x:.3f}" for x in d))
        n = len(next(iter(res.values())))
        print(f"\n## {name} {args.split} split, {n} tiles (512 x 512), {unit}")
        extra = " worst single drop | tiles with a drop > 0.02 |" if args.strokes else ""
        print("| prior | method | " + " | ".join(f"Dice@{k}" for k in at) + f" | {unit[:-1]}s to 0.90 |" + extra)
        print("|---|---|" + "---|" * (len(at) + 1 + (2 if args.strokes else 0)))
        keep = np.array(has_tumour)
        rows = [(f"{arm}", m, ds) for (arm, m), ds in res.items() if ds]
        if not keep.all() and keep.any():  # Dice on a tumour-free tile is 0 or 1: show the rest alone too
            rows += [(f"{arm}, {keep.sum()} tiles with tumour", m, [d for d, k in zip(ds, keep) if k])
                     for (arm, m), ds in res.items() if ds]
        for arm, m, ds in rows:
            a = np.array(ds)
            cells = " | ".join(f"{a[:, k].mean():.3f}" for k in at)
            nocs = np.mean([noc(d, 0.9) for d in ds])
            row = f"| {arm} | {m} | {cells} | {nocs:.1f} |"
            if args.strokes:
                drops = np.array([worst_drop(d) for d in ds])
                row += f" {drops.max():.3f} | {(drops > 0.02).sum()}/{len(ds)} |"
            print(row)
        for m, t in times.items():
            print(f"# {name}: {m}: mean {np.mean(t) * 1000:.0f} ms per {unit[:-1]} (incl. session setup)")
        if feat_s:
            print(f"# {name}: the network's features: mean {np.mean(feat_s):.2f} s per tile "
                  f"({'read from ' + args.feature_cache + ' and ' if args.feature_cache else ''}reduced)")


def run_postprocess(args):
    from napari_histoseg.core.scores import boundary_f, dice
    from napari_histoseg.refinement import RefineSession

    prior_fn = load_prior_fn(args.model, args.prior_cache)
    if prior_fn is None:
        return
    params = parse_params(args.param)
    alpha = params.pop("postprocess_alpha", 0.9)
    for name in args.sets:
        rows = []
        for tid, img, truth in tiles(name, "test", args.limit):
            p = prior_fn(img, name, tid)
            coarse = (p >= 0.5).astype(np.uint8)
            lp = RefineSession(img, p, **params).postprocess(alpha=alpha)
            rows.append((dice(coarse, truth), dice(lp, truth), boundary_f(coarse, truth), boundary_f(lp, truth)))
        a = np.array(rows)
        print(f"## {name} test split, {len(rows)} tiles: coarse vs coarse + LP (alpha {alpha})")
        print(f"Dice {a[:, 0].mean():.4f} -> {a[:, 1].mean():.4f} ({100 * (a[:, 1].mean() / a[:, 0].mean() - 1):+.2f} %); "
              f"boundary F (5 px) {a[:, 2].mean():.4f} -> {a[:, 3].mean():.4f} "
              f"({100 * (a[:, 3].mean() / a[:, 2].mean() - 1):+.2f} %); "
              f"tiles improved (Dice) {(a[:, 1] > a[:, 0]).sum()}/{len(rows)}")


def run_colour_spaces(args):
    """AUC of neighbouring-superpixel colour distance: tumour|other pairs vs same-class pairs."""
    from scipy.stats import rankdata

    from napari_histoseg.colour.stain import deconvolve, optical_density
    from napari_histoseg.refinement.graph import _lab, regional_colour, superpixels

    def auc(y, d):
        r = rankdata(d)
        n1 = y.sum()
        return (r[y].sum() - n1 * (n1 + 1) / 2) / (n1 * (len(y) - n1))

    spaces = {"lab": _lab, "rgb": lambda im: im.astype(np.float32), "od": optical_density,
              "hed": lambda im: deconvolve(im)[..., :2]}
    for name in args.sets:
        res = {}
        for _tid, img, truth in tiles(name, "test" if args.limit else "all", args.limit):
            sp = superpixels(_lab(img), 16)
            n, fl = sp.max() + 1, sp.ravel()
            cnt = np.bincount(fl, minlength=n)
            a = np.concatenate([sp[:, :-1].ravel(), sp[:-1].ravel()])
            b = np.concatenate([sp[:, 1:].ravel(), sp[1:].ravel()])
            k = a != b
            e = np.unique(np.stack([np.minimum(a[k], b[k]), np.maximum(a[k], b[k])], 1), axis=0)
            frac = np.bincount(fl, truth.ravel() == 1, minlength=n) / cnt
            pure = (frac < 0.2) | (frac > 0.8)
            e = e[pure[e[:, 0]] & pure[e[:, 1]]]
            y = (frac[e[:, 0]] > 0.5) != (frac[e[:, 1]] > 0.5)
            if y.sum() < 10:
                continue
            yy, xx = np.divmod(np.arange(fl.size), sp.shape[1])
            cy = (np.bincount(fl, yy, minlength=n) / cnt)
            cx = (np.bincount(fl, xx, minlength=n) / cnt)
            for sname, f in spaces.items():
                feat = f(img).astype(np.float32)
                ff = feat.reshape(-1, feat.shape[-1])
                mu = np.stack([np.bincount(fl, ff[:, c], minlength=n) for c in range(ff.shape[1])], 1) / cnt[:, None]
                dm = ((mu[e[:, 0]] - mu[e[:, 1]]) ** 2).sum(1)
                sm, kf = regional_colour(feat, 16)
                mu = sm[np.clip((cy / kf).astype(int), 0, sm.shape[0] - 1), np.clip((cx / kf).astype(int), 0, sm.shape[1] - 1)]
                dr = ((mu[e[:, 0]] - mu[e[:, 1]]) ** 2).sum(1)
                for kind, d in (("superpixel mean", dm), ("regional (sigma 16 px)", dr),
                                ("smaller of the two (used)", np.minimum(dm, dr))):
                    res.setdefault((sname, kind), []).append(auc(y, d))
        print(f"## {name}: AUC of the colour distance of neighbouring superpixels, tumour|other against "
              f"same-class pairs (superpixels >= 80 % one class), "
              f"{len(next(iter(res.values())))} tiles")
        for (sname, kind), v in res.items():
            print(f"{sname:4s} {kind:26s} {np.mean(v):.3f}")


def main(argv=None):
    from napari_histoseg.io.checks import int_arg

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sets", nargs="+", default=["camelyon", "bcss"])
    ap.add_argument("--limit", type=int, default=3, help="tiles per set (0 = all test tiles)")
    ap.add_argument("--clicks", type=int, default=20)
    ap.add_argument("--strokes", type=int, default=0,
                    help="the stroke annotator with this many strokes (5 px wide, medial axis) instead of clicks")
    ap.add_argument("--methods", nargs="+", default=["confined", "lgc"],
                    help="RefineSession methods to compare (confined: the default; lgc: the plain propagation); "
                         "METHOD:AFFINITY for another affinity (confined:mixed, region:features); "
                         "random_walker for skimage's alone")
    ap.add_argument("--split", choices=["test", "val"], default="test",
                    help="test tiles, or the bundled model's validation tiles (tune there, never on test)")
    ap.add_argument("--feature-cache", help="folder for the model's raw decoder features (SET-ID.npy), reused")
    ap.add_argument("--feature-channels", type=int_arg(lo=1, hi=64), default=4,
                    help="principal components of the features kept (default 4)")
    ap.add_argument("-v", "--verbose", action="store_true", help="print every tile's Dice curve")
    ap.add_argument("--infer-gesture", action="store_true",
                    help="let the session tell strokes from clicks by their shape (default: the annotator says)")
    ap.add_argument("--model", default=None, help="checkpoint for the prior (default: bundled)")
    ap.add_argument("--prior-cache", help="folder for the model's probabilities (SET-ID.npy), reused")
    ap.add_argument("--no-rw", action="store_true", help="skip random_walker")
    ap.add_argument("--no-prior-arm", action="store_true")
    ap.add_argument("--arms", nargs="+", choices=["none", "model"], default=["none", "model"],
                    help="without a prior (none), with the model's (model), or both (default)")
    ap.add_argument("--param", action="append", help="refinement parameter key=value (repeatable)")
    ap.add_argument("--postprocess", action="store_true", help="coarse vs coarse + LP post-processing")
    ap.add_argument("--colour-spaces", action="store_true", help="colour-space separability table")
    args = ap.parse_args(argv)
    if not SHARED.exists():
        print(f"{SHARED} is absent: nothing to measure")
        return 0
    if args.colour_spaces:
        run_colour_spaces(args)
    elif args.postprocess:
        run_postprocess(args)
    else:
        run_robot(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
