"""``serve``: one upload component per served domain, kept connected until SIGINT or SIGTERM.

Every component is an :class:`UploadComponent` (a :class:`slixmpp.ComponentXMPP` that offers each
stanza read to the plugin first) with the ``http_upload_server`` plugin; all share one backend.
With the ``local`` backend, or S3 with ``downloads = "redirect"``, the built-in HTTP server
(:class:`~slixmpp_http_upload.http.HttpServer`) runs in the same loop, one for all domains,
whatever the components' links are doing.

slixmpp only retries a failed TCP connect (3 s, 9 s, 21 s… up to 300 s) and never reconnects a
session that the server ended, so :class:`Link` runs the whole cycle itself: connect, wait for
the stream to end (or give up on a handshake that does not come within 30 s), back off (1 s
doubling to 30 s, back to 1 s after a session that got going), connect again. Plugins are
registered once, so nothing is added twice on reconnection. A server that refuses the secret,
or has no such component, stops ``serve`` with exit status 1: retrying cannot help.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import signal
from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree as ET

from slixmpp import ComponentXMPP
from slixmpp.stanza import StreamError

from .accounting import Accounting, open_ledger
from .backends import Backend, create_backend
from .config import Config, MetricsSettings, UploadSettings
from .http import HttpServer
from .ledger import Ledger
from .local import LocalBackend
from .metrics import SlotMetrics
from .options import ConfigError
from .retention import CannotDelete, Sweeper
from .s3 import S3Backend
from .served import ServedFiles
from .wire import ReplyWriter

log = logging.getLogger(__name__)

FIRST_DELAY = 1.0
MAX_DELAY = 30.0
DRAIN_TIMEOUT = 5.0
"""On SIGINT or SIGTERM, pending slot requests get this long to be answered before the rest
are refused (``wait/service-unavailable``) and the streams close."""
HANDSHAKE_TIMEOUT = 30.0
"""A server that takes the connection but never completes the handshake is left after this."""
FATAL_STREAM_ERRORS = {
    "not-authorized": "the server refused the component secret (ejabberd also says so for an unknown name)",
    "host-unknown": "the server has no component of that name (see its configuration)",
}
"""Stream errors at the handshake that retrying cannot fix (what Prosody 0.12 and ejabberd 23.01 send)."""
CONFLICT_STATUS = 3
"""``serve``'s exit status when the server turned the connection away because another one has
the component's name (``conflict``) and ``serve`` runs as a worker of ``--processes``."""


class ComponentRefused(Exception):
    """The server turned a component away for good; ``str()`` says which and why, ``status`` is
    ``serve``'s exit status."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def serve(config: Config, verbose: bool = False, standby: bool = True) -> int:
    """Run the components of ``config`` until SIGINT or SIGTERM (exit status 0, once every
    pending slot request is answered or refused: :data:`DRAIN_TIMEOUT`), or until the
    server refuses one of them (1). Raises :class:`ConfigError` before connecting anything.
    ``verbose`` logs each slot and each refusal too. A component the server turns away because
    another connection has its name (``conflict``) waits to take over (``standby``), or ends
    ``serve`` with :data:`CONFLICT_STATUS` (a worker of
    ``--processes``)."""
    if config.component.secret is None:
        raise ConfigError("component.secret", "is required to serve")
    if not config.component.domains:
        raise ConfigError("component.domains", "must list at least one domain to serve")
    if config.metrics.port is not None:
        _require_prometheus()
    configure_logging(verbose, worker=not standby)
    _raise_file_limit()
    try:
        return asyncio.run(_serve(config, standby))
    except KeyboardInterrupt:  # SIGINT before the loop's own handler was in place
        return 0


def _require_prometheus() -> None:
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        raise ConfigError(
            "metrics.port", "needs prometheus-client: pip install 'slixmpp-http-upload[metrics]'"
        ) from None


def _raise_file_limit() -> None:
    """Allow as many open files as the system lets us: each download in progress holds its
    socket and its file (the common soft limit of 1024 would stop at about 500)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # then we live with the soft limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def configure_logging(verbose: bool, worker: bool = False) -> None:
    """Our lines from INFO on (DEBUG when ``verbose``) and everyone's warnings on stderr, unless
    the caller set logging up; a worker of ``--processes`` tells its process id."""
    if not logging.getLogger().handlers:
        process = "[%(process)d] " if worker else ""
        logging.basicConfig(level=logging.WARNING, format=f"%(asctime)s {process}%(levelname)s %(name)s: %(message)s")
        logging.getLogger(__package__).setLevel(logging.DEBUG if verbose else logging.INFO)


