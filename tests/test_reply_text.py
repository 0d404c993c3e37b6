"""The replies the plugin writes itself are, byte for byte, what slixmpp would have written.

:class:`~slixmpp_http_upload.wire.ReplyWriter` writes a slot's result as text made from strings
(:func:`~slixmpp_http_upload.replies.result_xml`, :meth:`~slixmpp_http_upload.stanza.Dialect.slot_xml`)
instead of handing a stanza object to slixmpp's send queue. Here the same reply is also built the
way it used to be — an ``Iq`` from :func:`~slixmpp_http_upload.replies.result` with the slot
appended as ElementTree elements — and serialised by slixmpp's own ``tostring``; the two must be
equal for every dialect, with and without PUT headers, and for ids and addresses holding every
character that needs escaping. Which road a reply takes is checked here too.
"""

from __future__ import annotations

from xml.etree import ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st
from slixmpp import ClientXMPP, ComponentXMPP
from slixmpp.stanza import Iq
from slixmpp.xmlstream.tostring import escape, tostring

from slixmpp_http_upload import replies
from slixmpp_http_upload.slot import Slot
from slixmpp_http_upload.stanza import CURRENT, LEGACY, Dialect

PUT = "https://files.example/put/t0k3n/caf%C3%A9%20%26%20%3C%3E.jpg?X-Amz-Date=20261129&sig=\"q'<x>&y"
GET = "https://files.example/get/t0k3n/caf%C3%A9.jpg?a=1&b='2'"
ADDRESSES = [
    {"id": "r1", "from": "alice@localhost/phone", "to": "upload.localhost"},
    {"id": "a&b<c>\"d'e", "from": "o'hara@localhost/x&y", "to": "upload.localhost"},
    {"id": "tab\tlf\ncr\rend", "from": "bob@localhost", "to": "upload.localhost"},
    {"id": "ünïcødé ☃", "from": "jürgen@münchen.example/ü", "to": "upload.localhost"},
    {"from": "alice@localhost/no-id", "to": "upload.localhost"},
    {"id": "no-from", "to": "upload.localhost"},
    {"id": "no-to", "from": "alice@localhost/phone"},
]
SLOTS = [Slot(PUT, GET), Slot(PUT, GET, (("Authorization", "Basic a&b<c>\"d'e"), ("Cookie", "x=1; y='2'")))]


def element_tree_slot(dialect: Dialect, slot: Slot) -> ET.Element:
    """The slot as the plugin built it before it wrote text itself."""
    ns = dialect.namespace
    element = ET.Element(f"{{{ns}}}slot")
    put = ET.SubElement(element, f"{{{ns}}}put")
    get = ET.SubElement(element, f"{{{ns}}}get")
    if dialect.attributes:
        put.set("url", slot.put_url)
        get.set("url", slot.get_url)
        for name, value in slot.put_headers:
            ET.SubElement(put, f"{{{ns}}}header", name=name).text = value
    else:
        put.text = slot.put_url
        get.text = slot.get_url
    return element


@pytest.fixture(params=["component", "client"])
def stream(request: pytest.FixtureRequest) -> ComponentXMPP | ClientXMPP:
    if request.param == "component":
        return ComponentXMPP("upload.localhost", "secret", "127.0.0.1", 5347)
    return ClientXMPP("bot@localhost/uploads", "secret")


@pytest.mark.parametrize("dialect", [CURRENT, *LEGACY], ids=lambda d: d.namespace)
@pytest.mark.parametrize("slot", SLOTS, ids=["plain", "headers"])
@pytest.mark.parametrize("attributes", ADDRESSES, ids=lambda a: a.get("id", "no id"))
def test_result_text_is_what_slixmpp_writes(
    stream: ComponentXMPP | ClientXMPP, dialect: Dialect, slot: Slot, attributes: dict[str, str]
) -> None:
    request = Iq(stream, xml=ET.Element(f"{{{stream.default_ns}}}iq", {"type": "get", **attributes}), recv=True)
    if slot.put_headers and not dialect.attributes:
        with pytest.raises(ValueError, match="cannot carry"):
            dialect.slot_xml(slot)
        return
    reply = replies.result(request)
    reply.append(element_tree_slot(dialect, slot))
    expected = tostring(reply.xml, xmlns=stream.default_ns, stream=stream, top_level=True)
    expected = expected.translate(replies.CHARACTER_REFERENCES)  # what the guard's filter writes
    assert replies.result_xml(request, dialect.slot_xml(slot)) == expected
    assert ET.fromstring(expected).get("id") == attributes.get("id")  # tabs and line ends survive a parser


@given(st.text(alphabet=st.sampled_from("&<>'\"a;#\t\u00e9\u2603") | st.characters()))
def test_text_is_escaped_as_slixmpp_escapes_it(text: str) -> None:
    assert replies.escape_text(text) == escape(text)


def test_a_plain_stream_is_written_directly_once_started() -> None:
    xmpp = ComponentXMPP("upload.localhost", "secret", "127.0.0.1", 5347)
    xmpp.register_plugin("http_upload_server", {"host": "upload.@HOST@", "s3": S3_OPTIONS})
    writer = xmpp.plugin["http_upload_server"].writer
    assert not writer.direct()  # not connected: slixmpp's queue holds replies back
    xmpp.transport = object()  # type: ignore[assignment]
    xmpp.event("session_start")
    assert writer.direct()
    seen: list[object] = []
    xmpp.add_filter("out", lambda stanza: seen.append(stanza) or stanza)  # a bot's own filter …
    assert not writer.direct()  # … sees every reply again
    xmpp.transport = None


def test_stream_management_takes_the_queue() -> None:
    xmpp = ClientXMPP("bot@localhost/uploads", "secret")
    for plugin in ("xep_0030", "xep_0004", "xep_0128", "xep_0198"):
        xmpp.register_plugin(plugin)
    xmpp.register_plugin("http_upload_server", {"s3": S3_OPTIONS})
    xmpp.transport = object()  # type: ignore[assignment]
    xmpp.event("session_start")
    assert not xmpp.plugin["http_upload_server"].writer.direct()
    xmpp.transport = None


S3_OPTIONS = {
    "bucket_url": "http://127.0.0.1:9/bucket",
    "region": "us-east-1",
    "access_key_id": "AKIDTEST",
    "secret_access_key": "not-a-secret",
}
