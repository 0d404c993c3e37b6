"""A stand-in XMPP server for one external component (XEP-0114), on 127.0.0.1.

It takes any component that connects (any secret), lets a test write raw stanzas to it, as a
server that routes whatever it is given would, and collects what the component sends back,
by ``id`` (:class:`Answers`). It counts connections, so a test can tell that the component kept
its stream.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from types import TracebackType
from typing import Self
from xml.etree import ElementTree as ET

COMPONENT_NS = "jabber:component:accept"
HANDSHAKE = f"{{{COMPONENT_NS}}}handshake"
STREAM_HEADER = (
    "<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'"
    " from='{jid}' id='fake-server-stream'>"
)


class Answers:
    """Stanzas received, by ``id`` (parsed, so ``&#9;`` reads as a tab)."""

    def __init__(self) -> None:
        self.by_id: defaultdict[str | None, list[ET.Element]] = defaultdict(list)
        self._arrived = asyncio.Event()

    def add(self, stanza: ET.Element) -> None:
        self.by_id[stanza.get("id")].append(stanza)
        self._arrived.set()

    async def wait_for(self, ids: set[str], timeout: float = 15) -> None:
        """Until every id in ``ids`` was answered; ``TimeoutError`` (naming the first missing ones)
        after ``timeout`` s."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while missing := ids - self.by_id.keys():
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), deadline - loop.time())
            except TimeoutError:
                raise TimeoutError(f"{len(missing)} unanswered, such as {sorted(missing)[:5]!r}") from None


class ComponentServer:
    """``async with ComponentServer(jid) as server``: listens on ``server.port``; after
    :meth:`wait_for_session`, :meth:`send` writes to the component and ``answers`` holds what
    the component sent."""

    def __init__(self, jid: str) -> None:
        self.jid = jid
        self.port = 0
        self.connections = 0
        self.answers = Answers()
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._session = asyncio.Event()
        self._closed = asyncio.Event()

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        assert self._server is not None
        if self._writer is not None:
            self._writer.close()  # the reader sees the end, and _serve returns
            await asyncio.wait_for(self._closed.wait(), 5)
        self._server.close()
        await self._server.wait_closed()

    @property
    def connected(self) -> bool:
        """Whether the component's stream is still open."""
        return self._writer is not None and not self._closed.is_set()

    async def wait_for_session(self, timeout: float = 15) -> None:
        await asyncio.wait_for(self._session.wait(), timeout)

    async def send(self, text: str) -> None:
        """Write ``text`` (stanzas) to the component."""
        assert self._writer is not None, "no component connected"
        self._writer.write(text.encode())
        await self._writer.drain()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writer = writer
        self._closed.clear()
        parser = ET.XMLPullParser(events=("start", "end"))
        depth = 0
        root: ET.Element | None = None
        try:
            while data := await reader.read(1 << 16):
                parser.feed(data)
                for event, element in parser.read_events():
                    if event == "start":
                        depth += 1
                        if depth == 1:
                            root = element
                            writer.write(STREAM_HEADER.format(jid=self.jid).encode())
                        continue
                    depth -= 1
                    if depth != 1:
                        continue
                    if element.tag == HANDSHAKE:
                        writer.write(b"<handshake/>")
                        self._session.set()
                    else:
                        self.answers.add(element)
                    assert root is not None
                    root.clear()
        except ConnectionError:
            pass
        finally:
            self._closed.set()
            writer.close()
