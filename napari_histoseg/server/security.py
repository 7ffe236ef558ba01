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


class BodyLimit:
    """ASGI middleware: bodies over ``limit`` bytes get 413 before the app sees them.

    The body is read here (it is bounded, so buffering it is cheap) and handed to the app
    in one piece; a ``Content-Length`` above the limit is refused without reading.
    """

    def __init__(self, app, limit: int):
        self.app, self.limit = app, int(limit)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        length = headers.get(b"content-length")
        if length is not None:
            try:
                if int(length) > self.limit:
                    return await self._too_large(send)
            except ValueError:
                return await self._reply(send, 400, b'{"detail":"bad Content-Length"}')
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await self._too_large(send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)

    async def _too_large(self, send):
        mb = self.limit / 2**20
        return await self._reply(send, 413, f'{{"detail":"request body larger than {mb:g} MB '
                                            f'(the server\'s --max-body-mb)"}}'.encode())

    @staticmethod
    async def _reply(send, status: int, body: bytes):
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class OutsideRoot(PermissionError):
    """A path that leads outside the directory the server may read."""


def resolve_under(root, relative: str) -> Path:
    """``root / relative`` with every symlink resolved, if it stays inside ``root``.

    Raises :class:`OutsideRoot` for absolute paths, ``..`` escapes and symlinks pointing
    outside, and ``FileNotFoundError`` for a path inside that does not exist.
    """
    root = Path(root).resolve()
    rel = str(relative).replace("\\", "/")
    if not rel or rel.startswith("/") or PurePosixPath(rel).is_absolute() or ":" in rel.split("/")[0]:
        raise OutsideRoot(f"{relative!r}: give a path relative to the server's folder")
    path = (root / rel).resolve()
    if not path.is_relative_to(root):
        raise OutsideRoot(f"{relative!r} is outside the server's folder")
    if not path.exists():
        raise FileNotFoundError(f"{relative!r}: no such file on the server")
    return path


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
