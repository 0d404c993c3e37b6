"""The ``[metrics]`` endpoint of ``serve``: each plugin's :class:`SlotMetrics`, read through a
prometheus_client collector at scrape time (the plugins stay the only bookkeepers).

Needs the ``metrics`` extra (``prometheus-client``); :mod:`slixmpp_http_upload.serve` imports this
module only when ``metrics.port`` is set.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from prometheus_client import CollectorRegistry, start_http_server
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


def start_metrics_server(settings: MetricsSettings, sources: Sequence[SlotMetrics]) -> Callable[[], None]:
    """Serve the metrics on ``settings.host:settings.port`` from a daemon thread (Prometheus text,
    or OpenMetrics when the scraper asks for it); return the function that stops it."""
    assert settings.port is not None
    registry = CollectorRegistry()
    registry.register(SlotMetricsCollector(sources))
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
