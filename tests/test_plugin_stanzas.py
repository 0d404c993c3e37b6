"""Stanza-level tests of the ``http_upload_server`` plugin: the exact XML of every reply.

Each test drives a component (or a bot) through ``slixmpp.test.SlixTest``'s mock stream.
Two things differ from plain SlixTest use, both to stay close to a real connection:

- ``recv`` hands the data to the stream from a plain event-loop callback, as an asyncio
  transport does (SlixTest calls ``data_received`` with no loop running, where a handler
  that starts a coroutine inline — iqdisc ``no_queue`` — could not even ``asyncio.sleep``);
- ``tearDown`` ends the connection the way a closed transport does (``connection_lost``,
  which fires ``session_end``); SlixTest's mock transport never does, and the plugin's
  dispatcher tasks would otherwise outlive the test. It checks that the plugin left nothing
  running, then closes the test's own event loop (made in ``setUp``).

slixmpp's components put ``<error/>`` in ``jabber:client`` (``fix_error_ns`` is off by
default), inside a ``jabber:component:accept`` stream: the expected XML spells that out.
"""

from __future__ import annotations

import asyncio
import gc
import os
import tempfile
from datetime import datetime, timedelta, timezone
import logging
import time
import unittest
from collections.abc import Iterable, Iterator
from pathlib import Path
from unittest.mock import patch
from urllib.parse import parse_qs, quote, urlsplit
from xml.etree import ElementTree as ET

import pytest
from slixmpp import JID, ComponentXMPP
from slixmpp.test import SlixTest
from slixmpp.xmlstream.handler import Callback
from slixmpp.xmlstream.matcher import MatchXPath

from helpers import AsyncioErrors, CredentialsEndpoint, empty_aws_chain, key_on_another_queue
import slixmpp_http_upload
from slixmpp_http_upload import ConfigError, HttpUploadServer, Slot, SlotRequest, TryLater
from slixmpp_http_upload.accounting import Accounting
from slixmpp_http_upload.config import parse_upload_settings
from slixmpp_http_upload.dispatch import EAGER_TASKS
from slixmpp_http_upload.ledger import IN_MEMORY, Ledger, SlotRecord

SERVICE = "upload.localhost"
ALICE = "alice@localhost/phone"
BOB = "bob@localhost/laptop"
REMOTE = "bob@remote.example/pc"
PLUGINS = ["xep_0030", "xep_0004", "xep_0128", "http_upload_server"]

NS = "urn:xmpp:http:upload:0"
NS_V02 = "urn:xmpp:http:upload"
NS_SIACS = "eu:siacs:conversations:http:upload"
NS_PURPOSE = "urn:xmpp:http:upload:purpose:0"
ALL_NS = (NS, NS_V02, NS_SIACS)
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
COMPONENT_NS = "jabber:component:accept"
DISCO_INFO = "http://jabber.org/protocol/disco#info"
MAX = 10485760

BAD_FILENAME = "The filename is missing or empty."
CONTROL_CHARS = "The filename contains control characters."
BAD_SIZE = "The size is missing or not a positive decimal integer."
TOO_LARGE = "Declared file size exceeds the host's maximum file size."
LINE_BREAK = "The content-type contains a line break."
NOT_YOURS = "This service is not for your domain."
NOT_GET = "Slot requests are IQ get."
QUEUE_FULL = "Too many slot requests; try again later."
SHUTTING_DOWN = "The upload service is shutting down; try again later."
NO_SLOT = "Could not make a slot now."


# ------------------------------------------------------------------------ fake backends


def put_url(filename: str) -> str:
    return f"https://files.example/put/{quote(filename)}?sig=1&x=2"


def get_url(filename: str) -> str:
    return f"https://files.example/get/{quote(filename)}"


class FixedBackend:
    """Deterministic slots: the URLs are made from the file name; answers without waiting."""

    def __init__(self, headers: Iterable[tuple[str, str]] = ()) -> None:
        self.headers = tuple(headers)
        self.requests: list[SlotRequest] = []

    async def create_slot(self, request: SlotRequest) -> Slot:
        self.requests.append(request)
        return Slot(put_url(request.filename), get_url(request.filename), self.headers)


class DelayBackend(FixedBackend):
    """Sleeps a per-filename delay (seconds) before answering."""

    def __init__(self, delays: dict[str, float]) -> None:
        super().__init__()
        self.delays = delays

    async def create_slot(self, request: SlotRequest) -> Slot:
        await asyncio.sleep(self.delays.get(request.filename, 0))
        return await super().create_slot(request)


