"""Pack what the GPU training run needs into one small folder that travels with the working
tree to a lent device machine (the device tool carries at most 64 MiB with the repository).

The train tiles of ../shared/data/camelyon and bcss are resampled here to the model's scale
(0.5 µm/px, from the recorded or estimated mpp of ``napari_histoseg.tumour.config.DATA_MPP``)
and stored as JPEG (quality 90; both sets were JPEG upstream) with PNG masks and ``mpp: 0.5``
recorded per tile, so nothing is resampled there; ``split`` and ``group`` are kept, so the
validation hold-out is the one a CPU run draws. Test tiles are NOT packed: the checkpoint that
comes back is evaluated here, on the original test tiles. Unlabelled H&E (MoNuSeg, a seeded
sample of BreakHis), the ImageNet MobileNetV2 encoder (as float16, half the size; loading casts
it back) and the one wheel training needs that the device image lacks
(segmentation-models-pytorch, from the .whl/ folder tools/gpu/wheels.sh fills) come along.
The total, with the repository, must stay under the device tool's 64 MiB: it is printed.

    python3 tools/gpu/pack_data.py            # writes .gpu/ (add "/.gpu/" to .git/info/exclude)
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from napari_histoseg.io.dataset import load_dataset, read_mask_png, read_rgb
from napari_histoseg.tumour.config import DATA_MPP
from napari_histoseg.tumour.data import to_model_scale

MODEL_MPP = 0.5


def pack_labelled(src: Path, dst: Path, quality: int) -> int:
    ds = load_dataset(src)
    (dst / "images").mkdir(parents=True, exist_ok=True)
    (dst / "masks").mkdir(exist_ok=True)
    tiles = []
    for t in ds.tiles:
        if t.get("split") == "test":
            continue
        mpp = t.get("mpp") or DATA_MPP[ds.name or src.name]
        (img,), (mask,) = to_model_scale([read_rgb(src / t["image"])], [read_mask_png(src / t["mask"])], mpp, MODEL_MPP)
        Image.fromarray(img).save(dst / "images" / f"{t['id']}.jpg", quality=quality)
        Image.fromarray(mask).save(dst / "masks" / f"{t['id']}.png")
        tiles.append({**t, "image": f"images/{t['id']}.jpg", "mask": f"masks/{t['id']}.png", "mpp": MODEL_MPP,
                      "packed_from": f"{t['image']} at {mpp} µm/px"})
    meta = json.loads((src / "dataset.json").read_text())
    meta["tiles"] = tiles
    (dst / "dataset.json").write_text(json.dumps(meta))
    return len(tiles)


def pack_unlabelled(src: Path, dst: Path, n: int, quality: int, seed: int = 0) -> int:
    meta = json.loads((src / "dataset.json").read_text())
    tiles = [t for t in meta["tiles"] if t.get("image")]
    if len(tiles) > n:
        tiles = [tiles[i] for i in sorted(np.random.default_rng(seed).choice(len(tiles), n, replace=False))]
    (dst / "images").mkdir(parents=True, exist_ok=True)
    out = []
    for t in tiles:
        mpp = t.get("mpp") or DATA_MPP.get(meta.get("name") or src.name)
        (img,), _ = to_model_scale([read_rgb(src / t["image"])], [None], mpp, MODEL_MPP)
        name = Path(t["image"]).stem + ".jpg"
        Image.fromarray(img).save(dst / "images" / name, quality=quality)
        out.append({"id": t.get("id", name), "image": f"images/{name}", "mpp": MODEL_MPP})
    (dst / "dataset.json").write_text(json.dumps({"format": "histoseg-dataset", "version": 1,
                                                  "name": meta.get("name") or src.name, "tiles": out}))
    return len(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shared", default=str(Path(__file__).resolve().parents[3] / "shared"))
    p.add_argument("--out", default=".gpu")
    p.add_argument("--quality", type=int, default=85)
    p.add_argument("--breakhis", type=int, default=50, help="BreakHis images for the consistency term")
    p.add_argument("--wheels", default=".whl", help="folder holding the segmentation-models-pytorch wheel")
    args = p.parse_args(argv)
    shared, out = Path(args.shared), Path(args.out)
    if out.exists():
        shutil.rmtree(out)
    for name in ("camelyon", "bcss"):
        print(name, pack_labelled(shared / "data" / name, out / name, args.quality), "train tiles")
    print("monuseg", pack_unlabelled(shared / "data" / "monuseg", out / "monuseg", 1000, args.quality))
    print("breakhis", pack_unlabelled(shared / "data" / "breakhis", out / "breakhis", args.breakhis, args.quality))
    from safetensors.torch import load_file, save_file

    enc = load_file(str(shared / "weights" / "mobilenet_v2_imagenet.safetensors"))
    save_file({k: v.half() if v.is_floating_point() else v for k, v in enc.items()},
              str(out / "mobilenet_v2_imagenet.safetensors"))
    wheels = sorted(Path(args.wheels).glob("segmentation_models_pytorch-*.whl"))
    if wheels:
        (out / "wheels").mkdir()
        shutil.copy(wheels[-1], out / "wheels" / wheels[-1].name)
    else:
        print(f"no segmentation_models_pytorch wheel in {args.wheels}: run tools/gpu/wheels.sh first")
    total = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    import subprocess

    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           capture_output=True, check=True).stdout.split(b"\0")
    repo = sum(Path(f.decode()).stat().st_size for f in files if f and Path(f.decode()).is_file())
    print(f"{out}: {total / 2**20:.1f} MiB; with the working tree {(total + repo) / 2**20:.1f} MiB (limit 64)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
