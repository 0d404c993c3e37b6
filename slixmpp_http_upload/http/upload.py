"""PUT: store one upload, exactly as its signed URL allows, or nothing at all.

Everything is checked before a byte of the body is read (a client that sent
``Expect: 100-continue`` gets its ``100 Continue`` only then):

============================================================  ======
the URL names no slot                                          404
signature wrong or expired                                     403
no ``Content-Length`` (chunked bodies included)                411
``Content-Length`` over the slot's size / under it              413 / 400
``Content-Type`` not the declared one (an empty one is none)   400
the slot already holds its file                                409
``max_uploads`` uploads in progress                            503 + ``Retry-After``
not enough free space for the body                             507
============================================================  ======

The body is read in 64 KiB chunks into a temporary file in the root (never held in memory) and
made visible only when complete (see :class:`~slixmpp_http_upload.filestore.Upload`). A client
that goes away early, that sends nothing for ``idle_timeout`` seconds, or a disk that fills up
(507) leaves nothing behind, and so does a file deleted (expiry, purge) while its body was
still arriving (410: it must not come back once the sweeper has been). Success is **201** (some clients accept only 200 or 201).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiohttp import web

from ..filestore import FULL_DISK_ERRORS, FileStore, SlotTaken, UploadDeleted
from ..local import Forbidden, UrlSigner
from ..slot import BadRequest, check_content_type
from .target import parse_target

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
IDLE_TIMEOUT = 60.0
RETRY_AFTER = "5"


def _plain(status: int, text: str, headers: dict[str, str] | None = None, close: bool = False) -> web.Response:
    """A short text answer; ``close`` ends the connection after it (the body was not all read)."""
    response = web.Response(status=status, text=text + "\n", headers=headers)
    if close:
        response.force_close()
    return response


def _normalized(content_type: str) -> str:
    return " ".join(content_type.split())


@dataclass
class UploadHandler:
    """The PUT handler of one HTTP server; ``active`` counts the uploads in progress."""

    store: FileStore
    signer: UrlSigner
    prefix: str
    max_uploads: int
    idle_timeout: float = IDLE_TIMEOUT
    active: int = 0

    async def handle(self, request: web.Request) -> web.StreamResponse:
        target = parse_target(request.rel_url.raw_path, self.prefix)
        if target is None:
            return _plain(404, "no such slot")
        try:
            grant = self.signer.check(target.token, target.name, request.query, time.time())
        except Forbidden as refusal:
            return _plain(403, str(refusal))
        length = request.content_length
        if length is None or "chunked" in request.headers.get("Transfer-Encoding", "").lower():
            return _plain(411, "Content-Length is required (chunked bodies are refused)")
        if length != grant.size:
            status = 413 if length > grant.size else 400
            return _plain(status, f"Content-Length must be the slot's size, {grant.size}")
        sent_type = request.headers.get("Content-Type", "").strip() or None
        if grant.content_type is not None and (
            sent_type is None or _normalized(sent_type) != _normalized(grant.content_type)
        ):
            return _plain(400, f"Content-Type must be {grant.content_type!r}, as declared for the slot")
        if self.store.has(target.token):
            return _plain(409, "this slot already holds its file")
        if self.active >= self.max_uploads:
            return _plain(503, "too many uploads in progress; try again later", {"Retry-After": RETRY_AFTER})
        if self.store.free_bytes() < length:
            return _plain(507, "not enough space left for this file")
        content_type = grant.content_type or _acceptable_type(sent_type)
        self.active += 1
        try:
            return await self._receive(request, target.token, target.name, content_type, length)
        finally:
            self.active -= 1

    async def _receive(
        self, request: web.Request, token: str, name: str, content_type: str | None, length: int
    ) -> web.StreamResponse:
        try:  # begun before anything is awaited: a delete of the token (expiry) from now on finds it
            upload = self.store.begin(token, name, content_type)
        except OSError as error:
            return _storage_error(error, token)
        try:
            if request.headers.get("Expect", "").lower() == "100-continue":
                await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            while upload.written < length:
                async with asyncio.timeout(self.idle_timeout):
                    chunk = await request.content.read(min(CHUNK, length - upload.written))
                if not chunk:
                    raise ConnectionResetError("the body ended early")
                upload.write(chunk)
            await upload.commit()
        except TimeoutError:
            upload.discard()
            log.info("upload %s…: no bytes for %g s; dropped", token[:8], self.idle_timeout)
            return _plain(408, f"no bytes for {self.idle_timeout:g} s", close=True)
        except SlotTaken:
            return _plain(409, "this slot already holds its file")
        except UploadDeleted:
            log.info("upload %s…: its file was deleted (expired) before the body was complete", token[:8])
            return _plain(410, "the file expired or was deleted during the upload", close=True)
        except ConnectionError:
            upload.discard()
            log.info("upload %s…: the client went away after %d of %d bytes", token[:8], upload.written, length)
            return _plain(400, "the body ended early", close=True)
        except OSError as error:
            upload.discard()
            return _storage_error(error, token)
        except BaseException:  # the client went away (or we are stopping)
            upload.discard()
            raise
        log.debug("upload %s…: stored %r, %d bytes", token[:8], name, length)
        return _plain(201, "stored")


def _acceptable_type(content_type: str | None) -> str | None:
    """The PUT's own type, kept when no type was declared and it is a sane header value."""
    try:
        return check_content_type(content_type)
    except BadRequest:
        return None


def _storage_error(error: OSError, token: str) -> web.Response:
    """507 for a full disk, else 500; the log names the upload by its token's prefix (an
    ``OSError``'s file name would hold all of it: the download URL)."""
    if error.errno in FULL_DISK_ERRORS:
        log.warning("upload %s…: refused, the disk is full", token[:8])
        return _plain(507, "not enough space left for this file", close=True)
    log.error("upload %s…: failed: %s", token[:8], error.strerror or type(error).__name__)
    return _plain(500, "the file could not be stored", close=True)
