"""Make two folders from BreakHis for tumour training, from its ``train`` split only (never ``test``).

    python tools/breakhis_negatives.py [--breakhis ../shared/data/breakhis] [--out runs/data]

- ``OUT/breakhis-benign``: a training-data folder of every benign image (adenosis, fibroadenoma,
  phyllodes tumour, tubular adenoma), each with a mask that is all 0 ("not tumour"), ``group`` the
  patient, so validation holds out whole patients. **An assumption**: benign breast lesions are
  not the carcinoma this model marks; BreakHis has no pixel labels, so nothing checks it.
- ``OUT/breakhis-malignant-train``: the malignant images without labels (``name`` "breakhis",
  so ``tumour.config.DATA_MPP`` gives their scale), for the consistency term only.

The 0.3.0 tumour model was trained with these (``--data-mpp`` needs ``"breakhis-benign": 0.5``);
see napari_histoseg/weights/MODEL_CARD.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
CLASSES = {"0": "not tumour", "1": "tumour"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--breakhis", default=str(ROOT.parent / "shared" / "data" / "breakhis"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "data"))
    args = ap.parse_args(argv)
    src, out = Path(args.breakhis), Path(args.out)
    meta = json.loads((src / "dataset.json").read_text())
    benign, malignant = out / "breakhis-benign", out / "breakhis-malignant-train"
    for d in (benign / "images", benign / "masks", malignant / "images"):
        d.mkdir(parents=True, exist_ok=True)
    b_tiles, m_tiles = [], []
    for t in meta["tiles"]:
        if t.get("split") != "train":
            continue
        name = Path(t["image"]).name
        if int(t["label"]) == 0:
            shutil.copy(src / t["image"], benign / "images" / name)
            w, h = Image.open(src / t["image"]).size
            mask = Path(name).with_suffix(".png").name
            Image.fromarray(np.zeros((h, w), np.uint8)).save(benign / "masks" / mask)
            b_tiles.append({"id": t["id"], "image": f"images/{name}", "mask": f"masks/{mask}", "split": "train",
                            "group": t["group"], "subtype": t.get("subtype"), "x": 0, "y": 0, "width": w,
                            "height": h, "source": f"{t.get('source', name)} (BreakHis benign, whole image "
                                                   "taken as not tumour)"})
        else:
            shutil.copy(src / t["image"], malignant / "images" / name)
            m_tiles.append({"id": t["id"], "image": f"images/{name}", "split": "train", "group": t["group"],
                            "source": t.get("source", name)})
    for root, name, tiles in ((benign, "breakhis-benign", b_tiles), (malignant, "breakhis", m_tiles)):
        (root / "dataset.json").write_text(json.dumps({"format": "histoseg-dataset", "version": 1, "name": name,
                                                       "classes": CLASSES, "ignore_index": 255, "tiles": tiles},
                                                      indent=1))
    print(f"{benign}: {len(b_tiles)} benign images (all not tumour); {malignant}: {len(m_tiles)} malignant "
          "images (unlabelled)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
