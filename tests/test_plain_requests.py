"""``serve``'s components hand a plain slot request to the plugin as the element read
(:class:`~slixmpp_http_upload.serve.UploadComponent`, :meth:`StreamGuard.plain_request
<slixmpp_http_upload.guard.StreamGuard.plain_request>`), before slixmpp builds a stanza object
of it; everything else takes slixmpp's road (the guard's filter, the handlers). Both roads must
answer the same request with the same bytes, and nothing the guard refuses may slip through the
short one.

Driven in one process: the component of ``serve.make_component`` is handed the bytes a server
would send (stream header, handshake, stanzas) and writes into a transport that keeps them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from helpers import offline_serve_config, write_toml

from slixmpp_http_upload.accounting import Accounting, open_ledger
from slixmpp_http_upload.backends import create_backend
from slixmpp_http_upload.config import load_config
from slixmpp_http_upload.serve import UploadComponent, make_component

HEADER = (
    b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'"
    b" from='upload.localhost' id='s1'>"
)
REQUEST = (
    "<iq type='{type}' id='{id}' to='{to}' from='{sender}'>"
    "<request xmlns='urn:xmpp:http:upload:0' filename='{name}' size='10' content-type='text/plain'/>{extra}</iq>"
)
TOKEN = re.compile(r"/[0-9a-f]{64}/")
SIGNATURE = re.compile(r"(X-Amz-Date=|X-Amz-Signature=)[0-9A-Za-z]+")


class Transport(asyncio.Transport):
    """Keeps what is written."""

    data = b""
    writes = 0

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.data += data
        self.writes += 1

    def is_closing(self) -> bool:
        return False


class Stream:
    """A connected component and what it wrote; ``built`` counts slixmpp's stanza objects."""

    def __init__(self, xmpp: UploadComponent) -> None:
        self.xmpp = xmpp
        self.transport = Transport()
        self.built = 0
        build = xmpp._build_stanza

        def counting(xml: Any, default_ns: str | None = None) -> Any:
            self.built += 1
            return build(xml, default_ns)

        xmpp._build_stanza = counting  # type: ignore[method-assign]

    async def answer(self, stanza: str) -> str:
        """Feed ``stanza``; the text written for it (replies of one loop turn leave together)."""
        before = len(self.transport.data)
        self.xmpp.data_received(stanza.encode())
        for _ in range(50):
            await asyncio.sleep(0)
            if len(self.transport.data) > before:
                break
        return self.transport.data[before:].decode()


@pytest.fixture
async def stream(tmp_path: Path) -> AsyncIterator[Stream]:
    document = offline_serve_config(9)
    document["http_upload"]["ledger"] = str(tmp_path / "ledger.sqlite")
    config = load_config(write_toml(tmp_path / "config.toml", document))
    accounting = Accounting(config.http_upload, open_ledger(config.http_upload))
    xmpp = make_component(config, "localhost", create_backend(config.http_upload), accounting)
    connected = Stream(xmpp)
    xmpp.connection_made(connected.transport)  # type: ignore[arg-type]
    sender = asyncio.ensure_future(xmpp.run_filters())
    xmpp.data_received(HEADER)
    xmpp.data_received(b"<handshake/>")
    await asyncio.sleep(0.05)
    connected.built = 0
    try:
        yield connected
    finally:
        sender.cancel()
        xmpp.event("session_end")  # the plugin stops its dispatcher
        accounting.ledger.close()


def request(**fields: str) -> str:
    values = {"type": "get", "id": "r1", "to": "upload.localhost", "sender": "alice@localhost/phone", "name": "a.txt"}
    return REQUEST.format(**{**values, "extra": "", **fields})


def comparable(reply: str) -> str:
    """A slot reply without what is fresh in each: the token, the date and the signature."""
    return SIGNATURE.sub(r"\1…", TOKEN.sub("/…/", reply))


async def test_a_plain_request_is_answered_without_a_stanza_object(stream: Stream) -> None:
    reply = await stream.answer(request())
    assert reply.startswith('<iq type="result" id="r1" from="upload.localhost" to="alice@localhost/phone">')
    assert "<slot " in reply
    assert stream.built == 0


