"""What the routers share: the bearer-token check, bodies in and out, errors as HTTP codes."""

from __future__ import annotations

from typing import Optional

from fastapi import Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from napari_histoseg.backends import wire
from napari_histoseg.server.security import OutsideRoot, token_ok

_BINARY = {"schema": {"type": "string", "format": "binary"}}
RAW_BODY = {"requestBody": {"required": True, "content": {wire.RAW: _BINARY, wire.PNG: _BINARY, wire.NPY: _BINARY}}}
NPZ_BODY = {"requestBody": {"required": True, "content": {wire.NPZ: _BINARY, wire.RAW: _BINARY, wire.PNG: _BINARY}}}
F16 = {"200": {"description": "float16 array; shape and dtype in X-Shape and X-Dtype",
               "content": {wire.RAW: _BINARY}}}
NPZ = {"200": {"description": "NPZ of the result's arrays and its JSON info (backends.wire.pack)",
               "content": {wire.NPZ: _BINARY}}}

bearer = HTTPBearer(auto_error=False, description="the token in the server's --token-file")


def auth(request: Request, creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)):
    if not token_ok(request.app.state.config.token, request.headers.get("authorization")):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def array_response(array, **extra_headers) -> Response:
    body, headers = wire.encode(array, "float16")
    return Response(body, media_type=wire.RAW, headers={**headers, **extra_headers})


def region(text: Optional[str]):
    if not text:
        return None
    try:
        y, x, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise HTTPException(422, f"region must be 'y,x,h,w', not {text!r}") from None
    return y, x, h, w


def arrays(body: bytes, request: Request) -> dict:
    """The body's arrays: ``{"image": ...}`` for one array, every array of an NPZ."""
    data = wire.decode(body, request.headers.get("content-type"), request.headers.get("x-shape"),
                       request.headers.get("x-dtype"))
    return data if isinstance(data, dict) else {"image": data}


async def guard(fn, *args, **kwargs):
    """Run blocking work off the event loop; bad input becomes 4xx with the reason."""
    from napari_histoseg.models.checkpoint import CheckpointError

    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except HTTPException:
        raise
    except OutsideRoot as e:
        raise HTTPException(403, str(e)) from None
    except (FileNotFoundError, KeyError) as e:
        raise HTTPException(404, str(e).strip("'\"")) from None
    except (CheckpointError, wire.WireError, ValueError, TypeError) as e:
        raise HTTPException(400, str(e)) from None
