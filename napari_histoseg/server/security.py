"""What keeps ``histoseg serve`` safe to expose: token, bind address, body size, paths.

* A bearer token read from a file, compared in constant time (:func:`hmac.compare_digest`).
* A non-loopback address is refused unless a token is configured (:func:`check_bind`).
* Request bodies larger than the limit get 413, whether announced by ``Content-Length``
  or only found while streaming (:class:`BodyLimit`).
* Paths named in a request resolve under one root only (:func:`resolve_under`):
  ``..``, absolute paths and symlinks that lead outside are refused.
* Uploaded archives are unpacked member by member with the same check (:func:`safe_unzip`).
"""

from __future__ import annotations

import hmac
import ipaddress
import stat
import zipfile
from pathlib import Path, PurePosixPath

from starlette.exceptions import HTTPException

MIN_TOKEN_CHARS = 16


class SecurityError(ValueError):
    """A configuration the server refuses to start with; the message says why."""


def read_token(path) -> str:
    """The bearer token in ``path`` (surrounding whitespace stripped)."""
    path = Path(path)
    try:
        token = path.read_text().strip()
    except OSError as e:
        raise SecurityError(f"cannot read the token file {path}: {e}") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise SecurityError(
            f"{path}: the token must be one word of at least {MIN_TOKEN_CHARS} characters; make one with "
            "python -c \"import secrets; print(secrets.token_urlsafe(32))\" > " + str(path)
        )
    return token


def is_loopback(host: str) -> bool:
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not is_loopback(host) and not token:
        raise SecurityError(
            f"refusing to listen on {host} without a token: anyone who can reach it could use the GPU "
            "and read slides. Pass --token-file FILE (clients send it as 'Authorization: Bearer ...'), "
            "or keep the default --host 127.0.0.1"
        )


def token_ok(expected: str | None, authorization: str | None) -> bool:
    """True when no token is configured, or ``authorization`` is ``Bearer <expected>``."""
    if not expected:
        return True
    if not authorization:
        return False
    scheme, _, given = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


