"""How the plugin's replies reach the stream: written here, or through slixmpp's send queue.

``xmpp.send(stanza)`` queues a stanza object; a task takes it off the queue, runs every outgoing
filter on it and serialises it with ``slixmpp.xmlstream.tostring``, whose ``escape()`` joins a
generator over every character of every attribute value. For a slot (two URLs of ~270 characters)
that was ~40 % of the component's CPU per slot (see ``bench/README.md``).

:class:`ReplyWriter` writes a reply itself — a slot's text made from strings
(:func:`~slixmpp_http_upload.replies.result_xml`), an error serialised once by ``tostring`` —
with ``xmpp.send_raw``, but **only while nothing else watches outgoing stanzas**: no ``out``
filter but the roster's (slixmpp's own, which looks at presence only), no ``out_sce`` filter,
and no ``out_sync`` filter but the guard's own. Otherwise (``xep_0198`` stream management in a
client bot, which counts and keeps every stanza it sends; any other plugin's or the bot's own
filter) every reply goes through ``xmpp.send`` as a stanza object, exactly as before. The check
runs for each reply, so a filter added later is honoured from its first stanza on. Either way
all replies of one stream take the same road while the filters stay the same, so their order
is kept.

On ``serve``'s own streams (:attr:`ReplyWriter.coalesce`) the replies made in one turn of the
event loop leave in one write — those to one read when the read is done
(:attr:`ReplyWriter.reading`, set by :class:`~slixmpp_http_upload.serve.UploadComponent`): one
system call instead of one per reply, and fewer, fuller packets for the server.

slixmpp has no public way to list the filters; the writer reads the table ``add_filter`` fills
(``XMLStream.__filters``), and if a slixmpp release renames it, it sees no table and always
queues. Upstream, an ``XMLStream.has_filters(mode)`` (or ``send`` itself taking a fast road when
no filter is registered, and ``escape`` built on ``str.replace``) would make this unnecessary.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from xml.etree import ElementTree as ET

from slixmpp import BaseXMPP
from slixmpp.xmlstream import StanzaBase
from slixmpp.xmlstream.tostring import tostring

from . import replies
from .replies import CHARACTER_REFERENCES


class ReplyWriter:
    """Sends one stream's replies; ``own_filter`` is the guard's ``out_sync`` filter."""

    def __init__(self, xmpp: BaseXMPP, own_filter: Callable[[StanzaBase], StanzaBase | None]) -> None:
        self.xmpp = xmpp
        self.own_filter = own_filter
        self.filters: dict[str, list[Any]] | None = getattr(xmpp, "_XMLStream__filters", None)
        roster = getattr(xmpp, "roster", None)
        self.roster_only = [getattr(roster, "_save_last_status", None)]
        """The ``out`` filters when only the roster's is there: every slixmpp stream has it, and
        it looks at presence stanzas only."""
        self.ours_only = [own_filter]
        self.coalesce = False
        """Whether the replies of one turn of the event loop go out in one write (``serve``'s
        own streams; a bot's test harness may expect a write per stanza)."""
        self.batch: list[str] = []
        self.reading = False
        """Set while the stream's owner reads (``serve``'s components): it calls :meth:`flush`
        when the read is done, so the replies made meanwhile need no turn of the loop of their own."""

    def direct(self) -> bool:
        """Whether a reply may be written now without the send queue: connected, the session
        started (before it slixmpp holds stanzas back), nothing else filtering what goes out and
        no CDATA mode (``tostring`` escapes differently there)."""
        filters = self.filters
        xmpp = self.xmpp
        return (
            filters is not None
            and (not filters["out"] or filters["out"] == self.roster_only)
            and not filters["out_sce"]
            and (not filters["out_sync"] or filters["out_sync"] == self.ours_only)
            and xmpp.transport is not None
            and getattr(xmpp, "_session_started", False)  # slixmpp's own flag, read only
            and not xmpp.use_cdata
        )

    def send(self, reply: StanzaBase) -> None:
        """Send a reply made as a stanza object (errors)."""
        if self.direct():
            self._write(written_form(reply, self.xmpp))
        else:
            self.xmpp.send(reply)

    def send_result(self, request: replies.Request, payload: str) -> None:
        """Send a ``result`` to ``request`` carrying ``payload``, the XML text of one element
        (in its namespace, with ``xmlns``, as ``tostring`` writes it)."""
        if self.batch or self.direct():  # (a reply already waits for this turn's write: direct)
            self._write(replies.result_xml(request, payload))
        else:
            reply = replies.result(request)
            reply.append(ET.fromstring(payload))
            self.xmpp.send(reply)

    def _write(self, text: str) -> None:
        """Write ``text``, with the other replies made in this turn of the event loop if coalescing."""
        if not self.coalesce:
            self.xmpp.send_raw(text)
            return
        self.batch.append(text)
        if len(self.batch) == 1 and not self.reading:
            self.xmpp.loop.call_soon(self.flush)

    def flush(self) -> None:
        """Write the replies made so far, in one write (dropped if the stream is gone)."""
        if not self.batch:
            return
        text = "".join(self.batch)
        self.batch.clear()
        if self.xmpp.transport is not None:
            self.xmpp.send_raw(text)


def written_form(stanza: StanzaBase, stream: BaseXMPP) -> str:
    """``stanza`` as slixmpp's send queue writes it, except that an ``id`` holding a tab, LF or
    CR is written with character references (see :mod:`.guard`)."""
    text = tostring(stanza.xml, xmlns=stream.default_ns, stream=stream, top_level=True)
    ident = stanza.xml.get("id")
    if ident is None or ident.isprintable() or stream.use_cdata:
        return text
    return text.translate(CHARACTER_REFERENCES)
