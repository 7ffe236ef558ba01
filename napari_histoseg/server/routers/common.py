"""What the routers share: the bearer-token check, bodies in and out, parameters checked,
errors as HTTP codes with a one-line reason that names no server path."""

from __future__ import annotations

from typing import Optional

from fastapi import Depends, HTTPException, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from napari_histoseg.backends import wire
from napari_histoseg.io.checks import InputError, check_int
from napari_histoseg.server.security import OutsideRoot, public_text, token_ok

_BINARY = {"schema": {"type": "string", "format": "binary"}}
RAW_BODY = {"requestBody": {"required": True, "content": {wire.RAW: _BINARY, wire.PNG: _BINARY, wire.NPY: _BINARY}}}
NPZ_BODY = {"requestBody": {"required": True, "content": {wire.NPZ: _BINARY, wire.RAW: _BINARY, wire.PNG: _BINARY}}}
F16 = {"200": {"description": "float16 array; shape and dtype in X-Shape and X-Dtype",
               "content": {wire.RAW: _BINARY}}}
NPZ = {"200": {"description": "NPZ of the result's arrays and its JSON info (backends.wire.pack)",
               "content": {wire.NPZ: _BINARY}}}
MIN_TILE, MAX_TILE = 64, 4096      # tile sides a request may ask for (those of `histoseg segment --tile`)
REFUSED = "X-Refused"              # header of a 422: the task refused this input (not an error of the server)

bearer = HTTPBearer(auto_error=False, description="the token in the server's --token-file")


def auth(request: Request, creds: Optional[HTTPAuthorizationCredentials] = Depends(bearer)):
    if not token_ok(request.app.state.config.token, request.headers.get("authorization")):
        raise HTTPException(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


def array_response(array, **extra_headers) -> Response:
    body, headers = wire.encode(array, "float16")
    return Response(body, media_type=wire.RAW, headers={**headers, **extra_headers})


def region(text: Optional[str]):
    """``y,x,h,w`` as four integers (``y``, ``x`` ≥ 0; ``h``, ``w`` ≥ 1), or None."""
    if not text:
        return None
    parts = text.split(",")
    if len(parts) != 4:
        raise HTTPException(422, f"region must be 'y,x,h,w', not {text[:80]!r}")
    return check_region(parts)


def check_region(values):
    try:
        y, x, h, w = values
        return (check_int(y, "region y", lo=0), check_int(x, "region x", lo=0),
                check_int(h, "region height", lo=1), check_int(w, "region width", lo=1))
    except (InputError, ValueError) as e:
        raise HTTPException(422, f"region must be four integers y,x,h,w: {e}") from None


def tiling(tile, overlap, model_tile=None) -> tuple[Optional[int], int]:
    """``tile`` (None: the model's) and ``overlap`` checked: tile sides 64-4096 px, overlap from 0
    to half the tile."""
    try:
        if tile is not None:
            tile = check_int(tile, "tile", lo=MIN_TILE, hi=MAX_TILE)
        overlap = check_int(overlap, "overlap", lo=0, hi=MAX_TILE // 2)
        side = tile or model_tile
        if side and 2 * overlap > side:
            raise InputError(f"overlap {overlap} must be at most half the tile ({side} px)")
    except InputError as e:
        raise HTTPException(422, str(e)) from None
    return tile, overlap


def budgets(request: Request) -> dict:
    """What one request's body may decode to: the server's pixels per request, and bytes."""
    px = request.app.state.config.max_region_px
    return {"max_pixels": px, "max_bytes": px * 16 + (1 << 20)}


def arrays(body: bytes, request: Request) -> dict:
    """The body's arrays: ``{"image": ...}`` for one array, every array of an NPZ."""
    data = wire.decode(body, request.headers.get("content-type"), request.headers.get("x-shape"),
                       request.headers.get("x-dtype"), **budgets(request))
    return data if isinstance(data, dict) else {"image": data}


def image_of(parts: dict):
    if "image" not in parts:
        raise InputError("the body has no array named 'image'")
    return parts.pop("image")


def _roots(request: Request) -> dict:
    state = request.app.state
    return {state.workdir: "<server workdir>", state.config.slides: "<slides>"}


async def guard(fn, *args, request: Request | None = None, runtime_is_input: bool = False, **kwargs):
    """Run blocking work off the event loop; bad input becomes 4xx with a one-line reason
    (paths of the server replaced by names); a task's refusal of an input (a classifier's
    region that is not H&E) is a 422 marked with ``X-Refused: input``. Running out of memory
    is a 503. ``runtime_is_input``: torch's RuntimeErrors come from the request's settings
    (an explanation through a layer the answer does not pass), so they are a 400 too."""
    from napari_histoseg.core.runs import Cancelled
    from napari_histoseg.models.checkpoint import CheckpointError

    def fail(code, e, headers=None):
        text = str(e.args[0] if isinstance(e, KeyError) and e.args else e).strip()
        text = text.splitlines()[0] if text else type(e).__name__
        if request is not None:
            text = public_text(text, _roots(request))
        raise HTTPException(code, text[:1000], headers=headers) from None

    state = request.app.state if request is not None else None
    if state is not None:
        busy, most = getattr(state, "busy", 0), state.config.max_busy
        if busy >= most:
            raise HTTPException(503, f"the server is busy ({busy} requests computing or waiting, its limit); "
                                     "retry in a moment", headers={"Retry-After": "1"})
        state.busy = busy + 1   # the event loop is one thread: no lock needed
    try:
        return await run_in_threadpool(fn, *args, **kwargs)
    except HTTPException:
        raise
    except Cancelled as e:
        fail(409, e)
    except OutsideRoot as e:
        fail(403, e)
    except wire.TooLarge as e:
        fail(413, e)
    except MemoryError:
        fail(503, "the server has not enough memory for this request now; send a smaller one")
    except (FileNotFoundError, KeyError) as e:
        fail(404, e)
    except (IsADirectoryError, NotADirectoryError) as e:
        fail(400, e)
    except PermissionError as e:
        fail(403, e)
    except OSError as e:     # the server's disk, not the request: said as such
        fail(503, f"the server could not read or write a file ({type(e).__name__}: {e.strerror or e})")
    except (RuntimeError, IndexError) as e:
        if "out of memory" in str(e).lower():
            fail(503, "the server's device has not enough memory for this request now; send a smaller one")
        if not runtime_is_input:
            raise
        fail(400, f"cannot run these settings: {e}")
    except (CheckpointError, wire.WireError, ValueError, TypeError) as e:
        if type(e).__name__ == "ClassifierInputError":
            fail(422, e, {REFUSED: "input"})
        fail(400, e)
    finally:
        if state is not None:
            state.busy -= 1
