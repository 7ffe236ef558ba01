"""Nucleus detection speed and the tiling check, model and classical baseline side by side.

    python benchmarks/bench_nuclei.py [--model NUCLEI.safetensors] [--image ID] [--threads 1 2]
                                      [--batch 1 4] [--device cuda --half]

On one MoNuSeg test tile (a whole 1000 x 1000 px field at ~0.25 µm/px, ``../shared/data/monuseg``):

* nuclei per second and megapixels per second of the Mask R-CNN (tiled, as
  ``detect_nuclei`` runs it) for every number of torch threads and of tiles per detector
  call (``--batch``), and of the classical watershed baseline, and their ratio;
* ``--device cuda`` (with ``--half``: float16 autocast) times the same on a GPU, where one is;
* the tiled result against whole-image inference (one pass over the padded image) on the
  same image: how many nuclei each finds, how many are the same nucleus (matched at
  IoU > 0.5) and their mean IoU, and that no nucleus is counted twice (no two tiled
  labels match one whole-image nucleus; PQ's false positives stay few).

* ``--stages``: where the time goes, per stage (backbone, RPN, box head with its NMS, mask
  head, pasting into the label image), tiled as ``detect_nuclei`` tiles, with the mask head
  run on every box above the network's own 0.05 floor (as before) and on the boxes at the
  kept score only (as now), and whether the labels are the same.

Timings are the best of ``--repeat`` runs; the load average is printed beside them,
because other jobs may share the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "monuseg"


def best_of(fn, repeat):
    out, best = None, float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


STAGES = ("backbone", "rpn", "box head", "mask head", "paste")


def stage_times(module, rgb, score_threshold, floor, tile=640, overlap=128, in_core=False):
    """Seconds per stage of tiled detection with boxes below ``floor`` (and with ``in_core``
    those not reaching into the tile's core) dropped before the mask head;
    ``(times, labels, boxes into the mask head)``."""
    from torchvision.models.detection.roi_heads import maskrcnn_inference

    from napari_histoseg.core.windows import tile_starts
    from napari_histoseg.models.detector import reaching
    from napari_histoseg.nuclei.infer import _cores, paste

    H, W = rgb.shape[:2]
    ys, xs = tile_starts(H, tile, tile - overlap), tile_starts(W, tile, tile - overlap)
    cy, cx = _cores(ys, tile, H), _cores(xs, tile, W)
    heads, own = module.eval().roi_heads, module.roi_heads.score_thresh
    times, labels, next_id, n_boxes = dict.fromkeys(STAGES, 0.0), np.zeros((H, W), np.int32), 1, 0
    heads.score_thresh = max(own, floor)
    try:
        with torch.no_grad():
            for i in range(len(ys)):
                for j in range(len(xs)):
                    x = torch.from_numpy(rgb[ys[i]:ys[i] + tile, xs[j]:xs[j] + tile]).permute(2, 0, 1).float() / 255
                    t = [time.perf_counter()]
                    images, _ = module.transform([x])
                    feats = module.backbone(images.tensors)
                    t.append(time.perf_counter())
                    props, _ = module.rpn(images, feats)
                    t.append(time.perf_counter())
                    cls, reg = heads.box_predictor(heads.box_head(heads.box_roi_pool(feats, props, images.image_sizes)))
                    boxes, scores, labs = heads.postprocess_detections(cls, reg, props, images.image_sizes)
                    if in_core:
                        k = reaching(boxes[0], (cy[i][0] - ys[i], cy[i][1] - ys[i], cx[j][0] - xs[j], cx[j][1] - xs[j]))
                        boxes, scores, labs = [boxes[0][k]], [scores[0][k]], [labs[0][k]]
                    t.append(time.perf_counter())
                    logits = heads.mask_predictor(heads.mask_head(heads.mask_roi_pool(feats, boxes, images.image_sizes)))
                    masks = maskrcnn_inference(logits, labs)[0][:, 0]
                    t.append(time.perf_counter())
                    n_boxes += len(boxes[0])
                    next_id, _ = paste(labels, {"boxes": boxes[0], "scores": scores[0], "masks": masks},
                                       (ys[i], xs[j]), (*cy[i], *cx[j]), next_id, score_threshold)
                    t.append(time.perf_counter())
                    for k, name in enumerate(STAGES):
                        times[name] += t[k + 1] - t[k]
    finally:
        heads.score_thresh = own
    return times, labels, n_boxes


def print_stages(module, rgb, score_threshold):
    """The stage table: the mask head on every box above 0.05 (before), on the boxes at the
    kept score, and on those of them that reach into their tile's core (as detect_nuclei runs)."""
    out = {}
    for what, floor, core in (("every box >= 0.05", 0.0, False), (f"boxes >= {score_threshold:g}", score_threshold, False),
                              ("those in the core", score_threshold, True)):
        times, labels, n = stage_times(module, rgb, score_threshold, floor, in_core=core)
        total = sum(times.values())
        out[what] = {"seconds": times, "boxes": n, "nuclei": int(labels.max()), "labels": labels}
        print(f"mask head on {what:<18} {n:5d} boxes, {int(labels.max())} nuclei, {total:6.2f} s: "
              + ", ".join(f"{k} {v:.2f} s ({100 * v / total:.0f} %)" for k, v in times.items()))
    a, *rest = (v["labels"] for v in out.values())
    print(f"the same labels every way: {all(bool((a == b).all()) for b in rest)}")
    return {k: {kk: vv for kk, vv in v.items() if kk != "labels"} for k, v in out.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=None, help="nucleus checkpoint (default: the bundled model)")
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--image", default=None, help="tile id (default: the first breast test tile)")
    p.add_argument("--threads", type=int, nargs="+", default=[1], help="torch threads to time (default 1)")
    p.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="tiles per detector call to time")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--half", action="store_true", help="float16 autocast (cuda only)")
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--stages", action="store_true", help="time every stage (first --threads value)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    if not Path(args.data, "dataset.json").is_file():
        print(f"skipped: {args.data} is absent")
        return 0
    torch.set_num_threads(args.threads[0])
    from napari_histoseg.nuclei.baseline import classical_labels
    from napari_histoseg.nuclei.data import load_instances
    from napari_histoseg.nuclei.infer import detect_nuclei, load_nuclei_detector
    from napari_histoseg.nuclei.metrics import match, overlaps, score

    tiles = load_instances(args.data, "test")
    tile = next((t for t in tiles if t.id == args.image), None) or next(
        (t for t in tiles if t.organ == "breast"), tiles[0])
    if args.device != "cpu" and not torch.cuda.is_available():
        print(f"skipped: no {args.device} device here")
        return 0
    from napari_histoseg.models.detector import NucleusDetector

    det = load_nuclei_detector(args.model)
    if args.device != "cpu" or args.half:
        det = NucleusDetector(det.module, det.meta, device=args.device, half=args.half, source=det.source)
    net, meta = det.module, det.meta
    mp = tile.image.shape[0] * tile.image.shape[1] / 1e6
    load_before = os.getloadavg()[0]
    print(f"image {tile.id} ({tile.organ}), {tile.image.shape[1]} x {tile.image.shape[0]} px, "
          f"mpp {tile.mpp}; model {meta.name} v{meta.model_version} ({meta.arch}) on {det.device}"
          f"{' float16' if det.half else ''}; load average before {load_before:.2f}")

    stages = None
    if args.stages:
        thr = float((meta.preprocessing or {}).get("score_threshold", 0.5))
        print(f"\nwhere the time goes ({args.threads[0]} thread{'s' * (args.threads[0] > 1)}, score >= {thr:g} kept):")
        stages = print_stages(net, tile.image, thr)
        print()
    rows, tiled, t_model = [], None, None
    for threads in args.threads:
        torch.set_num_threads(threads)
        for b in args.batch:
            (lab, _), t = best_of(lambda b=b: detect_nuclei(tile.image, det, features=False, batch=b), args.repeat)
            rows.append((f"Mask R-CNN tiled, {threads} thr, batch {b}", int(lab.max()), t))
            if tiled is None or t < t_model:
                tiled, t_model = lab, t
    torch.set_num_threads(args.threads[0])
    side = int(np.ceil(max(tile.image.shape[:2]) / 32) * 32)
    keep = (net.roi_heads.detections_per_img, dict(net.rpn._pre_nms_top_n), dict(net.rpn._post_nms_top_n))
    # the whole image holds ~700 nuclei: give it the proposals and detections of ~3 tiles
    net.roi_heads.detections_per_img = 3000
    net.rpn._pre_nms_top_n["testing"] = net.rpn._post_nms_top_n["testing"] = 3000
    (whole, _), t_whole = best_of(lambda: detect_nuclei(tile.image, det, tile=side, overlap=0,
                                                        features=False), args.repeat)
    net.roi_heads.detections_per_img, net.rpn._pre_nms_top_n, net.rpn._post_nms_top_n = keep
    base, t_base = best_of(lambda: classical_labels(tile.image, tile.mpp or 0.25), args.repeat)
    load_after = os.getloadavg()[0]

    n_model, n_whole, n_base = int(tiled.max()), int(whole.max()), int(base.max())
    rows += [(f"Mask R-CNN, whole image, {args.threads[0]} thr", n_whole, t_whole),
             ("classical watershed", n_base, t_base)]
    print(f"\n{'method':<40}{'nuclei':>8}{'seconds':>9}{'nuclei/s':>10}{'MP/s':>8}")
    for name, n, t in rows:
        print(f"{name:<40}{n:>8}{t:>9.2f}{n / t:>10.1f}{mp / t:>8.3f}")
    print(f"fastest model run / baseline time: {t_model / t_base:.1f}x")

    m = match(whole, tiled, 0.5)
    # counted once: no whole-image nucleus overlapped by two or more tiled nuclei at IoU > 0.5
    # (impossible by construction of the matching), and few unmatched tiled nuclei
    print(f"\ntiled vs whole image: {n_model} vs {n_whole} nuclei, {m['tp']} the same nucleus "
          f"(IoU > 0.5), mean IoU of those {float(np.mean(m['ious'])):.3f}; {m['fp']} only tiled, "
          f"{m['fn']} only whole")
    # a nucleus counted twice by the tiling would be a whole-image nucleus covered in good
    # part (>= 20 % of it each) by two or more tiled labels
    aw, _, wi, _, inter = overlaps(whole, tiled)
    big = inter >= 0.2 * aw[wi]
    split = int((np.bincount(wi[big], minlength=len(aw)) >= 2).sum())
    print(f"whole-image nuclei split between two or more tiled labels (>= 20 % each): {split}")
    st, sw = score(tile.labels, tiled), score(tile.labels, whole)
    print(f"against the truth: tiled AJI {st['aji']:.3f} PQ {st['pq']:.3f}; whole AJI {sw['aji']:.3f} "
          f"PQ {sw['pq']:.3f}")
    print(f"load average after {load_after:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "image": tile.id, "megapixels": mp, "threads": args.threads,
            "rows": [{"method": a, "nuclei": b, "seconds": c} for a, b, c in rows],
            "tiled_vs_whole": {"split": split, "tp": m["tp"], "fp": m["fp"], "fn": m["fn"],
                               "mean_iou": float(np.mean(m["ious"]))},
            "truth": {"tiled": st, "whole": sw}, "stages": stages,
            "load_average": [load_before, load_after]}, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
