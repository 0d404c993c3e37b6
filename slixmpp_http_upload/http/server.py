"""The built-in HTTP server: the ``local`` backend's PUTs and GETs, the S3 backend's download
redirects (``downloads = "redirect"``), and ``/metrics``.

One aiohttp server for all served domains, on ``[http] bind``/``port``, in the caller's event
loop (``serve`` runs it beside the components, so downloads go on while the XMPP side is down).
An embedding bot runs it the same way::

    config = load_config(Path("upload.toml"))
    backend = create_backend(config.http_upload)          # a LocalBackend
    xmpp.register_plugin("http_upload_server", {"settings": config.http_upload,
                                                "backend_instance": backend})
    server = HttpServer(config.http, backend)
    await server.start()      # in the bot's loop; ``await server.stop()`` at the end
"""

from __future__ import annotations

import logging
import os
import ssl
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from ..config import HttpSettings
from ..local import LocalBackend
from ..metrics import SlotMetrics
from ..options import ConfigError
from ..s3 import S3Backend
from .cors import Cors
from .download import DownloadHandler
from .redirect import Lookup, RedirectHandler
from .upload import IDLE_TIMEOUT, UploadHandler

log = logging.getLogger(__name__)

STOP_GRACE = 5.0
"""Seconds that requests in progress get to finish when the server stops (then they are
cancelled: an unfinished upload leaves nothing)."""

REQUEST_HEAD_TIMEOUT = 60.0
"""Seconds a connection has to deliver a complete request head (request line and headers), from
the moment it opens and again after each response on a kept-alive connection; then it is closed.
Bytes arriving do not push the deadline back, so a client that trickles a head (slowloris) is
dropped as surely as one that sends nothing; an idle kept-alive connection lasts as long. A body
being uploaded and a response being sent are not timed by it (see ``IDLE_TIMEOUT`` of
:mod:`.upload` for bodies; a slow reader may take its time)."""


class _ServerLog(logging.LoggerAdapter):
    """aiohttp's server log, where a request that is not valid HTTP is one line at info at most
    (it is the client's doing), without the parser's message: that quotes the request line, a
    signed PUT URL for a client that sends a file name unencoded."""

    def log(self, level: int, msg: object, *args: object, **kwargs: Any) -> None:
        error = kwargs.get("exc_info")
        if isinstance(error, HttpProcessingError):
            level, msg = min(level, logging.INFO), "malformed request (HTTP %d): %s"
            args, kwargs = (error.code, type(error).__name__), {}
        super().log(level, msg, *args, **kwargs)


async def _no_early_continue(request: web.Request) -> None:
    """The PUT handler sends ``100 Continue`` itself, once the request has passed its checks."""


def make_app(
    settings: HttpSettings,
    backend: LocalBackend | S3Backend,
    metrics: Sequence[SlotMetrics] | None = None,
    idle_timeout: float = IDLE_TIMEOUT,
    lookup: Lookup | None = None,
) -> web.Application:
    """The application: PUT (``local`` only), GET/HEAD, OPTIONS on ``/<token>/<name>``, and
    ``/metrics`` when ``metrics`` is given (prometheus-client must be installed). The S3
    backend needs ``lookup``, which says which objects may be served (see :mod:`.redirect`)."""
    prefix = urlsplit(settings.public_url).path
    cors = Cors(settings.cors_origins)
    app = web.Application()
    app.on_response_prepare.append(cors.add_headers)
    if metrics is not None:
        from ..metrics_http import metrics_handler

        app.router.add_get("/metrics", metrics_handler(metrics))
    if isinstance(backend, S3Backend):  # uploads go straight to S3
        if lookup is None:
            raise ValueError("the S3 download redirect needs a lookup (such as ServedFiles of the ledger)")
        app.router.add_get("/{path:.*}", RedirectHandler(backend, prefix, lookup).handle)
        app.router.add_route("OPTIONS", "/{path:.*}", cors.preflight)
        return app
    upload = UploadHandler(backend.store, backend.signer, prefix, settings.max_uploads, idle_timeout)
    app.router.add_route("PUT", "/{path:.*}", upload.handle, expect_handler=_no_early_continue)
    app.router.add_get("/{path:.*}", DownloadHandler(backend.store, prefix, backend.expiry).handle)
    app.router.add_route("OPTIONS", "/{path:.*}", cors.preflight)
    return app


class HttpServer:
    """Runs :func:`make_app` on ``settings.bind``/``port`` (https with ``tls_cert``/``tls_key``);
    a connection without a complete request head for ``head_timeout`` seconds is closed (see
    :data:`REQUEST_HEAD_TIMEOUT`)."""

    def __init__(
        self,
        settings: HttpSettings,
        backend: LocalBackend | S3Backend,
        metrics: Sequence[SlotMetrics] | None = None,
        idle_timeout: float = IDLE_TIMEOUT,
        lookup: Lookup | None = None,
        head_timeout: float = REQUEST_HEAD_TIMEOUT,
    ) -> None:
        self.settings = settings
        self.backend = backend
        app = make_app(settings, backend, metrics, idle_timeout, lookup)
        # aiohttp's keep-alive timer is exactly the head deadline: armed when a connection opens
        # (from aiohttp 3.14.4 on, hence its minimum in setup.cfg) and after each response, it
        # closes the connection only while it waits for a request (never during a body or a
        # response), and data arriving does not re-arm it.
        self.runner = web.AppRunner(
            app,
            access_log=None,
            shutdown_timeout=STOP_GRACE,
            keepalive_timeout=head_timeout,
            logger=_ServerLog(logging.getLogger("aiohttp.server")),
        )

    async def start(self) -> None:
        """Clean what a previous run left unfinished, then listen; a port that cannot be had or
        an unreadable certificate is a :class:`ConfigError`."""
        if isinstance(self.backend, LocalBackend):
            leftovers = self.backend.store.clean_temporary()
            if leftovers is None:
                log.warning("another server uses %s: its unfinished uploads are left alone", self.backend.store.root)
            elif leftovers:
                log.info("removed %d unfinished upload(s) left by a previous run", leftovers)
        context = self._tls_context()
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.settings.bind, self.settings.port, ssl_context=context)
        try:
            await site.start()
        except OSError as error:
            await self.runner.cleanup()
            where = f"{self.settings.bind}:{self.settings.port}"
            reason = os.strerror(error.errno) if error.errno else str(error)
            raise ConfigError("http.port", f"cannot listen on {where}: {reason}") from None
        scheme = "https" if context else "http"
        if isinstance(self.backend, LocalBackend):
            files = f"files stored in {self.backend.store.root}"
        else:
            files = f"downloads redirected to {self.backend.bucket.origin}{self.backend.bucket.path}"
        log.info(
            "HTTP server on %s://%s:%d (public URL %s), %s",
            scheme, self.settings.bind, self.settings.port, self.settings.public_url, files,
        )

    async def stop(self) -> None:
        await self.runner.cleanup()

    def _tls_context(self) -> ssl.SSLContext | None:
        if self.settings.tls_cert is None or self.settings.tls_key is None:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.settings.tls_cert, self.settings.tls_key)
        except (OSError, ssl.SSLError) as error:
            raise ConfigError("http.tls_cert", f"cannot load the certificate and key: {error}") from None
        return context
