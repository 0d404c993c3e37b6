"""GET and HEAD: a completed upload's bytes, with the headers that make them safe to serve.

Every answer carries ``X-Content-Type-Options: nosniff`` and ``Content-Security-Policy:
default-src 'none'; frame-ancestors 'none'``; a file is ``inline`` only for ``image/*``,
``video/*``, ``audio/*`` and ``text/plain`` (else ``attachment``; a stored list of types goes
out as ``application/octet-stream``, see :func:`served_type`), with an RFC 5987
``filename*`` for names that are not plain ASCII. Files never change once stored, so they are
``immutable`` (for a year, or until their expiry) and their ETag (modification time and size, as aiohttp's ``FileResponse`` makes
it) answers ``If-None-Match`` with 304. One byte range is served (206, or 416 when it lies
beyond the end); a ``Range`` with several is answered with the whole file.

Small files (≤ :data:`SMALL_FILE` bytes) are read and sent as one plain response; larger ones
go out with ``sendfile`` — each is the faster way for its size (see the project's measurements).
Unknown, unfinished, expired or malformed paths are 404.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from urllib.parse import quote

from aiohttp import web

from ..filestore import FileStore, StoredFile
from .target import parse_target

SMALL_FILE = 64 * 1024
DEFAULT_TYPE = "application/octet-stream"
INLINE_PREFIXES = ("image/", "video/", "audio/")
"""Types shown ``inline``, with ``text/plain``."""
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; frame-ancestors 'none'",
}
CACHE_LIFETIME = 31_536_000
"""A year: what caches may keep a file that does not expire (``Cache-Control: immutable``)."""


def served_type(stored: str | None) -> str:
    """The ``Content-Type`` to send: the stored one, unless it is none or a list. Browsers take
    the last type of a list (Fetch's "extract a MIME type"): ``image/png, text/html`` would be
    HTML shown inline."""
    return stored if stored and "," not in stored else DEFAULT_TYPE


def content_disposition(name: str, content_type: str) -> str:
    """``inline`` or ``attachment`` with the file name, RFC 5987-encoded when not plain ASCII."""
    essence = content_type.partition(";")[0].strip().lower()
    kind = "inline" if essence.startswith(INLINE_PREFIXES) or essence == "text/plain" else "attachment"
    plain = "".join(char if " " <= char < "\x7f" and char not in '"\\' else "_" for char in name)
    value = f'{kind}; filename="{plain}"'
    if plain != name:
        value += f"; filename*=UTF-8''{quote(name, safe='')}"
    return value


class DownloadHandler:
    """The GET/HEAD handler of one HTTP server."""

    def __init__(self, store: FileStore, prefix: str, expiry: Callable[[str], float | None]) -> None:
        self.store = store
        self.prefix = prefix
        self.expiry = expiry

    async def handle(self, request: web.Request) -> web.StreamResponse:
        target = parse_target(request.rel_url.raw_path, self.prefix)
        expires = self.expiry(target.token) if target is not None else None
        lifetime = CACHE_LIFETIME if expires is None else min(CACHE_LIFETIME, int(expires - time.time()))
        if lifetime <= 0:
            target = None  # expired: gone for readers, even before the sweeper deletes it
        stored = self.store.open(target.token, target.name) if target else None
        if stored is None:
            return web.Response(status=404, text="no such file\n", headers=SECURITY_HEADERS)
        try:
            return await self._answer(request, stored, lifetime)
        finally:
            os.close(stored.fd)

    async def _answer(self, request: web.Request, stored: StoredFile, lifetime: int) -> web.StreamResponse:
        """The file's answer; caches may keep it ``lifetime`` seconds (until its expiry)."""
        etag = f"{stored.mtime_ns:x}-{stored.size:x}"
        content_type = served_type(stored.content_type)
        headers = {
            **SECURITY_HEADERS,
            "Content-Type": content_type,
            "Cache-Control": f"public, max-age={lifetime}, immutable",
            "Content-Disposition": content_disposition(stored.name, content_type),
            "Accept-Ranges": "bytes",
            "ETag": f'"{etag}"',
            "Last-Modified": formatdate(stored.mtime, usegmt=True),
        }
        if request.if_none_match is not None and any(
            tag.value in (etag, "*") for tag in request.if_none_match
        ):
            return web.Response(status=304, headers=headers)
        status, start, count = 200, 0, stored.size
        asked = _asked_range(request) if self._range_applies(request, etag, stored.mtime) else None
        if asked is not None:
            selected = _bounds(asked, stored.size)
            if selected is None:
                headers["Content-Range"] = f"bytes */{stored.size}"
                return web.Response(status=416, headers=headers)
            status, (start, count) = 206, selected
            headers["Content-Range"] = f"bytes {start}-{start + count - 1}/{stored.size}"
        if count <= SMALL_FILE:  # HEAD too: aiohttp sends the length and drops the body
            return web.Response(status=status, body=os.pread(stored.fd, count, start), headers=headers)
        streamed = web.StreamResponse(status=status, headers=headers)
        streamed.content_length = count
        if request.method == "HEAD":
            return streamed
        await streamed.prepare(request)
        await _sendfile(request, stored.fd, start, count)
        await streamed.write_eof()
        return streamed

    @staticmethod
    def _range_applies(request: web.Request, etag: str, mtime: float) -> bool:
        """``If-Range``: the range counts only if the validator still holds."""
        condition = request.headers.get("If-Range")
        if condition is None:
            return True
        if condition.strip() == f'"{etag}"':
            return True
        date = request.if_range
        return date is not None and int(mtime) <= date.timestamp()


_ONE_RANGE = re.compile(r"bytes=([0-9]*)-([0-9]*)")


def _asked_range(request: web.Request) -> tuple[int | None, int | None] | None:
    """The one byte range asked for as ``(first, last)``, ``first`` None for the last ``last``
    bytes; None for none, several or a malformed one (RFC 9110 lets a server ignore those and
    send the whole file)."""
    match = _ONE_RANGE.fullmatch(request.headers.get("Range", "").strip())
    if match is None or match[0] == "bytes=-":
        return None
    try:
        first, last = (int(value) if value else None for value in match.groups())
    except ValueError:  # more digits than Python converts: no real range
        return None
    if first is not None and last is not None and last < first:
        return None
    return first, last


def _bounds(asked: tuple[int | None, int | None], size: int) -> tuple[int, int] | None:
    """``(start, count)`` of ``asked`` within ``size`` bytes; None when it is unsatisfiable
    (it starts at or beyond the end, or asks for the last 0 bytes)."""
    first, last = asked
    if first is None:  # the last ``last`` bytes
        if not last:
            return None
        start, stop = max(size - last, 0), size
    else:
        start, stop = first, size if last is None else min(last + 1, size)
    if start >= size or stop <= start:
        return None
    return (start, stop - start)


async def _sendfile(request: web.Request, fd: int, offset: int, count: int) -> None:
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the client went away")
    with open(fd, "rb", closefd=False) as file:
        await asyncio.get_running_loop().sendfile(transport, file, offset, count)
