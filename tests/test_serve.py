"""``serve``: configuration checks, signals, the metrics endpoint, and servers that stall or
shut down.

The component runs as ``python -m slixmpp_http_upload serve`` against the shared Prosody. Its S3
backend points at a bucket that is never contacted: making a slot does no I/O.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families
from slixmpp import ComponentXMPP
from slixmpp.exceptions import IqError

from helpers import OFFLINE_S3, UPLOAD_JID, CredentialsEndpoint, empty_aws_chain, serve_config
from servers import Prosody, free_ports
from slixmpp_http_upload import cli
from slixmpp_http_upload.serve import DRAIN_TIMEOUT, Link

MAX_FILE_SIZE = 1000
S3 = OFFLINE_S3
S3_TABLE = "[http_upload.s3]\n" + "".join(f'{key} = "{value}"\n' for key, value in S3.items())


# --------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("component", "message"),
    [
        ('domains = ["localhost"]', "component.secret: is required to serve"),
        ('secret = "s3cr3t"', "component.domains: must list at least one domain to serve"),
    ],
)
def test_serve_refuses_incomplete_component_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], component: str, message: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(f"[component]\n{component}\n{S3_TABLE}")
    assert cli.main(["serve", "-c", str(config)]) == 2
    err = capsys.readouterr().err
    assert f"configuration error: {message}" in err
    assert "s3cr3t" not in err


def metrics_config(directory: Path, port: int) -> Path:
    config = directory / "c.toml"
    config.write_text(f'[component]\nsecret = "x"\ndomains = ["localhost"]\n[metrics]\nport = {port}\n{S3_TABLE}')
    return config


def test_metrics_port_needs_prometheus_client(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # makes the import fail
    config = metrics_config(tmp_path, 9999)
    assert cli.main(["serve", "-c", str(config)]) == 2
    assert "metrics.port: needs prometheus-client: pip install 'slixmpp-http-upload[metrics]'" in (
        capsys.readouterr().err
    )


def test_metrics_port_in_use_is_a_configuration_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = metrics_config(tmp_path, port)
        assert cli.main(["serve", "-c", str(config)]) == 2
    message = f"metrics.port: cannot listen on 127.0.0.1:{port}: Address already in use"
    assert message in capsys.readouterr().err


# ------------------------------------------------------------------- processes


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_signal_stops_serve_cleanly(
    signum: signal.Signals, prosody: Prosody, start_serve: Any, xmpp_clients: Any
) -> None:
    process = start_serve(serve_config(prosody, S3, max_file_size=MAX_FILE_SIZE))
    xmpp = await xmpp_clients.connect(prosody)
    await xmpp_clients.wait_for_service(xmpp, UPLOAD_JID)
    process.proc.send_signal(signum)
    assert await asyncio.to_thread(process.wait, 5) == 0
    assert "Traceback" not in process.stderr
    assert "stopped" in process.stderr
    with pytest.raises(IqError):  # the server no longer has the component
        await xmpp.plugin["xep_0030"].get_info(UPLOAD_JID, timeout=5)


async def test_sigterm_refuses_what_is_still_pending_after_the_grace_period(
    prosody: Prosody, start_serve: Any, xmpp_clients: Any, tmp_path: Path
) -> None:
    # No key configured: credentials come from a container endpoint that takes longer than
    # the grace period, so the request is still pending when it ends.
    s3 = {key: value for key, value in S3.items() if key not in ("access_key_id", "secret_access_key")}
    with CredentialsEndpoint(("AK", "SK", "", 3600), delay=DRAIN_TIMEOUT + 10) as endpoint:
        environment = {k: v for k, v in empty_aws_chain(tmp_path).items() if v is not None}
        process = start_serve(
            serve_config(prosody, s3, max_file_size=MAX_FILE_SIZE), {**environment, **endpoint.environment}
        )
        xmpp = await xmpp_clients.connect(prosody)
        await xmpp_clients.wait_for_service(xmpp, UPLOAD_JID)
        upload = xmpp.plugin["xep_0363"]
        pending = asyncio.ensure_future(upload.request_slot(UPLOAD_JID, "a.txt", 10, "text/plain", timeout=60))
        while endpoint.fetches == 0:  # the slot request is waiting for credentials
            assert not pending.done()
            await asyncio.sleep(0.05)
        process.proc.send_signal(signal.SIGTERM)
        with pytest.raises(IqError) as refusal:
            await pending
        error = refusal.value.iq["error"]
        assert (error["type"], error["condition"]) == ("wait", "service-unavailable")
        assert await asyncio.to_thread(process.wait, 60) == 0
    assert "Traceback" not in process.stderr


async def test_metrics_endpoint_counts_slots_and_refusals(
    prosody: Prosody, start_serve: Any, xmpp_clients: Any
) -> None:
    port = free_ports(1)[0]
    process = start_serve(serve_config(prosody, S3, max_file_size=MAX_FILE_SIZE, metrics={"port": port}))
    xmpp = await xmpp_clients.connect(prosody)
    await xmpp_clients.wait_for_service(xmpp, UPLOAD_JID)
    upload = xmpp.plugin["xep_0363"]
    await upload.request_slot(UPLOAD_JID, "a.txt", 10, "text/plain", timeout=5)
    await upload.request_slot(UPLOAD_JID, "b.txt", MAX_FILE_SIZE, "text/plain", timeout=5)
    with pytest.raises(IqError):
        await upload.request_slot(UPLOAD_JID, "c.txt", MAX_FILE_SIZE + 1, "text/plain", timeout=5)

    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"}
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with await asyncio.to_thread(opener.open, request, timeout=5) as response:
        assert response.headers["Content-Type"].startswith("application/openmetrics-text")
        text = response.read().decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    host = ("host", UPLOAD_JID)
    assert samples[("xmpp_http_upload_create_slot_total", (host,))] == 2
    assert 0 < samples[("xmpp_http_upload_create_slot_seconds_total", (host,))] < 1
    assert samples[("xmpp_http_upload_refusals_total", (host, ("reason", "file-too-large")))] == 1

    process.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 5) == 0


async def test_files_kept_for_ever_count_against_the_quota_after_a_restart(
    prosody: Prosody, start_serve: Any, xmpp_clients: Any, tmp_path: Path
) -> None:
    """``serve`` holds in memory only the records of files that expire (``Ledger(lasting=False)``),
    but its limits count every record of its ledger file."""
    document = serve_config(prosody, S3, max_file_size=MAX_FILE_SIZE)
    document["http_upload"] |= {"total_quota": 25, "ledger": str(tmp_path / "ledger.sqlite")}
    xmpp = await xmpp_clients.connect(prosody)
    upload = xmpp.plugin["xep_0363"]
    for run in ("first", "restarted"):
        process = start_serve(document)
        await xmpp_clients.wait_for_service(xmpp, UPLOAD_JID)
        if run == "first":
            for name in ("a.txt", "b.txt"):
                await upload.request_slot(UPLOAD_JID, name, 10, "text/plain", timeout=5)
            process.proc.send_signal(signal.SIGTERM)
            assert await asyncio.to_thread(process.wait, 5) == 0
    with pytest.raises(IqError) as refused:
        await upload.request_slot(UPLOAD_JID, "c.txt", 10, "text/plain", timeout=5)
    assert refused.value.iq["error"]["condition"] == "resource-constraint"
    await upload.request_slot(UPLOAD_JID, "d.txt", 5, "text/plain", timeout=5)  # what still fits
    process.proc.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 5) == 0


# --------------------------------------------------------------- fake servers

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@contextlib.asynccontextmanager
async def link_to(handler: Handler, **link_options: float) -> AsyncIterator[tuple[asyncio.Task[None], int]]:
    """A running :class:`Link` (its task, and the port) to a server on 127.0.0.1 whose every
    connection ``handler`` serves; all stopped on exit."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    link = Link(ComponentXMPP(UPLOAD_JID, "secret", "127.0.0.1", port), "127.0.0.1", port, **link_options)
    task = asyncio.create_task(link.run())
    try:
        yield task, port
    finally:
        task.cancel()
        await link.close()
        server.close()
        await server.wait_closed()


