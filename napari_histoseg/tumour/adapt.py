"""Adapt a tumour model to one slide from a person's corrections, in a fixed number of seconds.

:func:`adapt` fine-tunes a start checkpoint on the fields a person corrected
(:class:`~napari_histoseg.tumour.adapt_data.Correction`: accepted mask + edit map) and writes a
new, versioned checkpoint whose meta says where it came from (start model name, version and
sha256, every corrected field's id and edit count, the replay tiles, the settings, the
seconds). What it does, and why:

* **What trains** (``train``): ``"head"`` (the segmentation head, 145 weights), ``"decoder"``
  (decoder + head) or ``"all"``. The frozen part runs once per field in eval mode and its
  output is cached, so a step costs only the trained part: the head trains thousands of
  steps in the time the whole network trains twenty (BENCHMARKS.md "Correction to a better
  model" has the measurement behind the default).
* **BatchNorm frozen** (eval mode: running statistics and the frozen part never move).
* **Loss**: per-pixel binary cross-entropy weighted by the start model's class weights,
  ``1 + edit_weight`` on pixels the person changed, ``replay_weight`` on replay pixels;
  255 counts for nothing. No augmentation, so step 0's loss is the start model's loss on
  these fields (``summary["start_loss"]``).
* **Replay**: tiles of the start model's own training split
  (:func:`~napari_histoseg.tumour.adapt_data.replay_tiles`) fill half of every batch.
* **Budget in seconds**, caching included; the learning rate follows a cosine over it.
* **Cancel** (``should_stop``) writes nothing: the last good checkpoint (the start, or an
  earlier adaptation) stays as it was, and the summary names it.

Re-segmenting the slide with the adapted model never touches a reviewed field:
:func:`keep_reviewed` puts the accepted masks back over the new prediction.

>>> from napari_histoseg.tumour.adapt_data import corrections_from_dataset
>>> s = adapt("bundled", corrections_from_dataset("EXPORT"), "EXPORT/models/a1.safetensors")  # doctest: +SKIP
"""

from __future__ import annotations

import math
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from napari_histoseg.core.hashing import file_sha256
from napari_histoseg.io.checks import check_float, check_int
from napari_histoseg.models import save_checkpoint
from napari_histoseg.training.loop import freeze_batchnorm, load_start_checkpoint, seed_everything
from napari_histoseg.tumour.adapt_data import Correction, replay_tiles
from napari_histoseg.tumour.train import to_input

__all__ = ["TRAINABLE", "adapt", "adapted_path", "root_start", "keep_reviewed"]

TRAINABLE = ("head", "decoder", "all")
DEFAULT_TRAIN = "head"
DEFAULT_LR = {"head": 3e-3, "decoder": 3e-4, "all": 1e-4}
_FEATURES: dict = {}  # (start sha256, train, field id, crc32 of its pixels) -> the frozen part's output
MAX_CACHED = 48


def _parts(model, train: str):
    """``(frozen, trained, parameters)``: the frozen part (input -> features, run once per
    field), the trained part (features -> logits) and its parameters."""
    if train not in TRAINABLE:
        raise ValueError(f"train must be one of {', '.join(TRAINABLE)}; got {train!r}")
    if train == "all":
        return (lambda x: x), model, list(model.parameters())
    net = getattr(model, "net", None)
    if net is None or not all(hasattr(net, a) for a in ("encoder", "decoder", "segmentation_head")):
        raise ValueError(f"train={train!r} needs an encoder-decoder network; {type(model).__name__} "
                         "can only adapt with train='all'")
    drop = getattr(model, "dropout", torch.nn.Identity())
    if train == "head":
        return (lambda x: net.decoder(net.encoder(x))), net.segmentation_head, list(net.segmentation_head.parameters())
    return net.encoder, (lambda f: net.segmentation_head(drop(net.decoder(f)))), [
        *net.decoder.parameters(), *net.segmentation_head.parameters()]


def _pad32(image: np.ndarray) -> tuple[np.ndarray, int, int]:
    h, w = image.shape[:2]
    ph, pw = (-h) % 32, (-w) % 32
    if ph or pw:
        image = np.pad(image, ((0, ph), (0, pw), (0, 0)), mode="reflect" if min(h, w) > max(ph, pw) else "edge")
    return image, h, w


@torch.no_grad()
def _features(frozen, image: np.ndarray):
    padded, _, _ = _pad32(image)
    out = frozen(to_input(padded[None]))
    if isinstance(out, (list, tuple)):
        return [t.detach().clone() for t in out]
    return out.detach().clone()


