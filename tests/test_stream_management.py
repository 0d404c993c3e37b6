"""A bot (``ClientXMPP``) with XEP-0198 stream management answers slot requests, through a real
Prosody 0.12 (``mod_smacks``), and the server's count of what the bot sent stays right.

Stream management numbers every stanza a client sends; the server acks the count (``<a h=N/>``)
and slixmpp drops what it acked from its resend queue. A reply written past slixmpp's send queue
would not be counted: the server's ``h`` would then run ahead of the bot's count, slixmpp would
log "Inconsistent sequence numbers" and forget stanzas it never had acked — and after a resume
the server would drop or repeat replies. The plugin must therefore send every reply through
slixmpp's queue there (see :mod:`slixmpp_http_upload.wire`), while a component of ``serve``
writes them directly (``test_plugin_stanzas`` and the end-to-end tests).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Iterator

import pytest
from slixmpp import ClientXMPP

from helpers import XmppClients, request_slot
from servers import Prosody, find_prosody
from slixmpp_http_upload.s3 import S3Backend
from slixmpp_http_upload.sigv4 import Credentials
from slixmpp_http_upload.baseurl import parse_base_url

NS = "urn:xmpp:http:upload:0"
REQUESTS = 40
SMACKS = 'modules_enabled = { "roster"; "saslauth"; "disco"; "ping"; "posix"; "smacks"; }'


@pytest.fixture(scope="module")
def prosody_sm() -> Iterator[Prosody]:
    if find_prosody() is None:
        pytest.skip("prosody is not installed")
    with Prosody(extra_config=SMACKS) as server:
        for user in ("bot", "alice"):
            server.register(user, secrets.token_hex(8))
        yield server


class Inconsistent(logging.Handler):
    """Collects slixmpp's complaint about ack numbers."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def make_bot(server: Prosody) -> ClientXMPP:
    bot = ClientXMPP(server.jid("bot") + "/uploads", server.users["bot"])
    for plugin in ("xep_0030", "xep_0004", "xep_0128", "xep_0198"):
        bot.register_plugin(plugin)
    backend = S3Backend(
        parse_base_url("http://127.0.0.1:9/bucket"), "us-east-1", Credentials("AKIDSMTEST", "secret-not-real")
    )
    bot.register_plugin("http_upload_server", {"backend_instance": backend})
    return bot


async def changed(condition: Callable[[], bool]) -> None:
    while not condition():
        await asyncio.sleep(0.05)


async def test_bot_with_stream_management_keeps_the_servers_count(prosody_sm: Prosody) -> None:
    complaints = Inconsistent()
    logging.getLogger("slixmpp.plugins.xep_0198").addHandler(complaints)
    try:
        async with XmppClients() as clients:
            bot = make_bot(prosody_sm)
            enabled = asyncio.get_running_loop().create_future()
            bot.add_event_handler("sm_enabled", lambda _: enabled.done() or enabled.set_result(True))
            await clients.login(bot, prosody_sm)
            await asyncio.wait_for(enabled, 15)
            sm = bot.plugin["xep_0198"]
            assert not bot.plugin["http_upload_server"].writer.direct()  # xep_0198's filter is there

            alice = await clients.connect(prosody_sm, "alice")
            answers = await asyncio.gather(*(request_slot(alice, bot.boundjid.full, f"f{n}.jpg") for n in range(REQUESTS)))
            for number, answer in enumerate(answers):
                slot = answer.xml.find(f"{{{NS}}}slot")  # type: ignore[attr-defined]
                assert slot is not None, answer
                assert f"/f{number}.jpg?" in slot.find(f"{{{NS}}}put").get("url")

            before = sm.last_ack
            sm.request_ack()
            await asyncio.wait_for(changed(lambda: sm.last_ack != before), 15)  # the server's <a h=…/>
            assert sm.seq >= REQUESTS  # every reply was counted …
            assert sm.last_ack == sm.seq  # … and the server counted exactly as many
            assert not sm.unacked_queue
    finally:
        logging.getLogger("slixmpp.plugins.xep_0198").removeHandler(complaints)
    assert complaints.lines == []
