"""The stream guard: what is answered or dropped before any handler sees a stanza.

slixmpp matches handlers, runs inline ones and builds its default replies inside the call that
reads the stream; whatever raises there closes the stream, and every request in flight for
every user is lost. :class:`StreamGuard` adds two filters to one stream (not to slixmpp's
classes: a bot's other plugins go on seeing every stanza they saw before, save those that would
have broken the stream or gone unanswered).

Incoming (a refusal answers the IQ and drops it; "for the service" means that it carries an
upload ``<request>`` of a served dialect or a disco#info/#items query):

==========================================================  ===================================
``from`` or ``to`` is not a JID                             IQ get/set: ``modify/jid-malformed``;
                                                            anything else: dropped (a warning)
an IQ get/set for the service with more than one payload    ``modify/bad-request`` (RFC 6120
                                                            §8.2.3: exactly one payload)
an IQ get/set for the service of more than                  ``modify/bad-request``, looking no
:data:`MAX_ELEMENTS` elements                               further than that
any other stanza nested deeper than :data:`MAX_DEPTH`       IQ get/set: ``modify/bad-request``;
                                                            anything else: dropped (a warning)
a disco#info or disco#items ``set``                         ``cancel/feature-not-implemented``
==========================================================  ===================================

Outgoing: an ``id`` holding a tab, LF or CR is written with character references (``&#9;``),
as slixmpp writes them raw and every parser reads a raw one in an attribute as a space. Such a
stanza is written by this filter and not by the send queue, so an ``out_sync`` filter added
after ours (XEP-0198's counter, when a bot loads ``xep_0198`` after this plugin) does not see it.

Upstream (slixmpp 1.17), each of these belongs in slixmpp: ``xmlstream.tostring.escape``
should escape tab, LF and CR in attribute values; ``XMLStream.recv_stanza`` should catch what
matchers, ``unhandled()`` and ``exception()`` raise instead of letting it out of
``data_received``; ``StanzaBase.reply()`` should not deep-copy the payload (see
:mod:`.replies`); ``xep_0030``'s handlers should answer ``set`` and refuse a query with other
payloads beside it.
"""

from __future__ import annotations

import functools
import logging
from itertools import islice
from xml.etree import ElementTree as ET

from slixmpp import JID, BaseXMPP
from slixmpp.jid import InvalidJID
from slixmpp.xmlstream import StanzaBase

from . import replies
from .replies import CHARACTER_REFERENCES
from .wire import ReplyWriter, written_form

log = logging.getLogger(__name__)

MAX_ELEMENTS = 64
"""Elements in an IQ for the service, itself included, beyond which it is refused unread (a
slot request needs at most five, a disco query two)."""
MAX_DEPTH = 64
"""Nesting beyond which any other stanza is refused or dropped (slixmpp copies and writes
stanzas recursively)."""
DISCO_QUERIES = frozenset(
    f"{{http://jabber.org/protocol/disco#{kind}}}query" for kind in ("info", "items")
)
KNOWN_JIDS = 1024
"""How many valid addresses a guard remembers, so as not to parse them again."""
REQUESTS = ("get", "set")