def cached_features(frozen, sha: str, train: str, fid: str, image: np.ndarray):
    """The frozen part's output for one field, computed once per start model, part, field id and
    pixels (a session that adapts again after more corrections only computes the new fields)."""
    key = (sha, train, fid, zlib.crc32(np.ascontiguousarray(image).tobytes()))
    if key not in _FEATURES:
        while len(_FEATURES) >= MAX_CACHED:
            _FEATURES.pop(next(iter(_FEATURES)))
        _FEATURES[key] = _features(frozen, image)
    return _FEATURES[key]


def _item(feat, image, mask, weight) -> dict:
    hp, wp = (-image.shape[0]) % 32 + image.shape[0], (-image.shape[1]) % 32 + image.shape[1]
    target = np.full((hp, wp), 255, np.uint8)
    target[:mask.shape[0], :mask.shape[1]] = mask
    w = np.zeros((hp, wp), np.float32)
    w[:mask.shape[0], :mask.shape[1]] = weight
    w[target == 255] = 0
    return {"feat": feat, "target": torch.from_numpy((target == 1).astype(np.float32)),
            "weight": torch.from_numpy(w), "size": (hp, wp)}


def _crop(feat, size, y, x, c):
    def one(t):
        s = size[0] // t.shape[-2]
        return t[..., y // s:(y + c) // s, x // s:(x + c) // s]
    return [one(t) for t in feat] if isinstance(feat, list) else one(feat)


def _batch(items, picks, c, rng, flip: bool):
    feats, targets, weights = [], [], []
    for i in picks:
        it = items[i]
        h, w = it["size"]
        y = 32 * int(rng.integers(0, (h - c) // 32 + 1))
        x = 32 * int(rng.integers(0, (w - c) // 32 + 1))
        f, t, wt = _crop(it["feat"], it["size"], y, x, c), it["target"][y:y + c, x:x + c], it["weight"][y:y + c, x:x + c]
        if flip:  # only where the trained part sees the image itself (train="all")
            k, fl = int(rng.integers(0, 4)), bool(rng.integers(0, 2))
            f, t, wt = (torch.rot90(a, k, (-2, -1)) for a in (f, t, wt))
            if fl:
                f, t, wt = (torch.flip(a, (-1,)) for a in (f, t, wt))
        feats.append(f)
        targets.append(t)
        weights.append(wt)
    if isinstance(feats[0], list):
        feat = [torch.cat([f[j] for f in feats]) for j in range(len(feats[0]))]
    else:
        feat = torch.cat(feats)
    return feat, torch.stack(targets), torch.stack(weights)


def _pixel_head(head):
    """The head's 3 x 3 convolution when that is all it is (no upsampling or activation after it)."""
    layers = list(head.children()) if isinstance(head, torch.nn.Sequential) else [head]
    conv, rest = layers[0], layers[1:]
    simple = all(isinstance(m, torch.nn.Identity) or all(isinstance(c, torch.nn.Identity) for c in m.children())
                 and not isinstance(m, torch.nn.UpsamplingBilinear2d) for m in rest)
    ok = isinstance(conv, torch.nn.Conv2d) and conv.kernel_size == (3, 3) and conv.padding == (1, 1) \
        and conv.stride == (1, 1) and conv.groups == 1 and conv.dilation == (1, 1)
    return conv if ok and simple and not any(list(m.parameters()) for m in rest) else None


def _pixel_batch(items, picks_per_item, rng):
    """Sampled pixels of cached head inputs: their 3 x 3 neighbourhoods (N, C, 3, 3), targets, weights."""
    feats, targets, weights = [], [], []
    for i, n in picks_per_item:
        it = items[i]
        h, w = it["size"]
        if "rows" not in it:  # zero-padded like the convolution, channels last: one row per pixel
            p = F.pad(it["feat"][0], (1, 1, 1, 1))
            it["rows"] = p.permute(1, 2, 0).reshape(-1, p.shape[0]).contiguous()
        ys, xs = rng.integers(0, h, n), rng.integers(0, w, n)
        dy, dx = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
        idx = (ys[:, None] + dy.ravel()) * (w + 2) + xs[:, None] + dx.ravel()
        g = it["rows"].index_select(0, torch.from_numpy(idx.ravel())).reshape(n, 9, -1)
        feats.append(g.permute(0, 2, 1).reshape(n, -1, 3, 3))
        flat = torch.from_numpy(ys * w + xs)
        targets.append(it["target"].reshape(-1)[flat])
        weights.append(it["weight"].reshape(-1)[flat])
    return torch.cat(feats), torch.cat(targets), torch.cat(weights)


def _loss(logits, target, weight) -> torch.Tensor:
    per_pixel = F.binary_cross_entropy_with_logits(logits[:, 0], target, reduction="none")
    return (per_pixel * weight).sum() / weight.sum().clamp_min(1e-6)


def root_start(meta, path) -> tuple[str, object]:
    """The original model an adapted checkpoint was adapted from (``(path, meta)`` as recorded,
    where that file still exists), else ``(path, meta)`` itself."""
    from napari_histoseg.models import read_meta

    rec = ((meta.training or {}).get("adaptation") or {}).get("start") or {}
    p = rec.get("path")
    if p and Path(p).is_file():
        return str(p), read_meta(p)
    return str(path), meta


def adapted_path(folder, meta) -> tuple[Path, str]:
    """``(FOLDER/NAME-adaptN.safetensors, "VERSION+adaptN")``: the next free version of an
    adaptation of the model ``meta`` describes."""
    folder = Path(folder)
    name = ((meta.training or {}).get("adaptation") or {}).get("start", {}).get("name") or meta.name
    n = 1
    while (folder / f"{name}-adapt{n}.safetensors").exists():
        n += 1
    return folder / f"{name}-adapt{n}.safetensors", f"{meta.model_version}+adapt{n}"


def keep_reviewed(new_mask: np.ndarray, accepted: np.ndarray, reviewed: np.ndarray) -> np.ndarray:
    """The re-segmented mask with every reviewed pixel (``reviewed`` True) as the person
    accepted it."""
    return np.where(np.asarray(reviewed, bool), np.asarray(accepted), np.asarray(new_mask)).astype(np.uint8)


def adapt(start, corrections: Sequence[Correction], out, *, seconds: float = 60.0, train: str = DEFAULT_TRAIN,
          edit_weight: float = 4.0, replay: Optional[Sequence] = None, replay_count: int = 8,
          replay_weight: float = 0.5, lr: Optional[float] = None, steps: Optional[int] = None, crop: int = 256,
          batch: int = 8, seed: int = 0, version: Optional[str] = None, threads: Optional[int] = None,
          progress: Optional[Callable[[dict], None]] = None, should_stop: Optional[Callable[[], bool]] = None,
          log: Callable[[str], None] = lambda *_: None) -> dict:
    """Fine-tune ``start`` (a checkpoint path or ``"bundled"``) on ``corrections`` for ``seconds``
    (or exactly ``steps`` steps) and write the adapted checkpoint to ``out`` (+ sidecar JSON).

    ``replay``: folders to replay instead of those the start model names (``[]``: none).
    Returns a summary: ``checkpoint`` (None when cancelled), ``kept`` (the checkpoint that stays
    in use when cancelled), ``stop_reason`` (``"time"``, ``"steps"``, ``"cancelled"``),
    ``seconds``, ``steps``, ``start_loss``, ``final_loss`` and the provenance written.
    """
    t0 = time.time()
    seconds = check_float(seconds, "seconds", lo=1, hi=3600)
    edit_weight = check_float(edit_weight, "edit weight", lo=0, hi=1000)
    replay_weight = check_float(replay_weight, "replay weight", lo=0, hi=100)
    batch, crop = check_int(batch, "batch", lo=1, hi=64), check_int(crop, "crop", lo=32, hi=2048)
    replay_count = check_int(replay_count, "replay tiles", lo=0, hi=256)
    if steps is not None:
        steps = check_int(steps, "steps", lo=1, hi=100000)
    if not corrections:
        raise ValueError("no corrected fields to learn from: accept or correct at least one field first")
    out = Path(out)
    if out.suffix != ".safetensors":
        raise ValueError(f"{out.name}: an adapted model is written as a .safetensors file")
    if threads:
        torch.set_num_threads(int(threads))
    seed_everything(seed)
    model, meta, path = load_start_checkpoint(start, "segmentation")
    sha = file_sha256(path)
    lr = check_float(DEFAULT_LR[train] if lr is None else lr, "learning rate", lo=0, lo_open=True, hi=1)
    model.eval()
    frozen, trained, params = _parts(model, train)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    cw = [float(w) for w in ((meta.training or {}).get("settings") or {}).get("class_weights") or [1.0, 1.0]][:2]
    stop = {"reason": None}
    kept = str(path)

    def cancelled() -> bool:
        if stop["reason"] is None and should_stop is not None and should_stop():
            stop["reason"] = "cancelled"
        return stop["reason"] == "cancelled"

    def say(kind, **info):
        if progress:
            progress({"kind": kind, "seconds": round(time.time() - t0, 1), "budget": seconds, **info})

    reps = replay_tiles(meta, replay_count, seed, dirs=replay, log=log) if replay_count else []
    say("start", corrections=len(corrections), replay=len(reps), train=train,
        message=f"learning from {len(corrections)} field(s), {sum(c.edited for c in corrections):,} edited px, "
                f"replaying {len(reps)} training tile(s)")
    fields, replayed = [], []
    for k, c in enumerate(corrections):
        if cancelled():
            break
        wmap = np.where(c.mask == 1, cw[1], cw[0]).astype(np.float32) * (1 + edit_weight * c.edits)
        fields.append(_item(cached_features(frozen, sha, train, c.id, c.image), c.image, c.mask, wmap))
        say("cache", done=k + 1, total=len(corrections) + len(reps))
    for k, (rid, image, mask) in enumerate(reps):
        if cancelled():
            break
        wmap = replay_weight * np.where(mask == 1, cw[1], cw[0]).astype(np.float32)
        replayed.append(_item(cached_features(frozen, sha, train, "replay:" + rid, image), image, mask, wmap))
        say("cache", done=len(corrections) + k + 1, total=len(corrections) + len(reps))
    if cancelled():
        return _cancelled(kept, t0, 0)
    items = fields + replayed
    c = min(crop, *(min(it["size"]) for it in items)) // 32 * 32
    n_fields = max(1, batch // 2) if replayed else batch
    rng = np.random.default_rng(seed)
    conv = _pixel_head(trained) if train == "head" else None
    if conv is not None:  # a 3 x 3 head learns from sampled pixels: one step costs milliseconds
        def step_batch():
            per = [(int(i), pixels // n_fields) for i in rng.integers(0, len(fields), n_fields)]
            if replayed:
                per += [(len(fields) + int(i), pixels // n_fields) for i in rng.integers(0, len(replayed), n_fields)]
            g, t, w = _pixel_batch(items, per, rng)
            return g.reshape(len(g), -1) @ conv.weight.reshape(conv.out_channels, -1).T + conv.bias, t, w
    else:
        def step_batch():
            picks = list(rng.integers(0, len(fields), n_fields))
            if replayed:
                picks += list(len(fields) + rng.integers(0, len(replayed), batch - n_fields))
            feat, target, weight = _batch(items, picks, c, rng, flip=train == "all")
            return trained(feat), target, weight
    pixels = batch * 2048
    opt = torch.optim.Adam(params, lr=lr)
    model.train()
    freeze_batchnorm(model)
    losses, step, train_t0 = [], 0, time.time()
    prepared = round(train_t0 - t0, 1)
    budget_left = seconds - (train_t0 - t0) - 1.0  # a second kept back for writing the checkpoint
    while True:
        frac = step / steps if steps else (time.time() - train_t0) / max(budget_left, 1e-3)
        if steps and step >= steps:
            stop["reason"] = "steps"
            break
        if not steps and frac >= 1:
            stop["reason"] = "time"
            break
        for g in opt.param_groups:
            g["lr"] = lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(frac, 1.0))))
        logits, target, weight = step_batch()
        loss = _loss(logits, target, weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        say("step", step=step, steps=steps, loss=losses[-1], fraction=min(frac, 1.0))
        if cancelled():
            return _cancelled(kept, t0, step)
    model.eval()
    elapsed = round(time.time() - t0, 1)
    settings = {"train": train, "seconds": seconds, "steps": steps, "lr": lr, "edit_weight": edit_weight,
                "replay_weight": replay_weight, "replay_count": replay_count, "crop": c, "batch": batch,
                "seed": seed, "class_weights": cw, "loss": "weighted binary cross-entropy", "freeze_bn": True}
    record = {"start": {"name": meta.name, "model_version": meta.model_version, "path": str(path), "sha256": sha},
              "corrections": [x.record() for x in corrections], "replay": [r[0] for r in reps],
              "settings": settings, "seconds": elapsed, "prepare_seconds": prepared, "steps_run": step, "stop_reason": stop["reason"],
              "start_loss": losses[0] if losses else None,
              "final_loss": float(np.mean(losses[-20:])) if losses else None,
              "when": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
    prior = {k: v for k, v in (meta.training or {}).items() if k != "adaptation"}
    meta.training = {**prior, "adaptation": record}
    meta.metrics = {"note": "the start model's held-out figures do not apply to this adapted model",
                    "start_metrics": meta.metrics}
    meta.name = record["start"]["name"] if meta.name.endswith("-adapted") else f"{meta.name}-adapted"
    meta.model_version = version or f"{record['start']['model_version']}+adapted"
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, out, meta, sidecar=True)
    log(f"adapted {record['start']['name']} in {elapsed:.0f} s ({step} steps, loss {record['start_loss']:.3f} -> "
        f"{record['final_loss']:.3f}); {out}")
    say("done", steps=step, checkpoint=str(out))
    return {"checkpoint": str(out), "kept": str(out), "stop_reason": stop["reason"], "seconds": elapsed,
            "steps": step, "prepare_seconds": prepared, "start_loss": record["start_loss"], "final_loss": record["final_loss"],
            "corrections": len(corrections), "replay": len(reps), "train": train, "adaptation": record}


def _cancelled(kept: str, t0: float, steps: int) -> dict:
    return {"checkpoint": None, "kept": kept, "stop_reason": "cancelled", "seconds": round(time.time() - t0, 1),
            "steps": steps, "stop_message": f"stopped by request; nothing was written, {Path(kept).name} stays in use"}