async def _serve(config: Config, standby: bool = True) -> int:
    backend = create_backend(config.http_upload)
    lasting = keeps_every_record(backend)
    ledger = open_ledger(config.http_upload, lasting=lasting)
    kept = "" if lasting else " that expire (the others are in the file only)"
    log.info("ledger %s: %d files recorded%s", ledger.path, len(ledger.records), kept)
    try:
        sweeper = _sweeper(config.http_upload, ledger, backend)
        accounting = Accounting(config.http_upload, ledger)
        return await _run(config, backend, accounting, sweeper, standby)
    finally:
        ledger.close()


def keeps_every_record(backend: Backend) -> bool:
    """Whether ``serve`` holds the records of files that never expire in memory too: only the S3
    download redirect looks them up (every download)."""
    return isinstance(served_over_http(backend), S3Backend)


def _sweeper(settings: UploadSettings, ledger: Ledger, backend: Backend) -> Sweeper | None:
    """The sweeper, unless the backend cannot delete and no file ever expires."""
    try:
        return Sweeper(ledger, backend)
    except CannotDelete as error:
        if any(rules.expire_after is not None or rules.name == "ephemeral" for rules in settings.purposes.values()):
            raise ConfigError("http_upload.expire_after", f"files expire, but {error}") from None
        return None


async def _run(
    config: Config, backend: Backend, accounting: Accounting, sweeper: Sweeper | None, standby: bool
) -> int:
    component = config.component
    links = [
        Link(
            make_component(config, domain, backend, accounting), component.server, component.port, standby=standby
        )
        for domain in component.domains
    ]
    counters = [link.xmpp.plugin["http_upload_server"].metrics for link in links]  # type: ignore[typeddict-item]
    async with contextlib.AsyncExitStack() as running:
        running.callback(_start_metrics(config.metrics, counters))
        if (served := served_over_http(backend)) is not None:
            lookup = None
            if isinstance(served, LocalBackend):
                served.expiry = accounting.ledger.expires
            else:
                lookup = ServedFiles(accounting.ledger)
                running.callback(lookup.close)
            metrics = counters if config.metrics.port is not None else None
            http = HttpServer(config.http, served, metrics, lookup=lookup)
            await http.start()
            running.push_async_callback(http.stop)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        tasks = [asyncio.create_task(link.run(), name=link.name) for link in links]
        if sweeper is not None:
            tasks.append(asyncio.create_task(sweeper.run(), name="sweeper"))
        stopper = asyncio.create_task(stop.wait())
        try:
            await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopper, *tasks):
                task.cancel()
            await asyncio.gather(*(link.drain(DRAIN_TIMEOUT) for link in links))
            await asyncio.gather(*(link.close() for link in links))
    return _exit_status(tasks)


def served_over_http(backend: Backend) -> LocalBackend | S3Backend | None:
    """``backend`` when the built-in HTTP server runs for it (the ``local`` backend's files, the
    S3 backend's download redirects), else None."""
    if isinstance(backend, LocalBackend):
        return backend
    if isinstance(backend, S3Backend) and backend.redirect_from is not None:
        return backend
    return None


def _exit_status(tasks: list[asyncio.Task[None]]) -> int:
    """The status of a component the server refused (said on stderr), else 0; re-raises a crash."""
    for task in tasks:
        error = None if task.cancelled() or not task.done() else task.exception()
        if isinstance(error, ComponentRefused):
            log.error("%s", error)
            return error.status
        if error is not None:
            raise error
    log.info("stopped")
    return 0


def _start_metrics(settings: MetricsSettings, sources: list[SlotMetrics]) -> Callable[[], None]:
    """Start the metrics endpoint if one is configured; return what stops it."""
    if settings.port is None:
        return lambda: None
    from .metrics_http import start_metrics_server

    stop = start_metrics_server(settings, sources)
    log.info("metrics on http://%s:%d/metrics", settings.host, settings.port)
    return stop


class UploadComponent(ComponentXMPP):
    """A component that is the upload service's alone (``own_stream``): each stanza read goes
    first to :attr:`take` as an element, and only what it leaves becomes a slixmpp stanza
    object, filtered and matched against the handlers as usual. A plain slot request (most of
    what the stream carries) so skips the work slixmpp would do for it before the plugin's
    handler; and the replies made while one read is handled leave in one write when it is
    done (see ``bench/README.md``)."""

    take: Callable[[ET.Element], bool] | None = None
    writer: ReplyWriter | None = None

    def data_received(self, data: bytes | str) -> None:
        writer = self.writer
        if writer is None:
            return super().data_received(data)
        writer.reading = True
        try:
            super().data_received(data)
        finally:
            writer.reading = False
            writer.flush()

    def _spawn_event(self, xml: ET.Element) -> None:
        if self.take is None or not self.take(xml):
            super()._spawn_event(xml)


