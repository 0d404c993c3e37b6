"""Replies to an IQ built from its raw ``id``, ``from`` and ``to``, never from a copy of it.

slixmpp's ``Iq.reply()`` deep-copies the whole request, payload and all, only to clear the copy
(a payload nested a few hundred deep raises ``RecursionError``), and reads ``from`` and ``to``
as JIDs (a malformed one raises ``InvalidJID``). An error path built on it can raise the very
exception it is handling. :func:`result` and :func:`error` read the three attributes as strings
and make a new, empty ``<iq/>``: nothing a peer sends can make them raise, and they cost less.
Send them through :class:`~slixmpp_http_upload.wire.ReplyWriter` (or ``xmpp.send(reply)``), not
``Iq.send()``, which reads ``to`` as a JID again and sets up a response matcher and a future
even for a result.

:func:`result_xml` writes a result as text, byte for byte what slixmpp's ``tostring`` makes of
:func:`result` with the payload appended (save tab, LF and CR in attributes, which it writes as
character references: see :mod:`.guard`), for :class:`~slixmpp_http_upload.wire.ReplyWriter`.

Upstream, ``StanzaBase.reply()`` could do the same (a new element with the swapped raw
attributes instead of ``copy.copy(self)`` followed by ``clear()``), and
``RootStanza.exception()`` could answer from the raw attributes when building its reply fails.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Protocol
from xml.etree import ElementTree as ET

from slixmpp.stanza import Iq


class Request(Protocol):
    """What a reply is made from: the request's element and the stream it came on (a slixmpp
    stanza object has both, and so has :class:`Received`)."""

    @property
    def stream(self) -> Any: ...

    @property
    def xml(self) -> ET.Element: ...


class Received(NamedTuple):
    """A request as read from the stream, before (or instead of) slixmpp's stanza object."""

    stream: Any
    xml: ET.Element


KNOWN_ADDRESSES = 1024
"""How many pairs of escaped addresses :func:`result_xml` remembers."""

CHARACTER_REFERENCES = str.maketrans({"\t": "&#9;", "\n": "&#10;", "\r": "&#13;"})
"""What a parser would read as a space in an attribute value, as character references."""


def result(request: Request) -> Iq:
    """An empty ``result`` to ``request``, addressed back to its sender."""
    return _reply(request, "result")


def error(
    request: Request,
    error_type: str,
    condition: str,
    text: str | None = None,
    extension: ET.Element | None = None,
) -> Iq:
    """An ``error`` reply to ``request``: ``<error type=error_type>`` with ``condition``, an
    optional ``text`` and an optional application-specific ``extension`` element."""
    reply = _reply(request, "error")
    reply["error"]["type"] = error_type
    reply["error"]["condition"] = condition
    if text:
        reply["error"]["text"] = text
    if extension is not None:
        reply["error"].append(extension)
    return reply


def result_xml(request: Request, payload: str) -> str:
    """The text of :func:`result` to ``request`` carrying ``payload`` (the XML text of one element)."""
    ident, ours, theirs = _addresses(request)
    addressed = _addressed(ours, theirs)
    if ident is None:
        return f'<iq type="result"{addressed}>{payload}</iq>'
    return f'<iq type="result" id="{escape_attribute(ident)}"{addressed}>{payload}</iq>'


@functools.lru_cache(maxsize=KNOWN_ADDRESSES)
def _addressed(ours: str | None, theirs: str | None) -> str:
    """The ``from`` and ``to`` attributes of a reply, as text, remembered for the last
    :data:`KNOWN_ADDRESSES` pairs: the service's own address and its users' come back in every
    reply."""
    text = f' from="{escape_attribute(ours)}"' if ours else ""
    return f'{text} to="{escape_attribute(theirs)}"' if theirs else text


def escape_attribute(value: str) -> str:
    """``value`` as a double-quoted attribute value: what ``tostring`` writes, with tab, LF and CR
    as character references."""
    if value.isalnum():
        return value
    escaped = escape_text(value)
    return escaped if escaped.isprintable() else escaped.translate(CHARACTER_REFERENCES)


def escape_text(value: str) -> str:
    """``value`` as element text, as ``tostring`` writes it. Each character is looked for before
    it is replaced: looking is a fifth of the cost of a replace that finds nothing, and a slot's
    URLs (every reply's longest text) hold none of them but ``&``."""
    if "&" in value:
        value = value.replace("&", "&amp;")
    if "<" in value:
        value = value.replace("<", "&lt;")
    if ">" in value:
        value = value.replace(">", "&gt;")
    if "'" in value:
        value = value.replace("'", "&apos;")
    if '"' in value:
        value = value.replace('"', "&quot;")
    return value


def _addresses(request: Request) -> tuple[str | None, str | None, str | None]:
    """The reply's ``id``, ``from`` and ``to``: the request's ``id``, ``to`` (for a component
    only: a client's server adds our address itself) and ``from``."""
    received = request.xml
    ours = received.get("to") if getattr(request.stream, "is_component", False) else None
    return received.get("id"), ours, received.get("from")


def _attributes(request: Request, kind: str) -> dict[str, str]:
    """The reply's attributes, in the order they are written: ``type``, ``id``, ``from``, ``to``."""
    ident, ours, theirs = _addresses(request)
    attributes = {"type": kind}
    if ident is not None:
        attributes["id"] = ident
    if ours:
        attributes["from"] = ours
    if theirs:
        attributes["to"] = theirs
    return attributes


def _reply(request: Request, kind: str) -> Iq:
    stream = request.stream
    return Iq(stream, xml=ET.Element(f"{{{stream.default_ns}}}iq", _attributes(request, kind)), recv=True)