class StreamGuard:
    """The filters of one stream; ``payloads`` are the tags of the requests the service answers
    besides disco queries."""

    def __init__(self, xmpp: BaseXMPP, payloads: frozenset[str]) -> None:
        self.xmpp = xmpp
        self.served = payloads | DISCO_QUERIES
        self.iq_tag = f"{{{xmpp.default_ns}}}iq"
        self.requests = payloads
        self.writer = ReplyWriter(xmpp, self.outgoing)
        """How this stream's replies are sent (the plugin's too)."""

    def install(self) -> None:
        self.xmpp.add_filter("in", self.incoming)
        self.xmpp.add_filter("out_sync", self.outgoing)

    def remove(self) -> None:
        self.xmpp.del_filter("in", self.incoming)
        self.xmpp.del_filter("out_sync", self.outgoing)

    def incoming(self, stanza: StanzaBase) -> StanzaBase | None:
        """The stanza, or None when it was answered here or dropped; never raises."""
        try:
            return self._check(stanza)
        except Exception:
            log.exception("Dropped a stanza the guard could not check")
            return None

    def _check(self, stanza: StanzaBase) -> StanzaBase | None:
        xml = stanza.xml
        request = xml.tag == self.iq_tag and xml.get("type") in REQUESTS
        if not (_is_jid(xml.get("from")) and _is_jid(xml.get("to"))):
            return self._refuse(stanza, request, "modify", "jid-malformed", "malformed address")
        if request and len(xml) == 1 and (payload := xml[0]).tag in self.served:  # the usual case
            if len(payload) and len(list(islice(xml.iter(), MAX_ELEMENTS + 1))) > MAX_ELEMENTS:
                return self._refuse(stanza, request, "modify", "bad-request", "too large")
            if payload.tag in DISCO_QUERIES and xml.get("type") == "set":
                return self._refuse(stanza, request, "cancel", "feature-not-implemented", "a disco set")
            return stanza
        if request and any(child.tag in self.served for child in xml):
            return self._refuse(stanza, request, "modify", "bad-request", "more than one payload")
        if _deeper_than(xml, MAX_DEPTH):
            return self._refuse(stanza, request, "modify", "bad-request", "nested too deep")
        return stanza

    def plain_request(self, xml: ET.Element) -> bool:
        """Whether ``xml``, as read, is the usual slot request: an IQ get whose one payload is a
        served ``<request/>`` of at most :data:`MAX_ELEMENTS` elements, to the service's JID as it
        is written, from a valid JID. Nothing in it for the filter to refuse, nor for any
        handler but the plugin's: ``serve``'s streams hand such an element to the plugin before
        slixmpp builds a stanza object of it (everything else takes slixmpp's road)."""
        return (
            xml.tag == self.iq_tag
            and xml.get("type") == "get"
            and len(xml) == 1
            and xml[0].tag in self.requests
            and xml.get("to") == self.xmpp.boundjid.full
            and _is_jid(xml.get("from"))
            and (not len(xml[0]) or len(list(islice(xml.iter(), MAX_ELEMENTS + 1))) <= MAX_ELEMENTS)
        )

    def _refuse(
        self, stanza: StanzaBase, request: bool, error_type: str, condition: str, why: str
    ) -> StanzaBase | None:
        """Answer (an IQ get/set) or drop ``stanza``; None, what the filter returns for it."""
        xml = stanza.xml
        if request:
            log.debug("Refused an IQ from %.200r: %s", xml.get("from"), why)
            self.writer.send(replies.error(stanza, error_type, condition))
        else:
            log.warning("Dropped a <%s/> from %.200r: %s", xml.tag.rpartition('}')[2], xml.get("from"), why)
        return None

    def outgoing(self, stanza: StanzaBase) -> StanzaBase | None:
        """The stanza, or None when it had to be written here (its ``id`` has a tab, LF or CR)."""
        ident = stanza.xml.get("id")
        if ident is None or ident.isprintable() or self.xmpp.use_cdata:  # (CDATA text keeps references as is)
            return stanza
        if ident.translate(CHARACTER_REFERENCES) == ident:
            return stanza
        self.xmpp.send_raw(written_form(stanza, self.xmpp))
        return None


@functools.lru_cache(maxsize=KNOWN_JIDS)
def _is_jid(text: str | None) -> bool:
    """Whether ``text`` is absent or a valid JID; remembered for the last :data:`KNOWN_JIDS`
    addresses (the service's own and its busiest users')."""
    if not text:
        return True
    try:
        JID(text)
    except InvalidJID:
        return False
    return True


def _deeper_than(element: ET.Element, limit: int) -> bool:
    """Whether ``element`` nests more than ``limit`` levels (itself being the first); walks
    iteratively, and not at all when it holds fewer elements than ``limit``."""
    if len(list(islice(element.iter(), limit))) < limit:
        return False
    stack = [(element, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in node)
    return False
