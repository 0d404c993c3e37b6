"""The ``[metrics]`` endpoint of ``serve``: each plugin's :class:`SlotMetrics`, read through a
prometheus_client collector at scrape time (the plugins stay the only bookkeepers). The same
collector answers ``/metrics`` on the built-in HTTP server (:func:`metrics_handler`).

Needs the ``metrics`` extra (``prometheus-client``); ``serve`` and its HTTP server import this
module only when ``metrics.port`` is set.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, Sequence

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, Metric

from .config import MetricsSettings
from .metrics import SlotMetrics
from .options import ConfigError


class SlotMetricsCollector:
    """``xmpp_http_upload_create_slot_total``, ``xmpp_http_upload_create_slot_seconds_total`` and
    ``xmpp_http_upload_refusals_total{reason}``, each labelled with the service ``host``."""

    def __init__(self, sources: Sequence[SlotMetrics]) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        created = CounterMetricFamily("xmpp_http_upload_create_slot", "Upload slots made.", labels=["host"])
        seconds = CounterMetricFamily(
            "xmpp_http_upload_create_slot_seconds",
            "Time spent making upload slots (backend and policy included).",
            labels=["host"],
            unit="seconds",
        )
        refusals = CounterMetricFamily(
            "xmpp_http_upload_refusals", "Slot requests answered with an error.", labels=["host", "reason"]
        )
        for source in self.sources:
            created.add_metric([source.host], source.create_slot)
            seconds.add_metric([source.host], source.create_slot_seconds)
            # This runs in the HTTP server's thread while the event loop counts: dict() copies a
            # Counter in one step under the GIL, so iterating the copy is safe.
            for reason, count in sorted(dict(source.refusals).items()):
                refusals.add_metric([source.host, reason], count)
        yield from (created, seconds, refusals)


def metrics_registry(sources: Sequence[SlotMetrics]) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(SlotMetricsCollector(sources))
    return registry


def metrics_handler(sources: Sequence[SlotMetrics]) -> Callable[[web.Request], Awaitable[web.Response]]:
    """An aiohttp handler answering with the metrics in Prometheus' text format."""
    registry = metrics_registry(sources)

    async def handler(request: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(registry))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    return handler


def start_metrics_server(settings: MetricsSettings, sources: Sequence[SlotMetrics]) -> Callable[[], None]:
    """Serve the metrics on ``settings.host:settings.port`` from a daemon thread (Prometheus text,
    or OpenMetrics when the scraper asks for it); return the function that stops it."""
    assert settings.port is not None
    registry = metrics_registry(sources)
    try:
        server, _thread = start_http_server(settings.port, addr=settings.host, registry=registry)
    except OSError as error:
        raise ConfigError(
            "metrics.port", f"cannot listen on {settings.host}:{settings.port}: {error.strerror or error}"
        ) from None

    def stop() -> None:
        server.shutdown()
        server.server_close()

    return stop
