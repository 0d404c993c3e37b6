"""Seeded adversarial stanzas (:mod:`hostile`) through real streams: straight from a stand-in
XEP-0114 server, and from an ordinary user through a real Prosody. Every IQ get/set to the
service is answered exactly once with its id intact, no result or error is answered, and the
same ``serve`` process keeps the same stream throughout, with no ERROR logged and a flat RSS.

The suite runs :data:`COUNT` stanzas per stream; ``bench/fuzz_stanzas.py`` runs the full count.
"""

from __future__ import annotations

from typing import Any

from component_server import ComponentServer
from helpers import OFFLINE_S3, UPLOAD_JID, offline_serve_config, serve_config
from hostile import Generator, Verdict, fuzz, through_client
from servers import Prosody

SEED = 7
COUNT = 1500
SENDERS = ["alice@localhost/phone", "bob@localhost/laptop", "carol@remote.example/pc"]
RSS_GROWTH_MB = 10.0
"""Allowed growth from the first quarter of the stanzas to the end (one 1 MB stanza is parsed,
copied and freed several times over; the allocator keeps some of it)."""


def assert_held(verdict: Verdict, stderr: str) -> None:
    assert not verdict.problems, "\n".join(verdict.problems[:20])
    assert verdict.answered_once == verdict.must_answer > COUNT // 2
    assert " ERROR " not in stderr, stderr[-5000:]
    assert stderr.count("connected to") == 1, stderr[-5000:]
    first_quarter, *_, end = verdict.rss_mb[1:]
    assert end - first_quarter < RSS_GROWTH_MB, verdict.rss_mb


async def test_fuzz_through_a_stand_in_server(start_serve: Any) -> None:
    async with ComponentServer(UPLOAD_JID) as server:
        process = start_serve(offline_serve_config(server.port))
        await server.wait_for_session()
        generator = Generator(
            SEED, UPLOAD_JID, SENDERS, addressing=True, whitespace_ids=True, max_value=100_000
        )
        verdict = await fuzz(generator, COUNT, server.send, server.answers, process.proc.pid)
        assert server.connections == 1 and server.connected and process.running
    assert_held(verdict, process.stderr)


async def test_fuzz_through_prosody(prosody: Prosody, start_serve: Any, xmpp_clients: Any) -> None:
    process = start_serve(serve_config(prosody, OFFLINE_S3, max_file_size=1000))
    xmpp = await xmpp_clients.connect(prosody)
    await xmpp_clients.wait_for_service(xmpp, UPLOAD_JID)
    send, answers = through_client(xmpp)
    # Prosody 0.12 writes tab, LF and CR raw in the attributes it forwards (they come back as
    # spaces whoever answers), and stamps a valid ``from`` on what a user sends.
    generator = Generator(SEED, UPLOAD_JID, [], addressing=False, whitespace_ids=False, max_value=20_000)
    verdict = await fuzz(generator, COUNT, send, answers, process.proc.pid)
    assert xmpp.is_connected() and process.running
    assert_held(verdict, process.stderr)