class BlockedBackend(FixedBackend):
    """Waits until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.started: list[str] = []

    async def create_slot(self, request: SlotRequest) -> Slot:
        self.started.append(request.filename)
        await self.release.wait()
        return await super().create_slot(request)


class FailingBackend(FixedBackend):
    """Raises for the file name ``fail.txt``, answers otherwise."""

    async def create_slot(self, request: SlotRequest) -> Slot:
        if request.filename == "fail.txt":
            raise RuntimeError("storage is down")
        return await super().create_slot(request)


class CancelledBackend(FixedBackend):
    """Awaits, for ``cancelled.txt``, a future that something else cancelled."""

    async def create_slot(self, request: SlotRequest) -> Slot:
        if request.filename == "cancelled.txt":
            shared = asyncio.get_running_loop().create_future()
            shared.cancel()
            await shared
        return await super().create_slot(request)


class AtOnceBackend(BlockedBackend):
    """Has ``slot_now``: makes slots at once, except for ``wait.txt`` (None: it must wait, and its
    ``create_slot`` blocks until ``release``) and ``fail.txt`` (raises)."""

    def __init__(self) -> None:
        super().__init__()
        self.at_once: list[str] = []

    def slot_now(self, request: SlotRequest) -> Slot | None:
        if request.filename == "wait.txt":
            return None
        if request.filename == "fail.txt":
            raise RuntimeError("storage is down")
        self.at_once.append(request.filename)
        return Slot(put_url(request.filename), get_url(request.filename))


class UnwritableLedger(Ledger):
    """An in-memory ledger that cannot record a slot (as when its writer thread cannot start)."""

    def __init__(self) -> None:
        super().__init__(IN_MEMORY)

    def add(self, record: SlotRecord) -> None:
        raise RuntimeError("can't start new thread")


class ForbiddenHeaderBackend:
    async def create_slot(self, request: SlotRequest) -> Slot:
        return Slot(put_url(request.filename), get_url(request.filename), (("X-Foo", "bar"),))


class ThreadFailingBackend(FixedBackend):
    """Signs in a worker thread, which fails: the future awaited first ends in an exception."""

    async def create_slot(self, request: SlotRequest) -> Slot:
        def sign() -> Slot:
            raise ConnectionError("KMS unreachable")

        return await asyncio.to_thread(sign)


class TimeoutBackend(FixedBackend):
    """Waits inside ``asyncio.timeout`` (as an HTTP client library would)."""

    async def create_slot(self, request: SlotRequest) -> Slot:
        async with asyncio.timeout(5):
            await asyncio.sleep(0.01)
        return await super().create_slot(request)


# ---------------------------------------------------------------------------- XML helpers


def request_xml(
    iq_id: str,
    filename: str | None = "a.txt",
    size: str | None = "3",
    content_type: str | None = None,
    *,
    ns: str = NS,
    sender: str = ALICE,
    iq_type: str = "get",
    children: bool | None = None,
) -> str:
    """A slot request; values are XML text (escape yourself). Attributes under ``:0``
    unless ``children``; child elements in the legacy namespaces."""
    fields = {"filename": filename, "size": size, "content-type": content_type}
    if children is None:
        children = ns != NS
    if children:
        inner = "".join(f"<{name}>{value}</{name}>" for name, value in fields.items() if value is not None)
        payload = f'<request xmlns="{ns}">{inner}</request>'
    else:
        attributes = "".join(f' {name}="{value}"' for name, value in fields.items() if value is not None)
        payload = f'<request xmlns="{ns}"{attributes}/>'
    return f'<iq type="{iq_type}" id="{iq_id}" from="{sender}" to="{SERVICE}">{payload}</iq>'


def slot_xml(iq_id: str, filename: str, *, ns: str = NS, headers: str = "", to: str = ALICE) -> str:
    put, get = put_url(filename).replace("&", "&amp;"), get_url(filename)
    if ns == NS:
        payload = f'<slot xmlns="{ns}"><put url="{put}">{headers}</put><get url="{get}"/></slot>'
    else:
        payload = f'<slot xmlns="{ns}"><put>{put}</put><get>{get}</get></slot>'
    return f'<iq type="result" id="{iq_id}" from="{SERVICE}" to="{to}">{payload}</iq>'


def error_xml(
    iq_id: str,
    error_type: str,
    condition: str,
    text: str | None = None,
    extra: str = "",
    *,
    to: str = ALICE,
    frm: str = SERVICE,
) -> str:
    text_xml = f'<text xmlns="{STANZAS}">{text}</text>' if text is not None else ""
    return (
        f'<iq type="error" id="{iq_id}" from="{frm}" to="{to}">'
        f'<error xmlns="jabber:client" type="{error_type}"><{condition} xmlns="{STANZAS}"/>{text_xml}{extra}</error>'
        "</iq>"
    )


def too_large_xml(ns: str, max_size: int = MAX) -> str:
    return f'<file-too-large xmlns="{ns}"><max-file-size>{max_size}</max-file-size></file-too-large>'


def disco_form(ns: str, max_size: int = MAX) -> str:
    return (
        '<x xmlns="jabber:x:data" type="result">'
        f'<field var="FORM_TYPE" type="hidden"><value>{ns}</value></field>'
        f'<field var="max-file-size"><value>{max_size}</value></field>'
        "</x>"
    )


def disco_xml(
    iq_id: str, namespaces: Iterable[str] = ALL_NS, max_size: int | None = MAX, purposes: Iterable[str] = ("message",)
) -> str:
    parts = [
        '<identity category="store" type="file" name="HTTP File Upload"/>',
        f'<feature var="{DISCO_INFO}"/>',
        '<feature var="jabber:x:data"/>',
        *(f'<feature var="{NS_PURPOSE}#{name}"/>' for name in purposes),
    ]
    for ns in namespaces:
        parts.append(f'<feature var="{ns}"/>')
        if max_size is not None:
            parts.append(disco_form(ns, max_size))
    return (
        f'<iq type="result" id="{iq_id}" from="{SERVICE}" to="{ALICE}">'
        f'<query xmlns="{DISCO_INFO}">{"".join(parts)}</query></iq>'
    )


def disco_query(iq_id: str, node: str | None = None) -> str:
    node_attr = f' node="{node}"' if node else ""
    return f'<iq type="get" id="{iq_id}" from="{ALICE}" to="{SERVICE}"><query xmlns="{DISCO_INFO}"{node_attr}/></iq>'


# ---------------------------------------------------------------------------- base class


def current_loop() -> asyncio.AbstractEventLoop | None:
    """The loop set as current for this thread, if any — without making one, which
    ``get_event_loop()`` would do (and the next ``set_event_loop`` would orphan unclosed)."""
    local = getattr(asyncio.get_event_loop_policy(), "_local", None)
    return getattr(local, "_loop", None)


class UploadTest(SlixTest):
    """SlixTest with the plugin loaded; see the module docstring for ``recv``/``tearDown``."""

    plugin: HttpUploadServer

    def start(self, *, mode: str = "component", jid: str = SERVICE, **config: object) -> None:
        config.setdefault("backend_instance", FixedBackend())
        self.stream_start(
            mode=mode,
            jid=jid,
            server="localhost",
            port=5347,
            plugins=PLUGINS,
            plugin_config={"http_upload_server": config},
        )
        # SlixTest never binds: do what a component does after its handshake.
        self.xmpp.event("session_bind", self.xmpp.boundjid)
        self.xmpp.event("session_start")
        self.plugin = self.xmpp.plugin["http_upload_server"]

    @property
    def backend(self) -> FixedBackend:
        return self.plugin.backend  # type: ignore[return-value]

    def recv(self, data: str) -> None:  # type: ignore[override]
        """Receive ``data`` as a transport delivers it: from a plain loop callback."""
        asyncio.get_event_loop().call_soon(self.xmpp.data_received, data)
        self.wait_()

    def settle(self, replies: int, timeout: float = 5) -> None:
        """Run the loop until ``replies`` stanzas wait to be read from the mock socket."""
        deadline = time.monotonic() + timeout
        while True:
            self.wait_(0.005)
            self.wait_for_send_queue()
            if self.xmpp.socket.send_queue.qsize() >= replies or time.monotonic() > deadline:
                return

    def expect(self, xml: str | None) -> None:
        """The next stanza sent is exactly ``xml`` (None: nothing was sent)."""
        self.wait_()
        self.send(xml, use_values=False, timeout=0)  # all sent by now: don't block for more

    def next_sent(self) -> ET.Element:
        """The next stanza sent, parsed (after letting tasks run)."""
        self.wait_()
        self.wait_for_send_queue()
        raw = self.xmpp.socket.next_sent()
        self.assertIsNotNone(raw, "No stanza was sent.")
        return ET.fromstring(raw)

    def setUp(self) -> None:
        # A loop of its own per test (SlixTest runs whatever loop is current; pytest-asyncio
        # replaces and closes that one for the async tests of the session).
        super().setUp()
        self.previous_loop = current_loop()
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        gc.collect()  # what earlier tests left behind complains now, not in this test
        self.asyncio_errors = AsyncioErrors()
        logging.getLogger("asyncio").addHandler(self.asyncio_errors)

    def tearDown(self) -> None:
        xmpp = self.xmpp
        try:
            if xmpp is not None:
                super().tearDown()  # stream_close: sends the footer, "aborts" the mock transport
                if xmpp.socket is not None:  # SlixTest's mock socket wraps a real, unused socket
                    xmpp.socket.socket.close()
                if xmpp.transport is not None:  # what a real transport.close() ends with
                    xmpp.connection_lost(None)
                self.wait_()
                if "http_upload_server" in xmpp.plugin:
                    self.assertNoPendingWork(xmpp.plugin["http_upload_server"])
        finally:
            self.xmpp = None  # type: ignore[assignment]
            leftover = asyncio.all_tasks(self.loop)
            for task in leftover:
                task.cancel()
            if leftover:
                self.loop.run_until_complete(asyncio.wait(leftover))
            self.loop.close()
            asyncio.set_event_loop(self.previous_loop)
            gc.collect()  # a task that failed unobserved complains when it is collected
            logging.getLogger("asyncio").removeHandler(self.asyncio_errors)
        self.assertEqual(self.asyncio_errors.messages, [], "asyncio reported errors")

    def assertNoPendingWork(self, plugin: HttpUploadServer) -> None:
        dispatcher = plugin.dispatcher
        running = [task for task in getattr(dispatcher, "tasks", ()) if not task.done()]
        running += [task for task in getattr(dispatcher, "workers", ()) if not task.done()]
        self.assertEqual(running, [], "the plugin left tasks running after the session ended")


# ----------------------------------------------------------------------------- discovery


class TestDisco(UploadTest):
    def test_disco_info_all_dialects(self) -> None:
        self.start()
        self.recv(disco_query("d1"))
        self.expect(disco_xml("d1"))

    def test_form_field_types_and_order(self) -> None:
        self.start(max_file_size=5000)
        self.recv(disco_query("d1"))
        query = self.next_sent().find(f"{{{DISCO_INFO}}}query")
        forms = query.findall("{jabber:x:data}x")
        self.assertEqual(len(forms), 3)
        for ns, form in zip(ALL_NS, forms):
            fields = form.findall("{jabber:x:data}field")
            self.assertEqual(fields[0].attrib, {"var": "FORM_TYPE", "type": "hidden"})
            self.assertEqual(fields[0].findtext("{jabber:x:data}value"), ns)
            self.assertEqual(fields[1].attrib, {"var": "max-file-size"})
            self.assertEqual(fields[1].findtext("{jabber:x:data}value"), "5000")

    def test_infinity_has_no_form(self) -> None:
        self.start(max_file_size="infinity")
        self.recv(disco_query("d1"))
        self.expect(disco_xml("d1", max_size=None))

    def test_without_legacy_namespaces(self) -> None:
        self.start(legacy_namespaces=False, max_file_size=1024)
        self.recv(disco_query("d1"))
        self.expect(disco_xml("d1", namespaces=[NS], max_size=1024))

    def test_node_is_item_not_found(self) -> None:
        self.start()
        self.recv(disco_query("d1", node="some-node"))
        self.expect(error_xml("d1", "cancel", "item-not-found"))

    def test_forms_not_duplicated_after_reconnect(self) -> None:
        self.start()
        for _ in range(2):  # what a dropped and re-established component session fires
            self.xmpp.event("session_end")
            self.xmpp.event("disconnected", "test")
            self.xmpp.session_bind_event.set()
            self.xmpp.event("session_bind", JID(SERVICE))
            self.xmpp.event("session_bind", SERVICE)  # str or JID, both seen
            self.xmpp.event("session_start")
        self.recv(disco_query("d1"))
        self.expect(disco_xml("d1"))
        self.recv(disco_query("d2"))
        self.expect(disco_xml("d2"))
        # and slots still come after the "reconnection"
        self.recv(request_xml("s1"))
        self.expect(slot_xml("s1", "a.txt"))


# ------------------------------------------------------------------------- slot requests


class TestSlots(UploadTest):
    def test_current_dialect(self) -> None:
        self.start()
        self.recv(request_xml("1", "tr&#232;s cool.jpg", "1048576", "image/jpeg"))
        self.expect(slot_xml("1", "très cool.jpg"))
        self.assertEqual(
            self.backend.requests,
            [SlotRequest("très cool.jpg", 1048576, "image/jpeg", "localhost", JID(ALICE))],
        )

    def test_raw_bytes_of_a_slot(self) -> None:
        self.start()
        self.recv(request_xml("1", "a.txt", "3"))
        self.wait_()
        self.wait_for_send_queue()
        self.assertEqual(
            self.xmpp.socket.next_sent(),
            f'<iq type="result" id="1" from="{SERVICE}" to="{ALICE}"><slot xmlns="{NS}">'
            '<put url="https://files.example/put/a.txt?sig=1&amp;x=2" />'
            '<get url="https://files.example/get/a.txt" /></slot></iq>'.encode(),
        )

    def test_headers_rendered(self) -> None:
        headers = (("Authorization", "Basic Zm9vOmJhcg=="), ("Cookie", "foo=bar; user=alice"), ("Expires", "300"))
        self.start(backend_instance=FixedBackend(headers))
        self.recv(request_xml("1", "a.txt", "3", "text/plain"))
        rendered = "".join(f'<header name="{name}">{value}</header>' for name, value in headers)
        self.expect(slot_xml("1", "a.txt", headers=rendered))

    def test_legacy_dialects(self) -> None:
        self.start()
        for n, ns in enumerate((NS_V02, NS_SIACS)):
            self.recv(request_xml(f"l{n}", "photo 1.jpg", "2048", "image/jpeg", ns=ns))
            self.expect(slot_xml(f"l{n}", "photo 1.jpg", ns=ns))
        self.assertEqual([r.content_type for r in self.backend.requests], ["image/jpeg", "image/jpeg"])

    def test_old_smack_children_under_current_namespace(self) -> None:
        self.start()
        self.recv(request_xml("1", "b.png", "77", "image/png", children=True))
        self.expect(slot_xml("1", "b.png"))
        self.assertEqual(self.backend.requests[0].size, 77)

    def test_empty_content_type_is_no_type(self) -> None:
        self.start()
        self.recv(request_xml("1", "a.bin", "9", ""))
        self.expect(slot_xml("1", "a.bin"))
        self.assertIsNone(self.backend.requests[0].content_type)

    def test_legacy_dialect_cannot_carry_headers(self) -> None:
        self.start(backend_instance=FixedBackend([("Authorization", "Basic x")]))
        with self.assertLogs("slixmpp_http_upload.plugin", logging.ERROR) as logs:
            self.recv(request_xml("1", ns=NS_V02))
            self.expect(error_xml("1", "wait", "internal-server-error", NO_SLOT))
        self.assertIn(f"the slot needs PUT headers, which {NS_V02} cannot carry", logs.output[0])

    def test_legacy_request_without_legacy_namespaces(self) -> None:
        self.start(legacy_namespaces=False)
        self.recv(request_xml("1", ns=NS_SIACS))
        self.expect(
            error_xml("1", "cancel", "feature-not-implemented", "No handlers registered for this request.")
        )
        self.assertEqual(self.backend.requests, [])


# -------------------------------------------------------------------------------- errors


BAD_REQUESTS = [
    # (filename XML, size XML, content-type XML, text)
    (None, "3", None, BAD_FILENAME),
    ("", "3", None, BAD_FILENAME),
    ("a&#9;b.txt", "3", None, CONTROL_CHARS),
    ("a&#127;b.txt", "3", None, CONTROL_CHARS),
    ("a&#133;b.txt", "3", None, CONTROL_CHARS),
    ("..", "3", None, "The filename cannot be '.' or '..'."),
    ("x" * 256, "3", None, "The filename is longer than 255 bytes."),
    ("a.txt", None, None, BAD_SIZE),
    ("a.txt", "", None, BAD_SIZE),
    ("a.txt", "abc", None, BAD_SIZE),
    ("a.txt", "0", None, BAD_SIZE),
    ("a.txt", "-1", None, BAD_SIZE),
    ("a.txt", "+1", None, BAD_SIZE),
    ("a.txt", "1.5", None, BAD_SIZE),
    ("a.txt", "1e3", None, BAD_SIZE),
    ("a.txt", " 1", None, BAD_SIZE),
    ("a.txt", "&#1633;", None, BAD_SIZE),  # ARABIC-INDIC DIGIT ONE: isdigit(), not ASCII
    ("a.txt", "3", "text/plain&#13;&#10;X-Evil: 1", LINE_BREAK),
    ("a.txt", "3", "text/plain&#10;", LINE_BREAK),
    ("a.txt", "3", "text/pl&#233;in", "The content-type must be printable ASCII."),
]


class TestErrors(UploadTest):
    def test_bad_requests_in_every_dialect(self) -> None:
        self.start()
        n = 0
        for ns in ALL_NS:
            for filename, size, content_type, text in BAD_REQUESTS:
                n += 1
                with self.subTest(ns=ns, filename=filename, size=size, content_type=content_type):
                    self.recv(request_xml(str(n), filename, size, content_type, ns=ns))
                    self.expect(error_xml(str(n), "modify", "bad-request", text.replace("'", "&apos;")))
        self.assertEqual(self.backend.requests, [])
        self.assertEqual(self.plugin.metrics.refusals, {"bad-request": n})

    def test_control_char_u0001(self) -> None:
        # XML 1.0 cannot carry U+0001 (&#1; is not well-formed): the parser refuses the
        # stanza, so test the rule on the parsed element instead of the wire.
        self.start()
        iq = self.Iq()
        iq["type"], iq["id"], iq["from"], iq["to"] = "get", "1", ALICE, SERVICE
        ET.SubElement(iq.xml, f"{{{NS}}}request", filename="a\x01b", size="3")
        asyncio.get_event_loop().call_soon(self.xmpp.recv_stanza, iq)
        self.expect(error_xml("1", "modify", "bad-request", CONTROL_CHARS))

    def test_file_too_large_in_the_dialect_asked(self) -> None:
        self.start(max_file_size=1000)
        for n, ns in enumerate(ALL_NS):
            with self.subTest(ns=ns):
                self.recv(request_xml(f"big{n}", "a.txt", "1001", ns=ns))
                self.expect(
                    error_xml(
                        f"big{n}", "modify", "not-acceptable", TOO_LARGE.replace("'", "&apos;"), too_large_xml(ns, 1000)
                    )
                )
                self.recv(request_xml(f"max{n}", "a.txt", "1000", ns=ns))
                self.expect(slot_xml(f"max{n}", "a.txt", ns=ns))

    def test_file_too_large_raw_bytes(self) -> None:
        # the <max-file-size/> child must inherit the namespace (no xmlns="" on it)
        self.start(max_file_size=1000)
        self.recv(request_xml("1", "a.txt", "5000", ns=NS_SIACS))
        self.wait_()
        self.wait_for_send_queue()
        raw = self.xmpp.socket.next_sent().decode()
        self.assertIn(
            f'<file-too-large xmlns="{NS_SIACS}"><max-file-size>1000</max-file-size></file-too-large>', raw
        )

    def test_no_limit(self) -> None:
        self.start(max_file_size="infinity")
        self.recv(request_xml("1", "huge.iso", "99999999999999"))
        self.expect(slot_xml("1", "huge.iso"))

    def test_iq_set_not_allowed(self) -> None:
        self.start()
        for n, ns in enumerate(ALL_NS):
            self.recv(request_xml(f"s{n}", ns=ns, iq_type="set"))
            self.expect(error_xml(f"s{n}", "cancel", "not-allowed", NOT_GET))

    def test_iq_without_type_is_bad_request(self) -> None:
        self.start()
        self.recv(request_xml("t", iq_type="get").replace(' type="get"', ""))
        reply = self.next_sent()
        self.assertEqual((reply.get("type"), reply.get("id")), ("error", "t"))
        error = reply.find("{jabber:client}error")
        self.assertEqual(error.get("type"), "modify")
        self.assertIsNotNone(error.find(f"{{{STANZAS}}}bad-request"))
        self.assertEqual(self.backend.requests, [])

    def test_only_the_service_jid_answers(self) -> None:
        # Another JID at the component gets what slixmpp answers for an IQ nothing handles,
        # exactly as for a payload nobody knows; no slot.
        self.start()
        for n, other in enumerate(["nobody@upload.localhost/x", "upload.localhost/res", "nobody@upload.localhost"]):
            self.recv(request_xml(f"o{n}").replace(f'to="{SERVICE}"', f'to="{other}"'))
            refusal = self.next_sent()
            self.recv(f'<iq type="get" id="u{n}" from="{ALICE}" to="{other}"><query xmlns="urn:example:none"/></iq>')
            unknown = self.next_sent()
            self.assertEqual((refusal.get("type"), refusal.get("from")), ("error", other))
            self.assertIsNotNone(refusal.find(f"{{jabber:client}}error/{{{STANZAS}}}feature-not-implemented"))
            self.assertEqual(
                ET.tostring(refusal.find("{jabber:client}error")), ET.tostring(unknown.find("{jabber:client}error"))
            )
        self.assertEqual(self.backend.requests, [])
        self.recv(request_xml("ok").replace(f'to="{SERVICE}"', 'to="UPLOAD.localhost"'))
        self.expect(slot_xml("ok", "a.txt").replace(f'from="{SERVICE}"', 'from="UPLOAD.localhost"'))

    def test_idn_domains_compare_in_one_form(self) -> None:
        service = "upload.münchen.example"
        self.start(jid=service, allow=["xn--bcher-kva.example"], deny=["eve@bücher.example"])
        self.assertEqual(self.plugin.rules.served_domain, "münchen.example")
        cases = {
            "alice@münchen.example/x": "result",
            "alice@xn--mnchen-3ya.example/x": "result",
            "bob@bücher.example/x": "result",
            "bob@XN--BCHER-KVA.example/x": "result",
            "eve@xn--bcher-kva.example/x": "error",
            "eve@bücher.example/x": "error",
            "mallory@muenchen.example/x": "error",
        }
        for n, (sender, outcome) in enumerate(cases.items()):
            to = "upload.xn--mnchen-3ya.example" if n % 2 else service
            self.recv(request_xml(f"i{n}", sender=sender).replace(f'to="{SERVICE}"', f'to="{to}"'))
            self.assertEqual((sender, self.next_sent().get("type")), (sender, outcome))

    def test_result_and_error_get_no_reply(self) -> None:
        self.start()
        for iq_type in ("result", "error"):
            for ns in ALL_NS:
                self.recv(request_xml("r", ns=ns, iq_type=iq_type))
                self.expect(None)
        self.assertEqual(self.backend.requests, [])
        self.assertEqual(self.plugin.metrics.refusals, {})

    def test_backend_failure_then_next_request_served(self) -> None:
        self.start(backend_instance=FailingBackend())
        with self.assertLogs("slixmpp_http_upload.plugin", logging.ERROR) as logs:
            self.recv(request_xml("1", "fail.txt"))
            self.expect(error_xml("1", "wait", "internal-server-error", NO_SLOT))
        self.assertIn("storage is down", logs.output[0])
        self.recv(request_xml("2", "ok.txt"))
        self.expect(slot_xml("2", "ok.txt"))

    def test_a_slot_the_ledger_cannot_take_is_refused_as_a_backend_failure(self) -> None:
        # the ledger's add starts its writer thread on first use, which can fail
        for backend in (FixedBackend(), AtOnceBackend()):  # scheduled, and answered at once
            with self.subTest(backend=type(backend).__name__):
                settings = parse_upload_settings({})
                self.start(backend_instance=backend, settings=settings, accounting=Accounting(settings, UnwritableLedger()))
                with self.assertLogs("slixmpp_http_upload.plugin", logging.ERROR) as logs:
                    self.recv(request_xml("1", "a.txt"))
                    self.expect(error_xml("1", "wait", "internal-server-error", NO_SLOT))
                self.assertIn("Could not make a slot", logs.output[0])
                self.assertEqual(self.plugin.metrics.refusals, {"backend": 1})
                self.tearDown()
                self.setUp()

    def test_backend_hit_by_a_foreign_cancellation_then_next_request_served(self) -> None:
        # A CancelledError that is not the worker's own cancellation is a backend failure:
        # it must not end the one_queue worker (which would leave every later request unanswered).
        self.start(backend_instance=CancelledBackend())
        with self.assertLogs("slixmpp_http_upload.plugin", logging.ERROR):
            self.recv(request_xml("1", "cancelled.txt"))
            self.expect(error_xml("1", "wait", "internal-server-error", NO_SLOT))
        self.recv(request_xml("2", "ok.txt"))
        self.expect(slot_xml("2", "ok.txt"))

    def test_forbidden_header_from_backend(self) -> None:
        self.start(backend_instance=ForbiddenHeaderBackend())
        with self.assertLogs("slixmpp_http_upload.plugin", logging.ERROR) as logs:
            self.recv(request_xml("1"))
            self.expect(error_xml("1", "wait", "internal-server-error", NO_SLOT))
        self.assertIn("X-Foo", logs.output[0])

    def test_policy_raising(self) -> None:
        async def policy(requester: JID, request: SlotRequest) -> str | None:
            raise LookupError("quota database unreachable")

        self.start(policy=policy)
        with self.assertLogs("slixmpp_http_upload.plugin", logging.ERROR):
            self.recv(request_xml("1"))
            self.expect(error_xml("1", "wait", "internal-server-error", NO_SLOT))

    def test_unexpected_failure_is_not_generic_trouble(self) -> None:
        # Whatever breaks while checking or scheduling, the reply is a proper error,
        # never slixmpp's generic undefined-condition "Slixmpp got into trouble."
        self.start()

        def broken_submit(key: str, job: object, on_failure: object) -> bool:
            raise RuntimeError("dispatcher broke")

        self.plugin.dispatcher.submit = broken_submit  # type: ignore[method-assign]
        with self.assertLogs("slixmpp_http_upload.plugin", logging.ERROR) as logs:
            self.recv(request_xml("1"))
            self.expect(error_xml("1", "wait", "internal-server-error"))
        self.assertIn("dispatcher broke", "\n".join(logs.output))

    def test_a_job_that_raises_is_answered_once_and_the_queue_goes_on(self) -> None:
        # A bug past the backend (here the metrics) must not end the one_queue worker.
        self.start()
        slot_created = self.plugin.metrics.slot_created
        broken = [True]

        def once_broken(seconds: float) -> None:
            if broken.pop() if broken else False:
                raise RuntimeError("metrics broke")
            slot_created(seconds)

        self.plugin.metrics.slot_created = once_broken  # type: ignore[method-assign]
        with self.assertLogs("slixmpp_http_upload.dispatch", logging.ERROR) as logs:
            self.recv(request_xml("1"))
            self.expect(error_xml("1", "wait", "internal-server-error"))
        self.assertEqual(len(logs.output), 1)
        self.assertIn("metrics broke", logs.output[0])
        self.recv(request_xml("2", sender=BOB))
        self.expect(slot_xml("2", "a.txt", to=BOB))
        self.expect(None)

    def test_local_users_allowed(self) -> None:
        self.start()
        self.recv(request_xml("1", sender=ALICE))
        self.expect(slot_xml("1", "a.txt"))
        self.recv(request_xml("2", sender="Bob@LocalHost/x"))  # the domain compares case-blind
        self.expect(slot_xml("2", "a.txt", to="Bob@LocalHost/x"))  # the reply keeps the JID as sent

    def test_remote_user_forbidden(self) -> None:
        self.start()
        for n, ns in enumerate(ALL_NS):
            self.recv(request_xml(f"f{n}", ns=ns, sender=REMOTE))
            self.expect(error_xml(f"f{n}", "auth", "forbidden", NOT_YOURS, to=REMOTE))
        # the service's own parent domain's look-alikes are remote too
        for n, sender in enumerate(["eve@evillocalhost/x", "eve@localhost.evil/x", "eve@sub.localhost/x"]):
            self.recv(request_xml(f"e{n}", sender=sender))
            self.expect(error_xml(f"e{n}", "auth", "forbidden", NOT_YOURS, to=sender))
        self.assertEqual(self.backend.requests, [])
        self.assertEqual(self.plugin.metrics.refusals, {"forbidden": 6})

    def test_forbidden_before_field_checks(self) -> None:
        self.start()
        self.recv(request_xml("1", filename=None, sender=REMOTE))
        self.expect(error_xml("1", "auth", "forbidden", NOT_YOURS, to=REMOTE))

    def test_allow_domain(self) -> None:
        self.start(allow=["remote.example"])
        self.recv(request_xml("1", sender=REMOTE))
        self.expect(slot_xml("1", "a.txt", to=REMOTE))
        self.recv(request_xml("2", sender="carol@remote.example/x"))
        self.expect(slot_xml("2", "a.txt", to="carol@remote.example/x"))
        self.recv(request_xml("3", sender="dave@other.example/x"))
        self.expect(error_xml("3", "auth", "forbidden", NOT_YOURS, to="dave@other.example/x"))

    def test_allow_bare_jid(self) -> None:
        self.start(allow=["bob@remote.example"])
        self.recv(request_xml("1", sender=REMOTE))
        self.expect(slot_xml("1", "a.txt", to=REMOTE))
        self.recv(request_xml("2", sender="carol@remote.example/x"))
        self.expect(error_xml("2", "auth", "forbidden", NOT_YOURS, to="carol@remote.example/x"))

    def test_deny_wins_over_default(self) -> None:
        self.start(deny=["alice@localhost"])
        self.recv(request_xml("1", sender=ALICE))
        self.expect(error_xml("1", "auth", "forbidden", NOT_YOURS))
        self.recv(request_xml("2", sender=BOB))
        self.expect(slot_xml("2", "a.txt", to=BOB))

    def test_deny_domain_wins_over_default(self) -> None:
        self.start(deny=["localhost"])
        self.recv(request_xml("1", sender=BOB))
        self.expect(error_xml("1", "auth", "forbidden", NOT_YOURS, to=BOB))

    def test_deny_wins_over_allow(self) -> None:
        self.start(allow=["remote.example"], deny=["bob@remote.example"])
        self.recv(request_xml("1", sender=REMOTE))
        self.expect(error_xml("1", "auth", "forbidden", NOT_YOURS, to=REMOTE))
        self.recv(request_xml("2", sender="carol@remote.example/x"))
        self.expect(slot_xml("2", "a.txt", to="carol@remote.example/x"))

    def test_policy_refuses_and_allows(self) -> None:
        asked: list[tuple[JID, SlotRequest]] = []

        async def policy(requester: JID, request: SlotRequest) -> str | None:
            asked.append((requester, request))
            await asyncio.sleep(0)
            return "Quota exceeded: 1 GiB of 1 GiB used." if request.size > 100 else None

        self.start(policy=policy)
        self.recv(request_xml("1", "big.bin", "101"))
        self.expect(error_xml("1", "auth", "forbidden", "Quota exceeded: 1 GiB of 1 GiB used."))
        self.recv(request_xml("2", "small.bin", "100"))
        self.expect(slot_xml("2", "small.bin"))
        self.assertEqual([(str(jid), req.filename) for jid, req in asked], [(ALICE, "big.bin"), (ALICE, "small.bin")])
        self.assertEqual([r.filename for r in self.backend.requests], ["small.bin"])
        self.assertEqual(self.plugin.metrics.refusals, {"policy": 1})

    def test_policy_refuses_for_now(self) -> None:
        retry_at = datetime(2026, 11, 25, 18, 30, tzinfo=timezone(timedelta(hours=2)))

        async def policy(requester: JID, request: SlotRequest) -> TryLater | None:
            if request.filename == "later.bin":
                return TryLater("Daily quota used up.", retry_at)
            return TryLater("Too many uploads.") if request.filename == "soon.bin" else None

        self.start(policy=policy)
        for ns in ALL_NS:  # the <retry/> in the namespace asked
            self.recv(request_xml("1", "later.bin", ns=ns))
            retry = f'<retry xmlns="{ns}" stamp="2026-11-25T16:30:00Z"/>'
            self.expect(error_xml("1", "wait", "resource-constraint", "Daily quota used up.", retry))
        self.recv(request_xml("2", "soon.bin"))
        self.expect(error_xml("2", "wait", "resource-constraint", "Too many uploads."))
        self.recv(request_xml("3", "fine.bin"))
        self.expect(slot_xml("3", "fine.bin"))
        self.assertEqual(self.plugin.metrics.refusals, {"policy": len(ALL_NS) + 1})

    def test_policy_not_asked_for_static_refusals(self) -> None:
        asked: list[JID] = []

        async def policy(requester: JID, request: SlotRequest) -> str | None:
            asked.append(requester)
            return None

        self.start(policy=policy)
        self.recv(request_xml("1", sender=REMOTE))
        self.expect(error_xml("1", "auth", "forbidden", NOT_YOURS, to=REMOTE))
        self.recv(request_xml("2", size="0"))
        self.expect(error_xml("2", "modify", "bad-request", BAD_SIZE))
        self.assertEqual(asked, [])


class TestClientBot(UploadTest):
    """A ClientXMPP bot serving uploads for its own domain."""

    BOT = "bot@example.com/r"

    def request(self, iq_id: str, sender: str) -> str:
        return request_xml(iq_id, sender=sender).replace(f'to="{SERVICE}"', f'to="{self.BOT}"')

    def test_bot_serves_its_domain(self) -> None:
        self.start(mode="client", jid=self.BOT)
        self.assertEqual(self.plugin.rules.served_domain, "example.com")
        self.recv(self.request("1", "alice@example.com/x"))
        # a client leaves "from" out of its replies: its server stamps it
        self.expect(slot_xml("1", "a.txt", to="alice@example.com/x").replace(f' from="{SERVICE}"', ""))
        self.recv(self.request("2", REMOTE))
        self.expect(error_xml("2", "auth", "forbidden", NOT_YOURS, to=REMOTE).replace(f' from="{SERVICE}"', ""))

    def test_bot_disco(self) -> None:
        self.start(mode="client", jid=self.BOT, legacy_namespaces=False)
        self.recv(
            f'<iq type="get" id="d" from="alice@example.com/x" to="{self.BOT}"><query xmlns="{DISCO_INFO}"/></iq>'
        )
        query = self.next_sent().find(f"{{{DISCO_INFO}}}query")
        identities = [i.attrib for i in query.findall(f"{{{DISCO_INFO}}}identity")]
        self.assertIn({"category": "store", "type": "file", "name": "HTTP File Upload"}, identities)
        self.assertIn(NS, [f.get("var") for f in query.findall(f"{{{DISCO_INFO}}}feature")])


    def test_bot_plugins_see_what_they_saw_before(self) -> None:
        # The guard refuses only what would break the stream or go unanswered: another
        # plugin's large IQ, or one with two of its own payloads, reaches its handler as before.
        self.start(mode="client", jid=self.BOT)
        seen: list[str] = []
        self.xmpp.register_handler(
            Callback("other plugin", MatchXPath("{jabber:client}iq/{urn:example}items"), lambda iq: seen.append(iq["id"]))
        )
        items = "".join(f'<item n="{n}"/>' for n in range(500))
        for ident, payload in [
            ("large", f'<items xmlns="urn:example">{items}</items>'),
            ("two", '<items xmlns="urn:example"/><other xmlns="urn:example"/>'),
        ]:
            self.recv(f'<iq type="set" id="{ident}" from="alice@example.com/x" to="{self.BOT}">{payload}</iq>')
        self.assertEqual(seen, ["large", "two"])
        self.expect(None)

    def test_plugin_end_removes_the_guard(self) -> None:
        self.start(mode="client", jid=self.BOT)
        self.xmpp.plugin.disable("http_upload_server")
        self.recv(
            f'<iq type="set" id="d" from="alice@example.com/x" to="{self.BOT}"><query xmlns="{DISCO_INFO}"/></iq>'
        )
        self.expect(None)  # slixmpp's own behaviour again: a disco set goes unanswered


# -------------------------------------------------------------------------------- iqdisc


class TestIqDisc(UploadTest):
    def send_all(self, requests: Iterable[str]) -> None:
        for xml in requests:
            asyncio.get_event_loop().call_soon(self.xmpp.data_received, xml)

    def sent_ids(self, count: int) -> list[str]:
        self.settle(count)
        ids = []
        for _ in range(count):
            raw = self.xmpp.socket.next_sent()
            self.assertIsNotNone(raw, f"only {ids} were answered")
            ids.append(ET.fromstring(raw).get("id"))
        self.assertIsNone(self.xmpp.socket.next_sent())
        return ids

    def test_one_queue_keeps_arrival_order(self) -> None:
        self.start(backend_instance=DelayBackend({"slow": 0.1, "mid": 0.03}))  # one_queue is the default
        self.send_all(request_xml(name, name) for name in ("slow", "fast", "mid", "fast2"))
        self.assertEqual(self.sent_ids(4), ["slow", "fast", "mid", "fast2"])

    def test_one_queue_exact_replies(self) -> None:
        self.start(iqdisc="one_queue", backend_instance=DelayBackend({"slow": 0.05}))
        self.send_all([request_xml("1", "slow"), request_xml("2", "fast", ns=NS_SIACS)])
        self.settle(2)
        self.expect(slot_xml("1", "slow"))
        self.expect(slot_xml("2", "fast", ns=NS_SIACS))

    def test_parallel_fast_overtakes_slow(self) -> None:
        self.start(iqdisc="parallel", backend_instance=DelayBackend({"slow": 0.1}))
        self.send_all(request_xml(name, name) for name in ("slow", "fast"))
        self.assertEqual(self.sent_ids(2), ["fast", "slow"])

    def test_queues_per_requester_order(self) -> None:
        other = key_on_another_queue("alice@localhost", 4)
        self.start(iqdisc={"type": "queues", "workers": 4}, backend_instance=DelayBackend({"a-slow": 0.1}))
        self.send_all(
            [
                request_xml("a-slow", "a-slow", sender=ALICE),
                request_xml("a-fast", "a-fast", sender=ALICE),
                request_xml("o-fast", "o-fast", sender=other + "/r"),
            ]
        )
        # alice's fast request waits behind her slow one; the other user's overtakes both
        self.assertEqual(self.sent_ids(3), ["o-fast", "a-slow", "a-fast"])

    def test_queues_same_user_several_resources_in_order(self) -> None:
        self.start(iqdisc={"type": "queues", "workers": 8}, backend_instance=DelayBackend({"slow": 0.05}))
        self.send_all(
            [request_xml("slow", "slow", sender=ALICE), request_xml("fast", "fast", sender="alice@localhost/tab")]
        )
        self.assertEqual(self.sent_ids(2), ["slow", "fast"])

    def feed_counting(self, xml: str) -> int:
        """Receive ``xml`` from a loop callback; return how many stanzas were queued or written
        for sending by the time ``data_received`` returned (a reply takes either road, see
        :mod:`slixmpp_http_upload.wire`)."""
        counted: list[int] = []

        def outgoing() -> int:
            return self.xmpp.waiting_queue.qsize() + self.xmpp.socket.send_queue.qsize()

        def feed() -> None:
            before = outgoing()
            self.xmpp.data_received(xml)
            counted.append(outgoing() - before)

        asyncio.get_event_loop().call_soon(feed)
        self.wait_()
        return counted[0]

    @unittest.skipUnless(EAGER_TASKS, "eager tasks need Python 3.12")
    def test_no_queue_answers_inline(self) -> None:
        self.start(iqdisc="no_queue")
        self.assertEqual(self.feed_counting(request_xml("1")), 1)
        self.expect(slot_xml("1", "a.txt"))
        self.assertEqual(self.plugin.dispatcher.tasks, set())

    def test_one_queue_does_not_answer_inline(self) -> None:
        self.start(iqdisc="one_queue")
        self.assertEqual(self.feed_counting(request_xml("1")), 0)
        self.expect(slot_xml("1", "a.txt"))

    def test_no_queue_with_waiting_backend(self) -> None:
        self.start(iqdisc="no_queue", backend_instance=DelayBackend({"slow": 0.05}))
        self.assertEqual(self.feed_counting(request_xml("1", "slow")), 0)  # waiting: no answer yet
        self.assertEqual(len(self.plugin.dispatcher.tasks), 1)
        self.settle(1)
        self.expect(slot_xml("1", "slow"))
        self.assertEqual(self.plugin.dispatcher.tasks, set())

    def test_no_queue_backend_using_asyncio_timeout(self) -> None:
        # A backend doing I/O under a timeout (asyncio.timeout, aiohttp) needs to run in a
        # task from its very first step.
        self.start(iqdisc="no_queue", backend_instance=TimeoutBackend())
        self.recv(request_xml("1"))
        self.settle(1)
        self.expect(slot_xml("1", "a.txt"))

    def test_no_queue_backend_whose_first_wait_fails(self) -> None:
        # the failure must reach the plugin's own error handling, not end the task silently
        self.start(iqdisc="no_queue", backend_instance=ThreadFailingBackend())
        with self.assertLogs("slixmpp_http_upload.plugin", logging.ERROR) as logs:
            self.recv(request_xml("1"))
            self.settle(1)
            self.expect(error_xml("1", "wait", "internal-server-error", NO_SLOT))
        self.assertIn("KMS unreachable", logs.output[0])

    def test_backpressure_one_queue(self) -> None:
        backend = BlockedBackend()
        self.start(iqdisc="one_queue", queue_size=1, backend_instance=backend)
        self.recv(request_xml("1", "one"))  # taken by the worker, blocked in the backend
        self.recv(request_xml("2", "two"))  # waits in the queue (1 of 1)
        self.recv(request_xml("3", "three"))  # no room
        self.expect(error_xml("3", "wait", "resource-constraint", QUEUE_FULL))
        self.expect(None)
        self.assertEqual(backend.started, ["one"])
        backend.release.set()
        self.expect(slot_xml("1", "one"))
        self.expect(slot_xml("2", "two"))
        self.recv(request_xml("4", "four"))  # room again
        self.expect(slot_xml("4", "four"))
        self.assertEqual(self.plugin.metrics.refusals, {"queue-full": 1})

    def test_backpressure_parallel(self) -> None:
        backend = BlockedBackend()
        self.start(iqdisc="parallel", queue_size=1, backend_instance=backend)
        self.recv(request_xml("1", "one"))
        self.recv(request_xml("2", "two"))
        self.expect(error_xml("2", "wait", "resource-constraint", QUEUE_FULL))
        self.expect(None)
        backend.release.set()
        self.expect(slot_xml("1", "one"))
        self.recv(request_xml("3", "three"))
        self.expect(slot_xml("3", "three"))

    def test_backpressure_no_queue(self) -> None:
        backend = BlockedBackend()
        self.start(iqdisc="no_queue", queue_size=1, backend_instance=backend)
        self.recv(request_xml("1", "one"))
        self.recv(request_xml("2", "two"))
        self.expect(error_xml("2", "wait", "resource-constraint", QUEUE_FULL))
        backend.release.set()
        self.expect(slot_xml("1", "one"))

    def test_pending_requests_dropped_when_the_session_ends(self) -> None:
        backend = BlockedBackend()
        self.start(iqdisc="one_queue", backend_instance=backend)
        self.recv(request_xml("1", "one"))
        self.recv(request_xml("2", "two"))
        workers = list(self.plugin.dispatcher.workers)
        self.assertEqual(len(workers), 1)
        self.xmpp.event("session_end")
        self.wait_()
        self.assertTrue(all(worker.done() for worker in workers))
        backend.release.set()
        self.expect(None)
        # a new session serves again
        self.xmpp.event("session_bind", JID(SERVICE))
        self.recv(request_xml("3", "three"))
        self.expect(slot_xml("3", "three"))


# ------------------------------------------------------------------------------ shutdown

ALL_IQDISCS = ("no_queue", "parallel", "one_queue", {"type": "queues", "workers": 2})


class TestAnswerAtOnce(UploadTest):
    """A backend with ``slot_now`` and no policy hook: a request is answered in the call that
    read it when that keeps the iqdisc's order; otherwise, or when the backend must wait, it is
    scheduled as with any backend."""

    feed_counting = TestIqDisc.feed_counting

    def test_answered_in_the_call_that_read_it(self) -> None:
        for iqdisc in ALL_IQDISCS:
            with self.subTest(iqdisc=iqdisc):
                self.start(iqdisc=iqdisc, backend_instance=AtOnceBackend())
                self.assertEqual(self.feed_counting(request_xml("1")), 1)
                self.expect(slot_xml("1", "a.txt"))
                self.assertEqual(self.backend.at_once, ["a.txt"])
                self.assertEqual(self.backend.started, [])  # create_slot never ran
                self.assertEqual(self.plugin.metrics.create_slot, 1)
                self.tearDown()
                self.setUp()

    def test_one_queue_answers_nothing_before_a_request_that_waits(self) -> None:
        backend = AtOnceBackend()
        self.start(iqdisc="one_queue", backend_instance=backend)
        self.recv(request_xml("1", "wait.txt"))
        self.recv(request_xml("2", "quick.txt", sender=BOB))  # could be made at once, but comes second
        self.expect(None)
        self.assertEqual(backend.started, ["wait.txt"])
        backend.release.set()
        self.expect(slot_xml("1", "wait.txt"))
        self.expect(slot_xml("2", "quick.txt", to=BOB))
        self.recv(request_xml("3", "again.txt"))  # idle again: at once
        self.expect(slot_xml("3", "again.txt"))
        self.assertEqual(backend.at_once, ["again.txt"])

    def test_queues_keep_one_users_order_and_let_another_through(self) -> None:
        other = key_on_another_queue("alice@localhost", 4) + "/r"
        backend = AtOnceBackend()
        self.start(iqdisc={"type": "queues", "workers": 4}, backend_instance=backend)
        self.recv(request_xml("1", "wait.txt"))
        self.recv(request_xml("2", "mine.txt"))
        self.recv(request_xml("3", "theirs.txt", sender=other))
        self.expect(slot_xml("3", "theirs.txt", to=other))
        self.expect(None)
        backend.release.set()
        self.expect(slot_xml("1", "wait.txt"))
        self.expect(slot_xml("2", "mine.txt"))

    def test_a_failing_slot_now_is_refused_and_takes_back_its_count(self) -> None:
        self.start(backend_instance=AtOnceBackend(), rate_limit={"slots": 1, "seconds": 60})
        with self.assertLogs("slixmpp_http_upload.plugin", logging.ERROR) as logs:
            self.recv(request_xml("1", "fail.txt"))
            self.expect(error_xml("1", "wait", "internal-server-error", NO_SLOT))
        self.assertIn("storage is down", logs.output[0])
        self.recv(request_xml("2", "b.txt"))  # the failed one did not use up the rate limit
        self.expect(slot_xml("2", "b.txt"))
        self.assertEqual(self.plugin.metrics.refusals, {"backend": 1})

    def test_a_backend_that_must_wait_takes_back_its_count_then_counts_once(self) -> None:
        backend = AtOnceBackend()
        self.start(backend_instance=backend, rate_limit={"slots": 1, "seconds": 60})
        self.recv(request_xml("1", "wait.txt"))
        backend.release.set()
        self.expect(slot_xml("1", "wait.txt"))
        self.recv(request_xml("2", "b.txt"))  # one slot per minute: the first counted once, not twice
        reply = self.next_sent()
        self.assertEqual((reply.get("id"), reply.get("type")), ("2", "error"))
        self.assertIsNotNone(reply.find(f".//{{{STANZAS}}}resource-constraint"))

    def test_a_slot_the_dialect_cannot_carry_takes_back_its_count(self) -> None:
        class HeadersAtOnce(FixedBackend):
            def slot_now(self, request: SlotRequest) -> Slot:
                return Slot(put_url(request.filename), get_url(request.filename), self.headers)

        self.start(backend_instance=HeadersAtOnce([("Authorization", "Basic x")]), rate_limit={"slots": 1, "seconds": 60})
        with self.assertLogs("slixmpp_http_upload.plugin", logging.ERROR):
            self.recv(request_xml("1", ns=NS_V02))  # a slot with headers, which this dialect cannot carry
            self.expect(error_xml("1", "wait", "internal-server-error", NO_SLOT))
        self.recv(request_xml("2", "b.txt"))  # the minute's one slot is still there
        reply = self.next_sent()
        self.assertEqual((reply.get("id"), reply.get("type")), ("2", "result"))

    def test_a_policy_hook_that_changes_its_jid_changes_nothing_else(self) -> None:
        async def policy(requester: JID, request: SlotRequest) -> str | None:
            requester.resource = "changed"  # a JID is mutable: the hook must get one of its own
            return None

        backend = AtOnceBackend()
        backend.release.set()
        self.start(backend_instance=backend, policy=policy)
        for iq_id in ("1", "2"):
            self.recv(request_xml(iq_id, "a.txt"))
            self.expect(slot_xml(iq_id, "a.txt"))
        self.assertEqual([str(request.requester) for request in backend.requests], [ALICE, ALICE])

    def test_a_backend_given_later_is_asked_for_slot_now(self) -> None:
        self.start()  # a FixedBackend: no slot_now
        self.plugin.backend = backend = AtOnceBackend()
        self.assertEqual(self.feed_counting(request_xml("1")), 1)
        self.expect(slot_xml("1", "a.txt"))
        self.assertEqual(backend.at_once, ["a.txt"])

    def test_a_policy_hook_is_always_asked(self) -> None:
        asked: list[str] = []

        async def policy(requester: JID, request: SlotRequest) -> str | None:
            asked.append(f"{requester} {request.filename}")
            return "no" if request.filename == "no.txt" else None

        backend = AtOnceBackend()
        backend.release.set()  # its create_slot answers at once
        self.start(backend_instance=backend, policy=policy)
        self.recv(request_xml("1", "no.txt"))
        self.expect(error_xml("1", "auth", "forbidden", "no"))
        self.recv(request_xml("2", "yes.txt"))
        self.expect(slot_xml("2", "yes.txt"))
        self.assertEqual(asked, [f"{ALICE} no.txt", f"{ALICE} yes.txt"])
        self.assertEqual(backend.at_once, [])  # with a hook, the backend's create_slot makes the slot
        self.assertEqual(backend.started, ["yes.txt"])


class TestShutdown(UploadTest):
    """``drain``, what ``serve`` runs on SIGTERM: nothing queued or running goes unanswered."""

    def drain(self, timeout: float) -> None:
        self.loop.run_until_complete(self.plugin.drain(timeout))

    def blocked_with_each_iqdisc(self) -> Iterator[BlockedBackend]:
        """For each iqdisc in a subtest of its own: a fresh plugin with a blocked backend."""
        for iqdisc in ALL_IQDISCS:
            with self.subTest(iqdisc=iqdisc):
                backend = BlockedBackend()
                self.start(iqdisc=iqdisc, backend_instance=backend)
                yield backend
                self.tearDown()
                self.setUp()

    def test_pending_requests_answered_within_the_grace_period(self) -> None:
        for backend in self.blocked_with_each_iqdisc():
            self.recv(request_xml("1", "one"))
            self.recv(request_xml("2", "two", sender=BOB))
            self.loop.call_later(0.05, backend.release.set)
            self.drain(timeout=10)
            replies = dict(sorted((reply.get("id"), reply.get("type")) for reply in (self.next_sent(), self.next_sent())))
            self.assertEqual(replies, {"1": "result", "2": "result"})
            self.recv(request_xml("3", "three"))  # after the drain: refused, not queued
            self.expect(error_xml("3", "wait", "service-unavailable", SHUTTING_DOWN))

    def test_the_rest_refused_after_the_grace_period(self) -> None:
        for backend in self.blocked_with_each_iqdisc():
            self.recv(request_xml("1", "running"))
            self.recv(request_xml("2", "queued"))
            self.drain(timeout=0.1)
            self.expect(error_xml("1", "wait", "service-unavailable", SHUTTING_DOWN))
            self.expect(error_xml("2", "wait", "service-unavailable", SHUTTING_DOWN))
            backend.release.set()
            self.expect(None)  # nothing more, even once the backend would answer
            self.assertEqual(self.plugin.metrics.refusals, {"shutdown": 2})

    def test_nothing_pending_drains_at_once(self) -> None:
        self.start()
        self.recv(request_xml("1"))
        self.expect(slot_xml("1", "a.txt"))
        self.drain(timeout=3600)  # would hang the test if it waited for nothing
        self.expect(None)




class TestMetrics(UploadTest):
    def test_counters(self) -> None:
        async def policy(requester: JID, request: SlotRequest) -> str | None:
            return "no" if request.filename == "refused.txt" else None

        self.start(policy=policy, backend_instance=DelayBackend({"slow.txt": 0.02}), max_file_size=100)
        self.assertEqual(self.plugin.metrics.host, SERVICE)
        requests = [
            request_xml("1", "a.txt"),
            request_xml("2", "slow.txt", ns=NS_V02),
            request_xml("3", "c.txt", ns=NS_SIACS),
            request_xml("4", "d.txt", "0"),
            request_xml("5", "e.txt", "101"),
            request_xml("6", sender=REMOTE),
            request_xml("7", "refused.txt"),
            request_xml("8", iq_type="set"),
            request_xml("9", iq_type="result"),
        ]
        for xml in requests:
            self.recv(xml)
        self.settle(8)  # 3 slots, 5 refusals, nothing for the IQ result
        metrics = self.plugin.metrics
        self.assertEqual(metrics.create_slot, 3)
        self.assertGreater(metrics.create_slot_seconds, 0.02)
        self.assertEqual(
            dict(metrics.refusals),
            {"bad-request": 1, "file-too-large": 1, "forbidden": 1, "policy": 1, "not-allowed": 1},
        )


# ----------------------------------------------------------------------- real S3 backend


S3_CONFIG = {
    "bucket_url": "https://s3.example.com/my-bucket/",
    "region": "eu-west-1",
    "access_key_id": "AKIDEXAMPLE",
    "secret_access_key": "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
}


class TestS3Backend(UploadTest):
    def test_current_dialect_structure(self) -> None:
        self.start(backend_instance=None, s3=S3_CONFIG, expiration_time=300, token_bytes=16)
        self.recv(request_xml("1", "tr&#232;s cool.jpg", "1234", "image/jpeg"))
        self.wait_()
        self.send(
            f'<iq xmlns="{COMPONENT_NS}" type="result" id="1" from="{SERVICE}" to="{ALICE}">'
            f'<slot xmlns="{NS}"><put/><get/></slot></iq>',
            method="mask",
        )
        self.recv(request_xml("2", "tr&#232;s cool.jpg", "1234", "image/jpeg"))
        slot = self.next_sent().find(f"{{{NS}}}slot")
        put, get = slot.find(f"{{{NS}}}put"), slot.find(f"{{{NS}}}get")
        self.assertEqual(list(put), [], "an S3 slot has no <header/>")
        get_parts, put_parts = urlsplit(get.get("url")), urlsplit(put.get("url"))
        self.assertEqual((get_parts.scheme, get_parts.netloc), ("https", "s3.example.com"))
        self.assertEqual(get_parts.query, "")
        bucket, token, name = get_parts.path.lstrip("/").split("/")
        self.assertEqual((bucket, name), ("my-bucket", "tr%C3%A8s%20cool.jpg"))
        self.assertRegex(token, r"^[0-9a-f]{32}$")
        self.assertEqual(put.get("url").split("?")[0], get.get("url"))
        query = parse_qs(put_parts.query)
        self.assertEqual(query["X-Amz-Algorithm"], ["AWS4-HMAC-SHA256"])
        self.assertEqual(query["X-Amz-Expires"], ["300"])
        self.assertEqual(query["X-Amz-SignedHeaders"], ["content-length;content-type;host"])
        self.assertTrue(query["X-Amz-Credential"][0].startswith("AKIDEXAMPLE/"))
        self.assertTrue(query["X-Amz-Credential"][0].endswith("/eu-west-1/s3/aws4_request"))
        self.assertRegex(query["X-Amz-Signature"][0], r"^[0-9a-f]{64}$")

    def test_fresh_url_per_slot(self) -> None:
        self.start(backend_instance=None, s3=S3_CONFIG)
        urls = set()
        for n in range(3):
            self.recv(request_xml(str(n), "same.txt", "5"))
            urls.add(self.next_sent().find(f"{{{NS}}}slot/{{{NS}}}get").get("url"))
        self.assertEqual(len(urls), 3)

    def test_legacy_dialects_text_urls(self) -> None:
        self.start(backend_instance=None, s3=S3_CONFIG)
        for n, ns in enumerate((NS_V02, NS_SIACS)):
            self.recv(request_xml(str(n), "notes.txt", "10", ns=ns))
            self.wait_()
            self.send(
                f'<iq xmlns="{COMPONENT_NS}" type="result" id="{n}" from="{SERVICE}" to="{ALICE}">'
                f'<slot xmlns="{ns}"><put/><get/></slot></iq>',
                method="mask",
            )
            self.recv(request_xml(f"x{n}", "notes.txt", "10", ns=ns))
            slot = self.next_sent().find(f"{{{ns}}}slot")
            put, get = slot.findtext(f"{{{ns}}}put"), slot.findtext(f"{{{ns}}}get")
            self.assertEqual(slot.find(f"{{{ns}}}put").attrib, {})
            self.assertTrue(get.startswith("https://s3.example.com/my-bucket/"))
            self.assertTrue(get.endswith("/notes.txt"))
            self.assertTrue(put.startswith(get + "?"))
            self.assertEqual(parse_qs(urlsplit(put).query)["X-Amz-SignedHeaders"], ["content-length;host"])

    def test_s3_too_large_and_forbidden(self) -> None:
        self.start(backend_instance=None, s3=S3_CONFIG, max_file_size=10)
        self.recv(request_xml("1", "a.txt", "11"))
        self.expect(error_xml("1", "modify", "not-acceptable", TOO_LARGE.replace("'", "&apos;"), too_large_xml(NS, 10)))
        self.recv(request_xml("2", sender=REMOTE))
        self.expect(error_xml("2", "auth", "forbidden", NOT_YOURS, to=REMOTE))

    def test_credentials_failure_is_one_log_line_and_a_wait_error(self) -> None:
        # No key configured: the AWS chain, here a container-credentials endpoint that fails.
        with tempfile.TemporaryDirectory() as empty, CredentialsEndpoint(500) as endpoint:
            changes = {**empty_aws_chain(Path(empty)), **endpoint.environment}
            with patch.dict(os.environ, {key: value for key, value in changes.items() if value is not None}):
                for key in (key for key, value in changes.items() if value is None):
                    os.environ.pop(key, None)  # patch.dict puts back everything
                self.start(backend_instance=None, s3={"bucket_url": "https://s3.example.com/b", "region": "eu-west-1"})
                with self.assertLogs("slixmpp_http_upload.plugin", logging.ERROR) as logs:
                    self.recv(request_xml("1"))
                    self.settle(1, timeout=30)
                    self.expect(error_xml("1", "wait", "internal-server-error", NO_SLOT))
        [record] = logs.records
        self.assertFalse(record.exc_info)  # no traceback: the reason says it all
        self.assertNotIn("Traceback", logs.output[0])
        self.assertIn(f"Could not make a slot for {ALICE} (S3Backend): the AWS credential chain failed", record.getMessage())

    def test_debug_log_names_slots_and_refusals_but_no_credential(self) -> None:
        self.start(backend_instance=None, s3=S3_CONFIG, max_file_size=10)
        with self.assertLogs("slixmpp_http_upload.plugin", logging.DEBUG) as logs:
            self.recv(request_xml("1", "a.txt", "5"))
            put_url = self.next_sent().find(f"{{{NS}}}slot/{{{NS}}}put").get("url")
            self.recv(request_xml("2", "a.txt", "11"))
            self.next_sent()
        slot_line, refusal_line = logs.output
        self.assertIn(f"Slot for {ALICE}: 'a.txt', 5 bytes: {put_url.split('?')[0]}", slot_line)
        self.assertIn(f"Refused (file-too-large) a slot request from {ALICE}", refusal_line)
        text = "\n".join(logs.output)
        for secret in ("X-Amz-Signature", "X-Amz-Credential", S3_CONFIG["secret_access_key"]):
            self.assertNotIn(secret, text)


# -------------------------------------------------------------------------- registration


def make_component() -> ComponentXMPP:
    return ComponentXMPP(SERVICE, "secret", "localhost", 5347)


class TestRegistration:
    """Enabling the plugin on a bare component (no stream needed)."""

    @pytest.fixture(autouse=True)
    def own_loop(self) -> Iterator[asyncio.AbstractEventLoop]:
        """slixmpp makes (and sets) a loop when there is none: give it one that gets closed."""
        previous = current_loop()
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        yield loop
        loop.close()
        asyncio.set_event_loop(previous)

    def test_register_with_module(self) -> None:
        xmpp = make_component()
        xmpp.register_plugin("http_upload_server", {"backend_instance": FixedBackend()}, module="slixmpp_http_upload")
        plugin = xmpp.plugin["http_upload_server"]
        assert isinstance(plugin, HttpUploadServer)
        assert plugin.rules.served_domain == "localhost"
        assert {"xep_0030", "xep_0004", "xep_0128"} <= set(xmpp.plugin)
        plugin.plugin_end()

    def test_register_after_import(self) -> None:
        assert slixmpp_http_upload.http_upload_server is HttpUploadServer
        xmpp = make_component()
        xmpp.register_plugin("http_upload_server", {"backend_instance": FixedBackend(), "max_file_size": 5})
        plugin = xmpp.plugin["http_upload_server"]
        assert plugin.settings.max_file_size == 5
        plugin.plugin_end()

    def test_plugin_config_from_constructor(self) -> None:
        xmpp = ComponentXMPP(
            SERVICE,
            "secret",
            "localhost",
            5347,
            plugin_config={"http_upload_server": {"backend_instance": FixedBackend(), "queue_size": 7}},
        )
        xmpp.register_plugin("http_upload_server")
        assert xmpp.plugin["http_upload_server"].settings.queue_size == 7
        xmpp.plugin["http_upload_server"].plugin_end()

    @pytest.mark.parametrize(
        ("config", "message"),
        [
            ({"expiration_time": 0}, "http_upload_server.expiration_time: must be an integer from 1 to "),
            ({"expiration_time": "60"}, "http_upload_server.expiration_time: must be an integer"),
            ({"max_file_size": -1}, 'http_upload_server.max_file_size: must be a positive integer (bytes) or "infinity'),
            ({"iqdisc": "fifo"}, "http_upload_server.iqdisc.type: must be one of"),
            ({"iqdisc": {"type": "queues"}}, "http_upload_server.iqdisc.workers: is required when type is 'queues'"),
            ({"queue_size": 0}, "http_upload_server.queue_size: must be an integer from 1 to"),
            ({"allow": ["bob@remote.example/res"]}, "http_upload_server.allow: 'bob@remote.example/res' is not a bare"),
            ({"deny": "remote.example"}, "http_upload_server.deny: must be a list of bare JIDs or domains"),
            ({"legacy_namespaces": "yes"}, "http_upload_server.legacy_namespaces: must be true or false"),
            ({"bogus": 1}, "http_upload_server.bogus: unknown option"),
            ({"s3": {"bucket_url": "ftp://x"}}, "http_upload_server.s3.bucket_url: must be an http:// or https:// URL"),
            ({"s3": {**S3_CONFIG, "region": 1}}, "http_upload_server.s3.region: must be an AWS region name"),
            ({"backend": "gcs"}, "http_upload_server.backend: unknown backend 'gcs' (known: "),
        ],
    )
    def test_bad_option(self, config: dict[str, object], message: str) -> None:
        xmpp = make_component()
        backend = {} if {"s3", "backend"} & set(config) else {"backend_instance": FixedBackend()}
        with pytest.raises(ConfigError) as raised:
            xmpp.register_plugin("http_upload_server", {**backend, **config})
        assert str(raised.value).startswith(message), str(raised.value)

    def test_s3_options_checked_at_registration(self) -> None:
        xmpp = make_component()
        with pytest.raises(ConfigError, match=r"^http_upload_server\.s3\.bucket_url: is required$"):
            xmpp.register_plugin("http_upload_server", {"s3": {}})

    def test_domain_that_does_not_fit_host(self) -> None:
        xmpp = ComponentXMPP("files.localhost", "secret", "localhost", 5347)
        with pytest.raises(ConfigError, match=r"^http_upload_server\.domain: is required"):
            xmpp.register_plugin("http_upload_server", {"backend_instance": FixedBackend()})
        xmpp = ComponentXMPP("files.localhost", "secret", "localhost", 5347)
        xmpp.register_plugin("http_upload_server", {"backend_instance": FixedBackend(), "domain": "LocalHost"})
        assert xmpp.plugin["http_upload_server"].rules.served_domain == "localhost"
        xmpp.plugin["http_upload_server"].plugin_end()
