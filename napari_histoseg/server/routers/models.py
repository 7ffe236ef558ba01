"""``/health``, ``/models``, ``/checkpoints/{sha256}``, ``/stats``: what the server holds."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, Request

from napari_histoseg.backends import wire
from napari_histoseg.core.hashing import file_sha256
from napari_histoseg.server.routers.common import guard

public = APIRouter()   # no token needed
router = APIRouter()


@public.get("/health", tags=["server"])
def health(request: Request):
    return {"ok": True, "device": request.app.state.store.device.type}


@router.get("/models", tags=["models"])
def models(request: Request):
    """The models served here, of every task: reference, name, version, task, tile size, device."""
    store = request.app.state.store
    return {"device": store.device.type, "models": [e.info() for e in list(store.entries.values())]}


@router.get("/checkpoints/{sha256}", tags=["models"])
def by_hash(request: Request, sha256: str):
    """The model whose checkpoint file has this SHA-256 (so a client uploads it only once)."""
    entry = request.app.state.store.by_hash(sha256.lower())
    if entry is None:
        raise HTTPException(404, "no model with that checkpoint hash")
    return entry.info()


@router.post("/models", tags=["models"], openapi_extra={"requestBody": {"required": True, "content": {
    wire.RAW: {"schema": {"type": "string", "format": "binary"}}}}})
async def upload(request: Request):
    """Upload a ``.safetensors`` checkpoint of a registered task (nothing else is loaded)."""
    body = await request.body()
    store, workdir = request.app.state.store, request.app.state.workdir

    def add():
        uploads = workdir / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=uploads, prefix=".upload-", suffix=".safetensors")
        tmp, path = Path(name), None
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(body)
            sha = file_sha256(tmp)
            known = store.by_hash(sha)
            if known is not None:
                return known.info()
            path = tmp.rename(uploads / f"{sha[:16]}.safetensors")
            entry = store.add(path, ref=f"upload-{sha[:12]}", pinned=False, owned=True)
            path = None          # the store owns it now (removed when the model is unloaded)
            return entry.info()
        finally:
            tmp.unlink(missing_ok=True)
            if path is not None:
                path.unlink(missing_ok=True)
    return await guard(add, request=request)


@router.get("/stats", tags=["server"])
def stats(request: Request):
    """Forward passes and tiles per tumour model (how well batching stacks requests)."""
    store = request.app.state.store
    return {ref: e.batcher.stats() for ref, e in list(store.entries.items()) if e.batcher is not None}
