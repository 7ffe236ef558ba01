"""Resumable training state: the optimiser and its tensors, saved as safetensors with JSON
info (never pickle), so an interrupted ``histoseg train --resume`` continues where it stopped."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file


def make_optimizer(kind: str, params, lr: float):
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr * 10, momentum=0.9, weight_decay=1e-4)
    raise ValueError(f"unknown optimizer {kind!r}")


def save_state(path: Path, model, opt, kind: str, info: dict) -> None:
    """Resumable training state: weights, optimiser tensors and JSON info (safetensors)."""
    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    for pid, st in sd["state"].items():
        for name, val in st.items():
            if torch.is_tensor(val):
                tensors[f"opt.{pid}.{name}"] = val.detach().cpu().contiguous().reshape(val.shape)
    info = {**info, "optimizer": kind, "param_groups": sd["param_groups"]}
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(info)})
    tmp.replace(path)


def load_state(path: Path, model, params) -> tuple[dict, object, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        info = json.loads(f.metadata()["state"])
    tensors = load_file(str(path))
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    kind = info["optimizer"]
    opt = make_optimizer(kind, params, 1e-3)
    state = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            _, pid, name = k.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    opt.load_state_dict({"state": state, "param_groups": info["param_groups"]})
    return info, opt, kind