async def until_connected_twice(connections: list[asyncio.StreamWriter], timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while len(connections) < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


async def test_a_server_that_never_completes_the_handshake_is_retried() -> None:
    """A server that takes the TCP connection and then says nothing must not hold the component
    for ever: the link drops that connection and connects again."""
    opened, dropped = [], []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(writer)
        await reader.read()  # take the stream header, answer nothing, until the client hangs up
        dropped.append(writer)
        writer.close()

    async with link_to(silent, handshake_timeout=0.3):
        await until_connected_twice(opened)  # 0.3 s, then 1 s of back-off
        assert len(opened) >= 2, "no second connection"
        assert dropped and dropped[0] is opened[0], "the silent connection was not dropped"


async def test_a_server_shutting_down_is_connected_to_again(caplog: pytest.LogCaptureFixture) -> None:
    """<system-shutdown/> is not a refusal: the link says why the session ended and connects again."""
    sessions: list[asyncio.StreamWriter] = []

    async def shutting_down(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sessions.append(writer)
        await reader.readuntil(b">")  # the stream header
        writer.write(
            b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'"
            b" from='" + UPLOAD_JID.encode() + b"' id='s1'>"
        )
        await reader.readuntil(b"</handshake>")  # any secret will do
        writer.write(b"<handshake/>")
        writer.write(
            b"<stream:error><system-shutdown xmlns='urn:ietf:params:xml:ns:xmpp-streams'/></stream:error>"
            b"</stream:stream>"
        )
        await writer.drain()
        writer.close()

    caplog.set_level("INFO", logger="slixmpp_http_upload.serve")
    async with link_to(shutting_down) as (task, port):
        await until_connected_twice(sessions)  # 1 s of back-off
        assert len(sessions) >= 2, caplog.text
        assert not task.done(), "a server shutting down must not stop the component"
        assert f"component {UPLOAD_JID}: connected to 127.0.0.1:{port}" in caplog.text
        assert "the server closed the stream (system-shutdown); connecting again in 1 s" in caplog.text
