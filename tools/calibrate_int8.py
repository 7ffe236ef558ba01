"""Measure the int8 activation ranges of a tumour checkpoint on its training tiles, and ship them.

    python tools/calibrate_int8.py [--model napari_histoseg/weights/default.safetensors] [--tiles 16]
                                   [--int8-from-stage 8 | --int8-all]

Writes NAME.int8.json beside the checkpoint: the min and max of every float tensor of the ONNX
graph over 256 px crops of the training split of ../shared/data/camelyon and ../shared/data/bcss
(never test tiles), with the weights' hash, so ``engine="onnx-int8"`` quantises with ranges from
the data the model learnt from instead of the bundled sample images. Rerun it whenever the
checkpoint is retrained (a stale file is ignored: its hash no longer matches).

It also names the part of the graph the int8 engine quantises (``int8_nodes``): by default the
decoder and the encoder from stage 8 on (MobileNetV2's ``features.8``-``features.18``), which
hold most of the arithmetic; the first stages stay fp32, because quantising them moved the map
most (one block at a time on 16 training tiles, BENCHMARKS.md › Inference). ``--int8-all``
quantises everything but the head, as before.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(ROOT / "napari_histoseg" / "weights" / "default.safetensors"))
    ap.add_argument("--tiles", type=int, default=16, help="training tiles per dataset (4 crops each)")
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--int8-from-stage", type=int, default=8,
                    help="quantise the decoder and the encoder from this stage on (default 8)")
    ap.add_argument("--int8-all", action="store_true", help="quantise every layer but the head")
    args = ap.parse_args(argv)

    from napari_histoseg.io.dataset import load_dataset
    from napari_histoseg.models.onnx import OnnxSegmenter, _weights_hash, collect_ranges
    from napari_histoseg.models.segmenter import Segmenter

    model = Segmenter.from_checkpoint(args.model, device="cpu")
    fp32 = OnnxSegmenter(model)                        # exports the fp32 graph into the cache
    inputs, used = [], []
    c = args.crop
    for name in ("camelyon", "bcss"):
        ds = load_dataset(SHARED / name).subset("train")
        for i in np.linspace(0, len(ds) - 1, min(args.tiles, len(ds))).astype(int):
            image, _ = ds.load(int(i))
            used.append(f"{name}/{ds.tiles[int(i)]['id']}")
            for y in (0, image.shape[0] - c):
                for x in (0, image.shape[1] - c):
                    inputs.append(fp32._normalise(image[y:y + c, x:x + c][None]))
    ranges = collect_ranges(fp32.path, inputs)
    extra = {}
    if not args.int8_all:
        import onnx

        names = [n.name for n in onnx.load(str(fp32.path)).graph.node]
        stages = sorted({int(n.split("/")[2].split(".")[1]) for n in names if n.startswith("/encoder/features.")})
        if not stages or not any(n.startswith("/decoder/") for n in names):
            raise SystemExit(f"{args.model}: no MobileNetV2 encoder stages and decoder in its graph; use --int8-all")
        keep = [k for k in stages if k >= args.int8_from_stage]
        extra = {"int8_nodes": ["/decoder/", *(f"/encoder/features.{k}/" for k in keep)],
                 "int8_part": f"the decoder and encoder stages {keep[0]}-{keep[-1]}" if keep else "the decoder"}
    out = Path(args.model).with_suffix(".int8.json")
    out.write_text(json.dumps({
        "weights_hash": _weights_hash(model.module.float().cpu().eval()),
        "checkpoint": Path(args.model).name,
        "method": "min-max over every float tensor (ONNX Runtime's MinMax calibrator)",
        "calibration_tiles": f"{len(inputs)} crops of {c} px from {len(used)} training-split tiles",
        "tiles": used,
        **extra,
        "ranges": ranges,
    }, indent=1) + "\n")
    print(f"{out}: ranges of {len(ranges)} tensors from {len(inputs)} crops")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