async def test_both_roads_write_the_same_reply(stream: Stream) -> None:
    short = await stream.answer(request(id="same"))
    # the same request, but with its service address in capitals: equal as a JID, not as written
    # (so not plain), which slixmpp's road serves all the same
    long = await stream.answer(request(id="same", to="UPLOAD.localhost"))
    assert stream.built == 1
    assert comparable(short) == comparable(long.replace('from="UPLOAD.localhost"', 'from="upload.localhost"'))
    assert TOKEN.findall(short) != TOKEN.findall(long)  # each its own token


@pytest.mark.parametrize(
    ("fields", "answer"),
    [
        ({"type": "set"}, "<not-allowed "),
        ({"extra": "<request xmlns='urn:xmpp:http:upload:0' filename='b' size='1'/>"}, "<bad-request "),
        ({"sender": "a@b@c"}, "<jid-malformed "),
    ],
)
async def test_what_is_not_plain_takes_slixmpps_road(stream: Stream, fields: dict[str, str], answer: str) -> None:
    reply = await stream.answer(request(**fields))
    assert answer in reply
    assert stream.built == 1


async def test_a_disco_query_to_the_service_takes_slixmpps_road(stream: Stream) -> None:
    query = "<iq type='get' id='d1' to='upload.localhost' from='alice@localhost/p'>"
    query += "<query xmlns='http://jabber.org/protocol/disco#info'/></iq>"
    reply = await stream.answer(query)
    assert "urn:xmpp:http:upload:0" in reply and 'type="result"' in reply
    assert stream.built == 1


async def test_a_request_holding_too_many_elements_is_refused_unread(stream: Stream) -> None:
    nested = "<x xmlns='urn:example'>" + "<y/>" * 70 + "</x>"
    payload = f"<request xmlns='urn:xmpp:http:upload:0' filename='a' size='1'>{nested}</request>"
    reply = await stream.answer(f"<iq type='get' id='big' to='upload.localhost' from='alice@localhost/p'>{payload}</iq>")
    assert 'type="error"' in reply and "<bad-request " in reply
    assert stream.built == 1


async def test_the_replies_to_one_read_leave_in_one_write_when_it_is_done(
    stream: Stream, monkeypatch: pytest.MonkeyPatch
) -> None:
    loop = stream.xmpp.loop
    scheduled: list[object] = []
    schedule = loop.call_soon

    def call_soon(callback: Any, *args: Any, **kwargs: Any) -> asyncio.Handle:
        scheduled.append(callback)
        return schedule(callback, *args, **kwargs)

    monkeypatch.setattr(loop, "call_soon", call_soon)
    before = stream.transport.writes
    # three plain requests and one that takes slixmpp's road, in one read
    read = request(id="a") + request(id="b", to="UPLOAD.localhost") + request(id="c") + request(id="d")
    stream.xmpp.data_received(read.encode())
    assert stream.transport.writes == before + 1  # written before data_received returned
    assert stream.xmpp.writer.flush not in scheduled  # and no turn of the loop asked for it
    replies = stream.transport.data.decode()
    assert [f'id="{name}"' in replies for name in "abcd"] == [True] * 4


async def test_a_request_that_cannot_even_be_refused_does_not_stop_the_stream(
    stream: Stream, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = stream.xmpp.plugin["http_upload_server"]
    rules, writer = plugin.rules, plugin.writer

    def broken(address: str) -> None:
        raise RuntimeError("a bug")

    def cannot_send(reply: object) -> None:
        raise RuntimeError("another bug")

    monkeypatch.setattr(rules, "requester", broken)
    monkeypatch.setattr(writer, "send", cannot_send)
    assert await stream.answer(request(id="lost")) == ""  # data_received did not raise
    assert "Dropped a slot request that could not be answered" in caplog.text
    monkeypatch.undo()
    assert 'id="next"' in await stream.answer(request(id="next"))