PUBLIC_PATHS = frozenset({"/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit: the app answers 413
    (an HTTPException, so FastAPI's body parsing passes it on instead of calling it a 400)."""

    def __init__(self, limit: int):
        super().__init__(413, _too_large_text(limit), headers={"Connection": "close"})


class Gate:
    """ASGI middleware that decides on the headers, before any of the body is read.

    * No or a wrong bearer token (when the server has one): 401 at once, except for
      :data:`PUBLIC_PATHS`; the body is never read, so unauthenticated uploads cost nothing.
    * ``Content-Length`` over ``limit``: 413 at once. A body without one is counted while the
      app streams it and refused with 413 once it passes the limit (nothing is buffered here).
    * ``inflight``: the most body bytes all requests together may hold; a request that would
      pass it gets 503 with ``Retry-After`` (the server is busy, the request is not wrong).
    """

    def __init__(self, app, *, token: str | None = None, limit: int = 0, inflight: int = 0):
        self.app, self.token, self.limit, self.inflight = app, token, int(limit), int(inflight)
        self.held = 0   # body bytes of the requests in progress

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {}
        for k, v in scope.get("headers") or []:
            headers.setdefault(k.lower(), v)
        if self.token and scope.get("path") not in PUBLIC_PATHS:
            given = headers.get(b"authorization", b"").decode("latin-1")
            if not token_ok(self.token, given):
                return await reply(send, 401, "missing or wrong bearer token",
                                   [(b"www-authenticate", b"Bearer")])
        length = headers.get(b"content-length")
        declared = 0
        if length is not None:
            try:
                declared = int(length)
                if declared < 0:
                    raise ValueError
            except ValueError:
                return await reply(send, 400, "bad Content-Length header")
            if self.limit and declared > self.limit:
                return await self._too_large(send)
        reserved = declared
        if self.inflight and self.held + reserved > self.inflight:
            return await reply(send, 503, "the server holds as many uploads as it may; try again shortly",
                               [(b"retry-after", b"2")])
        self.held += reserved
        size, started = 0, False

        async def counted_receive():
            nonlocal size, reserved
            message = await receive()
            if message.get("type") == "http.request":
                size += len(message.get("body", b""))
                if self.limit and size > self.limit:
                    raise BodyTooLarge(self.limit)
                if size > reserved:          # no (or a lying) Content-Length: hold what came
                    self.held += size - reserved
                    reserved = size
            return message

        async def watched_send(message):
            nonlocal started
            if message.get("type") == "http.response.start":
                started = True
            await send(message)

        try:
            return await self.app(scope, counted_receive, watched_send)
        except BodyTooLarge:
            if not started:
                return await self._too_large(send)
        finally:
            self.held -= reserved

    async def _too_large(self, send):
        return await reply(send, 413, _too_large_text(self.limit))


def _too_large_text(limit: int) -> str:
    return f"request body larger than {limit / 2**20:g} MB (the server's --max-body-mb)"


async def reply(send, status: int, detail: str, headers=()):
    """A one-line JSON error answer straight from ASGI; the connection is closed after it
    (the rest of an unread body is never read)."""
    import json

    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close"), *headers]})
    await send({"type": "http.response.body", "body": body})


class OutsideRoot(PermissionError):
    """A path that leads outside the directory the server may read."""


MAX_PATH_CHARS = 1024


def resolve_under(root, relative: str) -> Path:
    """``root / relative`` with every symlink resolved, if it stays inside ``root``.

    Raises :class:`OutsideRoot` for absolute paths, ``..`` escapes and symlinks pointing
    outside, ``FileNotFoundError`` for a path inside that does not exist and ``ValueError``
    for one that cannot be resolved (too long, a symbolic-link loop, a NUL byte). Messages name
    the path as given, never where it leads on the server.
    """
    from napari_histoseg.io.checks import InputError, inside

    rel = str(relative).replace("\\", "/")
    if len(rel) > MAX_PATH_CHARS:
        raise ValueError(f"a path of {len(rel)} characters; at most {MAX_PATH_CHARS} are accepted")
    if not rel or rel.startswith("/") or PurePosixPath(rel).is_absolute() or ":" in rel.split("/")[0]:
        raise OutsideRoot(f"{relative!r}: give a path relative to the server's folder")
    try:
        path = inside(root, rel)
        exists = path.exists()
    except InputError:
        raise OutsideRoot(f"{relative!r} is outside the server's folder") from None
    except (RuntimeError, OSError, ValueError):   # a symlink loop, a name too long, a NUL byte
        raise ValueError(f"{relative!r} cannot be resolved on the server (a loop of symbolic links, "
                         "a name too long or a character a path cannot hold)") from None
    if not exists:
        raise FileNotFoundError(f"{relative!r}: no such file on the server")
    return path


def public_text(text: str, roots=()) -> str:
    """``text`` without the server's own paths: each of ``roots`` (``{path: name}`` or paths)
    becomes its name, any other absolute path ``<server path>`` (an error answer must not
    tell a client where things live, or whether a file exists outside its folders)."""
    import os
    import re

    names = roots.items() if isinstance(roots, dict) else ((r, "<server folder>") for r in roots)
    for root, name in sorted(((str(r), n) for r, n in names if r), key=lambda rn: -len(rn[0])):
        for form in {root, os.path.realpath(root)}:
            text = text.replace(form.rstrip("/") + "/", name + "/" if name else "").replace(form, name)

    def hide(m):
        first = m.group(0).lstrip("/").split("/")[0]
        return "<server path>" if first and os.path.isdir("/" + first) else m.group(0)

    return re.sub(r"(?<![\w.~-])/[^\s'\"(),:;]+", hide, str(text))


def safe_unzip(archive, dest, max_bytes: int, max_files: int = 20000) -> Path:
    """Unpack a zip into ``dest``: no absolute or ``..`` names, no symlinks, at most
    ``max_bytes`` unpacked (counted while reading, so a lying header does not help)."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    total = 0
    with zipfile.ZipFile(archive) as zf:
        members = zf.infolist()
        if len(members) > max_files:
            raise ValueError(f"the archive holds {len(members)} entries; at most {max_files} are accepted")
        for info in members:
            name = PurePosixPath(info.filename.replace("\\", "/"))
            if name.is_absolute() or ".." in name.parts or (name.parts and ":" in name.parts[0]):
                raise ValueError(f"refusing archive entry {info.filename!r} (absolute or '..' path)")
            if stat.S_ISLNK(info.external_attr >> 16):
                raise ValueError(f"refusing archive entry {info.filename!r} (a symbolic link)")
            target = (dest / name).resolve()
            if not target.is_relative_to(dest):
                raise ValueError(f"refusing archive entry {info.filename!r} (outside the folder)")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(1 << 20):
                    total += len(chunk)
                    if total > max_bytes:
                        raise ValueError(f"the archive unpacks to more than {max_bytes / 2**20:g} MB")
                    out.write(chunk)
    return dest
