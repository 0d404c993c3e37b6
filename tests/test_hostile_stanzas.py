"""One stanza never takes the service down (issue 7): each stanza that did, through a real stream.

``serve`` runs as its own process, connected to a stand-in XEP-0114 server
(:mod:`component_server`) that writes each hostile stanza exactly as given, as a server that
routes whatever it gets would. After each one, another user's slot request and disco query
must be answered on the same stream, and the hostile IQ must have had exactly one answer.
The stanzas Prosody forwards from a user are sent that way too, by a user to a ``serve`` behind
a real Prosody, and another user's slixmpp client then asks for a slot: all but malformed
addresses and ids with tab, LF or CR (which Prosody does not pass on intact) and two payloads
(which Prosody 0.12 refuses itself: "Incorrect number of children for IQ stanza").
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from slixmpp import ClientXMPP

from component_server import Answers, ComponentServer
from conftest import ServeProcess
from helpers import OFFLINE_S3, UPLOAD_JID, XmppClients, offline_serve_config, serve_config
from hostile import through_client
from servers import Prosody

ALICE = "alice@localhost/phone"
BOB = "bob@localhost/laptop"
NS = "urn:xmpp:http:upload:0"
NS_V02 = "urn:xmpp:http:upload"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
DISCO_ITEMS = "http://jabber.org/protocol/disco#items"
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
DEEP = "<x>" * 500 + "</x>" * 500
SERVING_IDS = (f"serving-{n}" for n in itertools.count())


@dataclass
class Link:
    server: ComponentServer
    process: ServeProcess

    async def answers(self, stanza: str, ident: str | None) -> list[ET.Element]:
        """Send ``stanza``, then another user's slot request and disco#info query; wait for
        those two and return what answered ``ident`` (None: a stanza that gets no answer)."""
        slot, info = next(SERVING_IDS), next(SERVING_IDS)
        await self.server.send(
            stanza
            + f"<iq type='get' id='{slot}' from='{BOB}' to='{UPLOAD_JID}'>"
            f"<request xmlns='{NS}' filename='b.txt' size='5'/></iq>"
            f"<iq type='get' id='{info}' from='{BOB}' to='{UPLOAD_JID}'><query xmlns='{DISCO_INFO}'/></iq>"
        )
        await self.server.answers.wait_for({slot, info} | ({ident} if ident is not None else set()))
        [slot_reply] = self.server.answers.by_id[slot]
        assert slot_reply.find(f"{{{NS}}}slot") is not None, ET.tostring(slot_reply)
        [info_reply] = self.server.answers.by_id[info]
        assert info_reply.get("type") == "result"
        assert self.server.connections == 1 and self.server.connected, "the component lost its stream"
        assert self.process.running
        return self.server.answers.by_id.get(ident, []) if ident is not None else []

    async def only_answer(self, stanza: str, ident: str) -> ET.Element:
        """The one answer to ``stanza``, whose id is ``ident`` (forgotten then: the next test may
        use the same id)."""
        [reply] = await self.answers(stanza, ident)
        del self.server.answers.by_id[ident]
        return reply


@pytest.fixture(scope="module")
async def link(start_serve: object) -> AsyncIterator[Link]:
    async with ComponentServer(UPLOAD_JID) as server:
        process = start_serve(offline_serve_config(server.port))  # type: ignore[operator]
        await server.wait_for_session()
        yield Link(server, process)
        assert " ERROR " not in process.stderr, process.stderr


def condition(reply: ET.Element) -> str:
    """The defined condition of an error reply, as ``type/condition``."""
    assert reply.get("type") == "error", ET.tostring(reply)
    error = next(child for child in reply if child.tag.endswith("}error"))
    [defined] = [child for child in error if child.tag.startswith(f"{{{STANZAS}}}") and not child.tag.endswith("text")]
    return f"{error.get('type')}/{defined.tag.rpartition('}')[2]}"


def iq(ident: str, payload: str, *, kind: str = "get", sender: str = ALICE, to: str = UPLOAD_JID) -> str:
    return f"<iq type='{kind}' id='{ident}' from='{sender}' to='{to}'>{payload}</iq>"


# ------------------------------------------------------------- 1, 2, 3: deep nesting


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(f"<request xmlns='{NS}' filename='a.txt' size='10'>{DEEP}</request>", id="1-valid-request"),
        pytest.param(f"<request xmlns='{NS}' filename='a.txt' size='-1'>{DEEP}</request>", id="2-invalid-request"),
        pytest.param(
            f"<request xmlns='{NS_V02}'><filename>{DEEP}a.txt</filename><size>10</size></request>",
            id="2-legacy-filename",
        ),
        pytest.param(
            f"<request xmlns='{NS}' filename='a.txt' size='10'><unknown xmlns='urn:example'>{DEEP}</unknown>"
            "</request>",
            id="2-unknown-child",
        ),
        pytest.param(f"<unknown xmlns='urn:example'>{DEEP}</unknown>", id="2-unknown-payload"),
        pytest.param(f"<query xmlns='{DISCO_INFO}'>{DEEP}</query>", id="3-disco-info"),
    ],
)
async def test_deep_nesting_is_a_bad_request(link: Link, payload: str) -> None:
    assert condition(await link.only_answer(iq("deep", payload), "deep")) == "modify/bad-request"


async def test_nesting_in_a_message_or_presence_is_dropped(link: Link) -> None:
    for stanza in (
        f"<message id='deep-message' from='{ALICE}' to='{UPLOAD_JID}'><body>hi</body>{DEEP}</message>",
        f"<presence id='deep-presence' from='{ALICE}' to='{UPLOAD_JID}'>{DEEP}</presence>",
    ):
        await link.answers(stanza, None)
    assert "deep-message" not in link.server.answers.by_id and "deep-presence" not in link.server.answers.by_id


# ------------------------------------------------------------------- 4: disco sets


@pytest.mark.parametrize("namespace", [DISCO_INFO, DISCO_ITEMS], ids=["info", "items"])
async def test_disco_set_is_answered(link: Link, namespace: str) -> None:
    reply = await link.only_answer(iq("disco-set", f"<query xmlns='{namespace}'/>", kind="set"), "disco-set")
    assert condition(reply) == "cancel/feature-not-implemented"


# ---------------------------------------------------------------- 5: malformed JIDs


MALFORMED = ["a@b@c", "@localhost", "alice@", "a b@localhost/x", "x" * 1100 + "@localhost"]


@pytest.mark.parametrize("sender", MALFORMED, ids=["two-at", "empty-local", "empty-domain", "space", "long-local"])
async def test_malformed_sender_gets_jid_malformed(link: Link, sender: str) -> None:
    stanza = iq("bad-from", f"<request xmlns='{NS}' filename='a.txt' size='10'/>", sender=sender)
    reply = await link.only_answer(stanza, "bad-from")
    assert condition(reply) == "modify/jid-malformed"
    assert (reply.get("to"), reply.get("from")) == (sender, UPLOAD_JID)


@pytest.mark.parametrize(
    "stanza",
    [
        iq("bad-to", f"<query xmlns='{DISCO_INFO}'/>", to="a@b@upload.localhost"),
        iq("bad-to", "<unknown xmlns='urn:example'/>", sender="a@b@c"),
    ],
    ids=["disco-to", "unknown-payload-from"],
)
async def test_malformed_address_on_other_iqs(link: Link, stanza: str) -> None:
    assert condition(await link.only_answer(stanza, "bad-to")) == "modify/jid-malformed"


async def test_malformed_sender_of_a_message_or_presence_is_dropped(link: Link) -> None:
    for stanza in (
        f"<message id='bad-message' from='a@b@c' to='{UPLOAD_JID}'><body>hi</body></message>",
        f"<presence id='bad-presence' from='@localhost' to='{UPLOAD_JID}'/>",
        f"<presence id='bad-probe' type='probe' from='alice@' to='{UPLOAD_JID}'/>",
    ):
        await link.answers(stanza, None)
    assert not {"bad-message", "bad-presence", "bad-probe"} & link.server.answers.by_id.keys()


# ------------------------------------------------------------ 6: two payloads, one reply


@pytest.mark.parametrize(
    "payload",
    [
        f"<query xmlns='{DISCO_INFO}'/><request xmlns='{NS}' filename='a.txt' size='10'/>",
        f"<request xmlns='{NS}' filename='a.txt' size='10'/><query xmlns='{DISCO_INFO}'/>",
        f"<query xmlns='{DISCO_INFO}'/><query xmlns='{DISCO_ITEMS}'/>",
        f"<request xmlns='{NS}' filename='a.txt' size='10'/><request xmlns='{NS}' filename='b.txt' size='10'/>",
    ],
    ids=["disco-then-request", "request-then-disco", "info-and-items", "two-requests"],
)
async def test_two_payloads_get_one_bad_request(link: Link, payload: str) -> None:
    assert condition(await link.only_answer(iq("two", payload), "two")) == "modify/bad-request"


# ------------------------------------------------------------- 7: ids with whitespace


@pytest.mark.parametrize("reference", ["&#9;", "&#10;", "&#13;", "a&#9;b&#13;&#10;"], ids=["tab", "lf", "cr", "all"])
@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        (f"<request xmlns='{NS}' filename='a.txt' size='10'/>", "result"),
        (f"<request xmlns='{NS}' filename='a.txt' size='-1'/>", "modify/bad-request"),
        (f"<query xmlns='{DISCO_INFO}'/>", "result"),
        ("<unknown xmlns='urn:example'/>", "cancel/feature-not-implemented"),
    ],
    ids=["slot", "refusal", "disco", "unknown"],
)
async def test_id_with_whitespace_comes_back_intact(link: Link, reference: str, payload: str, expected: str) -> None:
    ident = "x" + ET.fromstring(f"<a b='{reference}'/>").get("b")
    reply = await link.only_answer(iq(f"x{reference}", payload), ident)
    assert (reply.get("type") if expected == "result" else condition(reply)) == expected


# ------------------------------------------------------------ the same, from a user via Prosody


@dataclass
class ViaProsody:
    process: ServeProcess
    send: Callable[[str], Awaitable[None]]
    answers: Answers
    bob: ClientXMPP


@pytest.fixture(scope="module")
async def via_prosody(prosody: Prosody, start_serve: Any) -> AsyncIterator[ViaProsody]:
    process = start_serve(serve_config(prosody, OFFLINE_S3, max_file_size=1000))
    async with XmppClients() as clients:
        alice = await clients.connect(prosody, "alice")
        bob = await clients.connect(prosody, "bob")
        await clients.wait_for_service(alice, UPLOAD_JID)
        send, answers = through_client(alice)
        yield ViaProsody(process, send, answers, bob)
    assert process.stderr.count("connected to") == 1, process.stderr
    assert " ERROR " not in process.stderr, process.stderr


@pytest.mark.parametrize(
    ("payload", "kind", "expected"),
    [
        pytest.param(
            f"<request xmlns='{NS}' filename='a.txt' size='10'>{DEEP}</request>", "get", "modify/bad-request", id="1"
        ),
        pytest.param(
            f"<request xmlns='{NS}' filename='a.txt' size='-1'>{DEEP}</request>", "get", "modify/bad-request", id="2"
        ),
        pytest.param(
            f"<request xmlns='{NS_V02}'><filename>{DEEP}a.txt</filename><size>10</size></request>",
            "get",
            "modify/bad-request",
            id="2-legacy",
        ),
        pytest.param(f"<unknown xmlns='urn:example'>{DEEP}</unknown>", "get", "modify/bad-request", id="2-unknown"),
        pytest.param(f"<query xmlns='{DISCO_INFO}'>{DEEP}</query>", "get", "modify/bad-request", id="3"),
        pytest.param(f"<query xmlns='{DISCO_INFO}'/>", "set", "cancel/feature-not-implemented", id="4-info"),
        pytest.param(f"<query xmlns='{DISCO_ITEMS}'/>", "set", "cancel/feature-not-implemented", id="4-items"),
    ],
)
async def test_from_a_user_through_prosody(via_prosody: ViaProsody, payload: str, kind: str, expected: str) -> None:
    ident = f"f-{next(SERVING_IDS)}"  # through_client collects the ids that start with "f"
    await via_prosody.send(f"<iq type='{kind}' id='{ident}' to='{UPLOAD_JID}'>{payload}</iq>")
    await via_prosody.answers.wait_for({ident})
    slot = await via_prosody.bob.plugin["xep_0363"].request_slot(UPLOAD_JID, "b.txt", 5, "text/plain", timeout=10)
    assert slot["http_upload_slot"]["put"]["url"]
    [reply] = via_prosody.answers.by_id[ident]
    assert condition(reply) == expected
