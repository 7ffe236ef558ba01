"""The tumour task's training data at the model's scale (no torch beyond resizing).

Every tile is resampled to the model's µm per pixel (``TumourConfig.mpp``) from the tile's
recorded ``mpp``, else its folder's entry in ``TumourConfig.data_mpp``; tiles of unknown scale
are used as they are and the log says so once. Masks are resized nearest-neighbour, so class
codes (ignore included) stay codes. Unlabelled H&E for the consistency term comes from any
``dataset.json`` folder (its tiles' ``image``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F

from napari_histoseg.core.resize import resize


def resample_mask(mask: np.ndarray, shape) -> np.ndarray:
    """Nearest-neighbour resize of a uint8 code mask (codes, ignore included, stay codes)."""
    if tuple(mask.shape) == tuple(shape):
        return mask
    m = torch.from_numpy(np.ascontiguousarray(mask))[None, None].float()
    return F.interpolate(m, size=tuple(shape), mode="nearest")[0, 0].to(torch.uint8).numpy()


def to_model_scale(images, masks, src_mpp, model_mpp):
    """Images (antialiased bilinear) and masks (nearest) resampled from ``src_mpp`` to ``model_mpp``
    (both in µm per pixel; either None or 0: unchanged)."""
    if not src_mpp or not model_mpp or abs(src_mpp / model_mpp - 1) < 0.02:
        return list(images), list(masks)
    out_i, out_m = [], []
    for img, m in zip(images, masks):
        r = resize(img, src_mpp / model_mpp)
        out_i.append(r)
        out_m.append(resample_mask(m, r.shape[:2]) if m is not None else None)
    return out_i, out_m


def tile_mpp(ds, cfg, log=None, warned=None) -> Optional[float]:
    """µm per pixel of a folder's tiles: recorded per tile (the first that has one), else
    ``cfg.data_mpp[name]``; None (and a note through ``log`` once) when neither is known."""
    recorded = [t.get("mpp") for t in ds.tiles if t.get("mpp")]
    if recorded:
        return float(np.median(recorded))
    name = ds.name or Path(ds.root).name
    mpp = (cfg.data_mpp or {}).get(name) or (cfg.data_mpp or {}).get(Path(ds.root).name)
    if mpp is None and log and cfg.mpp and (warned is None or name not in warned):
        log(f"{name}: no mpp recorded and none in --data-mpp; its tiles are used at their own scale, "
            f"which may not be the model's {cfg.mpp} µm/px")
        if warned is not None:
            warned.add(name)
    return float(mpp) if mpp else None


def load_plan(plan, cfg=None, log=print):
    """Train and validation image/mask lists of a :class:`~napari_histoseg.training.plan.TrainingPlan`
    at the model's scale (``cfg.mpp``), plus provenance. Validation on the training tiles reuses
    the same arrays."""
    tr_imgs, tr_masks, va_imgs, va_masks, prov = [], [], [], [], []
    model_mpp = getattr(cfg, "mpp", None)
    for f in plan.folders:
        src = tile_mpp(f["train"], cfg, log) if cfg is not None else None
        a, b = to_model_scale(*f["train"].load_all(), src, model_mpp)
        c, e = (a, b) if f["validate_on_train"] else to_model_scale(*f["val"].load_all(), src, model_mpp)
        tr_imgs += a; tr_masks += b; va_imgs += c; va_masks += e  # noqa: E702
        prov.append({"dataset": f["dataset"], "name": f["name"], "train_tiles": len(f["train"]),
                     "val_tiles": len(f["val"]), "validation": f["how"], "val_ids": f["val"].ids(),
                     "validate_on_train": f["validate_on_train"], "mpp": src,
                     "resampled_to": model_mpp if src and model_mpp else None})
    return tr_imgs, tr_masks, va_imgs, va_masks, prov


def load_unlabelled(dirs, cfg, log=print, per_folder: int = 160, seed: int = 0) -> tuple[list, list]:
    """Images (at the model's scale) of folders of unlabelled H&E: any ``dataset.json`` folder
    (its tiles' ``image``), at most ``per_folder`` each (a seeded choice); plus provenance."""
    import json

    from napari_histoseg.io.dataset import read_rgb

    rng = np.random.default_rng(seed)
    images, prov = [], []
    for d in dirs:
        root = Path(d)
        meta = json.loads((root / "dataset.json").read_text())
        tiles = [t for t in meta.get("tiles", []) if t.get("image")]
        if len(tiles) > per_folder:
            tiles = [tiles[i] for i in sorted(rng.choice(len(tiles), per_folder, replace=False))]
        name = meta.get("name") or root.name
        fallback = (cfg.data_mpp or {}).get(name) or (cfg.data_mpp or {}).get(root.name)
        for t in tiles:
            img = read_rgb(root / t["image"])
            src = t.get("mpp") or fallback
            images.append(to_model_scale([img], [None], src, cfg.mpp)[0][0])
        prov.append({"dataset": str(d), "name": name, "images": len(tiles), "mpp": t.get("mpp") or fallback})
        log(f"unlabelled: {len(tiles)} images of {name} ({prov[-1]['mpp'] or 'unknown'} µm/px)")
    return images, prov