def make_component(config: Config, domain: str, backend: Backend, accounting: Accounting) -> UploadComponent:
    """The component serving ``domain``, its plugins registered (call inside the running loop)."""
    settings = config.http_upload
    component = config.component
    xmpp = UploadComponent(settings.service_jid(domain), component.secret, component.server, component.port)
    xmpp.register_plugin(
        "http_upload_server",
        {
            "settings": settings,
            "domain": domain,
            "backend_instance": backend,
            "accounting": accounting,
            "own_stream": True,
        },
    )
    plugin = xmpp.plugin["http_upload_server"]  # type: ignore[typeddict-item]
    xmpp.take, xmpp.writer = plugin.take_element, plugin.writer
    size = "unlimited" if settings.max_file_size is None else f"{settings.max_file_size} bytes"
    iqdisc = settings.iqdisc.type
    if iqdisc == "queues":
        iqdisc += f" ({settings.iqdisc.workers} workers)"
    log.info(
        "component %s via %s:%d: backend %s, max file size %s, iqdisc %s",
        xmpp.boundjid.bare, component.server, component.port, settings.backend, size, iqdisc,
    )
    return xmpp


class Link:
    """Keeps one component connected to its server."""

    def __init__(
        self,
        xmpp: ComponentXMPP,
        server: str,
        port: int,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        *,
        standby: bool = True,
    ) -> None:
        self.xmpp = xmpp
        self.standby = standby
        self.server = server
        self.port = port
        self.handshake_timeout = handshake_timeout
        self.name = xmpp.boundjid.bare
        self._ended: asyncio.Future[str] | None = None
        self._started = False
        self._stream_error = ""
        xmpp.add_event_handler("session_start", self._on_session_start)
        xmpp.add_event_handler("stream_error", self._on_stream_error)
        xmpp.add_event_handler("connection_failed", self._on_connection_failed)
        xmpp.add_event_handler("disconnected", self._on_disconnected)

    async def run(self) -> None:
        """Connect, and again after each end of session; raise :class:`ComponentRefused` when
        the server turns the component away."""
        delay = FIRST_DELAY
        while True:
            why = await self._session()
            if self._started:
                delay = FIRST_DELAY
            log.warning("component %s: %s; connecting again in %g s", self.name, why, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)

    async def _session(self) -> str:
        """One connection, from connect() until it ends; returns why it ended."""
        self._ended = asyncio.get_running_loop().create_future()
        self._started = False
        self._stream_error = ""
        self.xmpp.connect(self.server, self.port)
        timer = asyncio.get_running_loop().call_later(self.handshake_timeout, self._on_handshake_timeout)
        try:
            return await self._ended
        finally:
            timer.cancel()

    async def drain(self, timeout: float) -> None:
        """Answer or refuse every pending slot request (see the plugin's ``drain``)."""
        await self.xmpp.plugin["http_upload_server"].drain(timeout)  # type: ignore[typeddict-item]

    async def close(self) -> None:
        """Stop connecting and close the stream (abort after 1 s without the server's answer)."""
        self.xmpp.cancel_connection_attempt()
        if self.xmpp.is_connected():
            await self.xmpp.disconnect(wait=1.0, reason="shutting down")

    def _end(self, why: str | BaseException) -> None:
        if self._ended is None or self._ended.done():
            return
        if isinstance(why, BaseException):
            self._ended.set_exception(why)
        else:
            self._ended.set_result(why)

    def _on_handshake_timeout(self) -> None:
        if self._started:
            return
        self._end(f"no handshake from {self.server}:{self.port} within {self.handshake_timeout:g} s")
        self.xmpp.cancel_connection_attempt()
        self.xmpp.abort()

    def _on_session_start(self, _event: Any) -> None:
        self._started = True
        log.info("component %s: connected to %s:%d", self.name, self.server, self.port)

    def _on_stream_error(self, error: StreamError) -> None:
        condition = error["condition"]
        if condition in FATAL_STREAM_ERRORS:
            self._end(ComponentRefused(f"component {self.name}: {FATAL_STREAM_ERRORS[condition]}"))
        elif condition == "conflict" and not self.standby:
            self._end(
                ComponentRefused(
                    f"component {self.name}: the server keeps one connection per component name (conflict)",
                    CONFLICT_STATUS,
                )
            )
        self._stream_error = f"{condition}: {error['text']}" if error["text"] else condition

    def _on_connection_failed(self, error: Any) -> None:
        # Our own back-off replaces slixmpp's (which would go on trying in the background).
        self.xmpp.cancel_connection_attempt()
        self._end(f"cannot connect to {self.server}:{self.port} ({error})")

    def _on_disconnected(self, _reason: Any) -> None:
        if self._stream_error:
            self._end(f"the server closed the stream ({self._stream_error})")
        else:
            self._end("the session ended" if self._started else "the connection closed before the handshake")
