"""``serve --processes N`` through real servers: ejabberd 23.01 balances one component name over
the N connections; Prosody 0.12 turns the second away, and ``serve`` says so and goes on with one.

The workers log with their process id, so the slots each one made can be told apart.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable
from typing import Any

import pytest

from conftest import ServeProcess
from helpers import request_slot
from servers import Ejabberd, Prosody

NS = "urn:xmpp:http:upload:0"
REQUESTS = 60
DUMMY_S3 = {
    "bucket_url": "http://127.0.0.1:9/bucket",  # slots are signed offline: never contacted
    "region": "us-east-1",
    "access_key_id": "AKIDPROCESSES",
    "secret_access_key": "not-a-real-secret",
}


def config(server: Prosody | Ejabberd) -> dict[str, Any]:
    return {
        "component": {
            "server": "127.0.0.1",
            "port": server.component_port,
            "secret": server.component_secret,
            "domains": [server.domain],
        },
        "http_upload": {"s3": DUMMY_S3},
    }


def wait_for_lines(serve: ServeProcess, pattern: str, count: int, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while len(lines := re.findall(pattern, serve.stderr)) < count:
        assert serve.running, serve.stderr
        assert time.monotonic() < deadline, f"{count} × {pattern!r} not logged:\n{serve.stderr}"
        time.sleep(0.1)
    return lines


async def ask_for_slots(server: Prosody | Ejabberd, xmpp_clients: Any) -> None:
    alice = await xmpp_clients.connect(server, "alice")
    await xmpp_clients.wait_for_service(alice, server.component_jid)
    answers = await asyncio.gather(*(request_slot(alice, server.component_jid, f"p{n}.jpg") for n in range(REQUESTS)))
    for number, answer in enumerate(answers):
        put = answer.xml.find(f"{{{NS}}}slot/{{{NS}}}put")
        assert put is not None and f"/p{number}.jpg?" in put.get("url"), answer


async def test_ejabberd_balances_the_workers(
    ejabberd: Ejabberd, start_serve: Callable[..., ServeProcess], xmpp_clients: Any
) -> None:
    serve = start_serve(config(ejabberd), args=("--processes", "2", "--verbose"))
    connected = wait_for_lines(serve, r"\[(\d+)\] INFO slixmpp_http_upload\.serve: component \S+: connected", 2)
    assert len(set(connected)) == 2  # two processes, each with its own connection
    await ask_for_slots(ejabberd, xmpp_clients)
    slots_by = wait_for_lines(serve, r"\[(\d+)\] DEBUG slixmpp_http_upload\.plugin: Slot for", REQUESTS)
    assert set(slots_by) == set(connected)  # ejabberd gave each some of the requests
    assert "ERROR" not in serve.stderr


async def test_prosody_keeps_one_and_serve_says_so(
    prosody: Prosody, start_serve: Callable[..., ServeProcess], xmpp_clients: Any
) -> None:
    serve = start_serve(config(prosody), args=("--processes", "2"))
    wait_for_lines(serve, r"turned away 1 of 2 connections as the same component \(conflict\)", 1)
    assert "allows one per component JID (Prosody does; ejabberd balances them); going on with 1 process" in serve.stderr
    await ask_for_slots(prosody, xmpp_clients)
    assert serve.running


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"s3": None},
            "needs a backend without the built-in HTTP server (local files and S3 redirect downloads are served "
            "from one process)",
        ),
        (
            {"s3": {**DUMMY_S3, "downloads": "redirect"}},
            "needs a backend without the built-in HTTP server (local files and S3 redirect downloads are served "
            "from one process)",
        ),
        ({"daily_quota": 1000000}, "cannot keep per-user or global limits: each process would count only its own"),
    ],
    ids=["local", "redirect", "limits"],
)
def test_processes_refused_where_one_process_is_needed(
    start_serve: Callable[..., ServeProcess], prosody: Prosody, change: dict[str, Any], message: str
) -> None:
    document = config(prosody)
    document["http_upload"] = {k: v for k, v in {**document["http_upload"], **change}.items() if v is not None}
    serve = start_serve(document, args=("--processes", "2"))
    assert serve.wait(15) == 2
    assert serve.stderr.strip().splitlines() == [f"slixmpp-http-upload: configuration error: --processes: {message}"]
