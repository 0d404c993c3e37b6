"""GET and HEAD with ``downloads = "redirect"``: a ``302`` to a freshly presigned S3 URL.

The S3 backend hands out GET URLs of this server (``<public_url>/<token>/<file name>``), so the
bucket needs no anonymous read and no object ACL. Each GET or HEAD is answered with a ``302``
whose ``Location`` is the object's URL presigned for that same method (a presigned URL is good
for one method only: SeaweedFS answers 403 to a HEAD on a GET-signed one), valid
``redirect_expiration`` seconds. The presigned query carries ``response-content-type`` and
``response-content-disposition`` (``inline`` for images, video, audio and plain text, else
``attachment``, with an RFC 5987 ``filename*``), so S3 answers with the headers this server
would send for a local file. The redirect itself carries the CORS headers (added to every
answer by :class:`~slixmpp_http_upload.http.cors.Cors`) and is never cached: its target expires.

Whether a file may be served at all is for ``lookup`` to say, without asking S3 (``serve`` uses
:class:`~slixmpp_http_upload.served.ServedFiles`, the ledger's answer): it returns the
file's declared content type, or None for a file that is unknown, expired or deleted — a 404.
When no type was declared (``""``), S3 answers with the one the PUT gave, as an ``attachment``.
When no credentials can be had to sign with (the AWS chain failing), the answer is 503.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiohttp import web

from ..credentials import CredentialsUnavailable
from ..s3 import S3Backend
from ..sigv4 import uri_encode
from .download import DEFAULT_TYPE, SECURITY_HEADERS, content_disposition
from .target import parse_target

log = logging.getLogger(__name__)

RETRY_LATER = {**SECURITY_HEADERS, "Retry-After": "5"}
"""With a 503 when no credentials can sign the redirect now (the AWS chain failed)."""

Lookup = Callable[[str], str | None]
"""``lookup(key_path)``: the declared content type of the object at the encoded ``key_path``
(``""`` when none was declared), or None when it must not be served."""


class RedirectHandler:
    """The GET/HEAD handler of the built-in HTTP server for the S3 backend's downloads."""

    def __init__(self, backend: S3Backend, prefix: str, lookup: Lookup) -> None:
        self.backend = backend
        self.prefix = prefix
        self.lookup = lookup

    async def handle(self, request: web.Request) -> web.Response:
        target = parse_target(request.rel_url.raw_path, self.prefix)
        key_path = f"{self.backend.bucket.path}/{target.token}/{uri_encode(target.name)}" if target else ""
        declared = self.lookup(key_path) if target else None
        if target is None or declared is None:
            return web.Response(status=404, text="no such file\n", headers=SECURITY_HEADERS)
        try:
            self.backend.sign_with(await self.backend.credentials.current())
        except CredentialsUnavailable as error:
            log.warning("cannot redirect a download: %s", error)
            return web.Response(status=503, text="storage unavailable; try again later\n", headers=RETRY_LATER)
        disposition = ("response-content-disposition", content_disposition(target.name, declared or DEFAULT_TYPE))
        params = (disposition, ("response-content-type", declared)) if declared else (disposition,)
        location = self.backend.presigned_url(
            request.method,
            key_path,
            {"host": self.backend.bucket.host},
            expires=self.backend.redirect_expiration,
            params=params,
        )
        return web.Response(
            status=302, headers={**SECURITY_HEADERS, "Location": location, "Cache-Control": "no-store"}
        )
