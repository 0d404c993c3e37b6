"""The ``local`` backend: files stored on this machine, served by the built-in HTTP server.

A slot is ``<public_url>/<token>/<file name>`` for the GET and the same with a query for the
PUT: ``expires``, ``size``, ``type`` (only when the client declared one) and ``sig``, an
HMAC-SHA256 over token, file name, size, type and expiry with the URL key. The query alone
authorises the PUT — no slot header (Converse.js, Movim and yaxim drop them). Making a slot does
no I/O: a random token and one HMAC from a precomputed key state.

The URL key is ``url_key`` from ``[http_upload.local]``, else a random key kept in the root
(see :meth:`~slixmpp_http_upload.filestore.FileStore.url_key`), so URLs survive restarts.
Deleting (expiry, ``purge``) removes a token's folder; a file whose :attr:`LocalBackend.expiry`
has passed is refused (404) even before that. Unlike other factories,
:meth:`LocalBackend.from_settings` touches the disk: it creates the
root and reads or makes the key, so a root that cannot be written is a configuration error.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import hmac
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from .filestore import FileStore
from .options import ConfigError, Option, parse_table, text
from .sigv4 import HmacSha256, uri_encode
from .slot import Slot, SlotRequest, object_name
from .tokens import token_hex

if TYPE_CHECKING:
    from .config import UploadSettings

DEFAULT_ROOT = "uploads"
MIN_KEY_LENGTH = 16


def _url_key(value: Any) -> str:
    key = text(value)
    if len(key.encode()) < MIN_KEY_LENGTH:
        raise ValueError(f"must be at least {MIN_KEY_LENGTH} bytes long")
    return key


LOCAL_OPTIONS = (
    Option("root", DEFAULT_ROOT, text),
    Option("url_key", None, _url_key, secret=True),
)
"""``[http_upload.local]``: ``root`` is the folder of the files (relative to the configuration
file's folder; created if missing); ``url_key`` the secret that signs PUT URLs (default: a random
key kept in the root as ``.url-key``)."""


class Forbidden(Exception):
    """The PUT URL is not one we signed, or it expired; ``str()`` says which."""


@dataclass(frozen=True, slots=True)
class PutGrant:
    """What a valid PUT URL allows: exactly ``size`` bytes, of ``content_type`` if not None."""

    size: int
    content_type: str | None


@functools.lru_cache(maxsize=256)
def _quoted_type(content_type: str) -> str:
    """A content type as a query value (the same few come again and again)."""
    return quote(content_type, safe="")


class UrlSigner:
    """Signs and checks PUT queries with one key (its HMAC state is computed once)."""

    def __init__(self, key: bytes) -> None:
        self._mac = HmacSha256(key)

    def signature(self, token: str, name: str, size: int, content_type: str | None, expires: int) -> str:
        # NUL cannot occur in any field (names and types are refused with control characters)
        mac = self._mac.digest(f"{token}\0{name}\0{size}\0{content_type or ''}\0{expires}".encode())
        return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()

    def put_query(self, token: str, name: str, size: int, content_type: str | None, expires: int) -> str:
        signature = self.signature(token, name, size, content_type, expires)
        type_param = f"&type={_quoted_type(content_type)}" if content_type else ""
        return f"expires={expires}&size={size}{type_param}&sig={signature}"

    def check(self, token: str, name: str, query: Mapping[str, str], now: float) -> PutGrant:
        """The grant of a PUT query; :class:`Forbidden` if tampered with or expired."""
        expires, size, signature = query.get("expires", ""), query.get("size", ""), query.get("sig", "")
        content_type = query.get("type") or None
        if not (expires.isascii() and expires.isdigit() and size.isascii() and size.isdigit()):
            raise Forbidden("not a signed upload URL")
        if len(expires) > 12 or len(size) > 20:
            raise Forbidden("not a signed upload URL")
        wanted = self.signature(token, name, int(size), content_type, int(expires))
        if not hmac.compare_digest(wanted.encode(), signature.encode("utf-8", "replace")):
            raise Forbidden("the upload URL's signature does not match")
        if int(expires) < now:
            raise Forbidden("the upload URL has expired")
        return PutGrant(int(size), content_type)


class LocalBackend:
    """Slots on the built-in HTTP server for files kept in ``store``."""

    def __init__(
        self, store: FileStore, signer: UrlSigner, public_url: str, *, expiration_time: int = 60, token_bytes: int = 32
    ) -> None:
        self.store = store
        self.signer = signer
        self.public_url = public_url
        self.expiration_time = expiration_time
        self.token_bytes = token_bytes
        self.expiry: Callable[[str], float | None] = _kept
        """When the file of a token stops being served (epoch seconds, None for never): ``serve``
        points it at the ledger, so that an expired file is refused before it is deleted."""

    @classmethod
    def from_settings(cls, settings: UploadSettings, options: Mapping[str, Any], path: str) -> LocalBackend:
        """The backend factory registered as ``local``."""
        values = parse_table(options, LOCAL_OPTIONS, path)
        root = settings.base_dir / values["root"]
        try:
            store = FileStore(root)
            key = values["url_key"].encode() if values["url_key"] else store.url_key()
        except (OSError, ValueError) as error:
            problem = getattr(error, "strerror", None) or str(error)
            raise ConfigError(f"{path}.root", f"cannot use {str(root)!r} for the files: {problem}") from None
        return cls(
            store,
            UrlSigner(key),
            settings.public_url,
            expiration_time=settings.expiration_time,
            token_bytes=settings.token_bytes,
        )

    async def create_slot(self, request: SlotRequest) -> Slot:
        return self.make_slot(request)

    def slot_now(self, request: SlotRequest) -> Slot:
        return self.make_slot(request)

    def make_slot(self, request: SlotRequest, now: float | None = None) -> Slot:
        """A fresh token's GET URL and the PUT URL signed for ``request``."""
        token = token_hex(self.token_bytes)
        name = object_name(request.filename)
        expires = int(time.time() if now is None else now) + self.expiration_time
        if request.expires is not None:  # no upload may bring back a file after its expiry
            expires = min(expires, int(request.expires))
        get_url = f"{self.public_url}/{token}/{uri_encode(name)}"
        query = self.signer.put_query(token, name, request.size, request.content_type, expires)
        return Slot(f"{get_url}?{query}", get_url, key=token)

    async def delete(self, keys: Sequence[str]) -> list[str]:
        """Remove the uploads of the tokens ``keys`` (those absent are gone already)."""

        def unlink_all() -> list[str]:
            for token in keys:
                self.store.delete(token)
            return list(keys)

        return await asyncio.to_thread(unlink_all)


def _kept(token: str) -> float | None:
    return None
