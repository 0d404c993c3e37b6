"""The ceiling of the component path: an XEP-0114 component that does (almost) nothing.

It measures nothing itself. ``throughput.py`` runs it behind the same Prosody as our
component, so the slots/s it reaches is what the path client → Prosody → component → Prosody
→ client allows when the component costs next to nothing: raw asyncio socket, the XEP-0114
handshake (``sha1(stream id + secret)`` in hex), then every ``<iq`` of type get/set is answered
with an empty result whose id/from/to are cut out of the opening tag by regex — no XML parser.
With ``--slot`` the result carries a canned slot as long as ours, so the XMPP server routes the
same bytes as for our component: the ceiling of any upload service on this path.

Run by hand (it stops on SIGTERM/SIGINT or when the server closes the stream)::

    python bench/trivial_component.py --port 5347 --jid ceiling.localhost --secret S
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import re
import signal
import sys

IQ_STANZA = re.compile(rb"<iq\s([^>]*?)(?:/>|>.*?</iq>)", re.S)
ATTR = re.compile(rb"""\b(id|from|to|type)=(['"])(.*?)\2""")
STREAM_ID = re.compile(rb"""<stream:stream\b[^>]*?\bid=(['"])(.*?)\1""")
READ_SIZE = 1 << 16
SLOT_PAYLOAD = (
    b"<slot xmlns='urn:xmpp:http:upload:0'><put url='http://127.0.0.1:9/bucket/"
    + b"9f" * 32
    + b"/f.jpg?X-Amz-Algorithm=AWS4-HMAC-SHA256&amp;X-Amz-Credential=AKIDBENCHMARK0000000%2F20261125%2Fus-east-1%2Fs3%2F"
    b"aws4_request&amp;X-Amz-Date=20261125T120000Z&amp;X-Amz-Expires=60&amp;X-Amz-SignedHeaders="
    b"content-length%3Bcontent-type%3Bhost&amp;X-Amz-Signature="
    + b"0e" * 32
    + b"'/><get url='http://127.0.0.1:9/bucket/"
    + b"9f" * 32
    + b"/f.jpg'/></slot>"
)
"""With ``--slot``: a canned slot of the shape and size ours sends, so that the XMPP server has
the same reply to route, and only the component's own work differs."""


class ComponentError(RuntimeError):
    pass


def handshake_digest(stream_id: bytes, secret: str) -> str:
    """XEP-0114: lower-case hex SHA-1 of the stream id followed by the secret."""
    return hashlib.sha1(stream_id + secret.encode()).hexdigest()


def answer_iqs(buffer: bytes, payload: bytes = b"") -> tuple[bytes, bytes]:
    """Replies (results carrying ``payload``) to every complete get/set ``<iq>`` in ``buffer``,
    and the unconsumed rest."""
    replies = []
    end = 0
    for match in IQ_STANZA.finditer(buffer):
        end = match.end()
        attrs = {name: (quote, value) for name, quote, value in ATTR.findall(match.group(1))}
        if attrs.get(b"type", (b"", b""))[1] not in (b"get", b"set"):
            continue
        if b"id" not in attrs or b"from" not in attrs:
            continue
        (iq, ident), (fq, sender), (tq, own) = attrs[b"id"], attrs[b"from"], attrs.get(b"to", (b"'", b""))
        head = b"<iq type='result' id=%s%s%s from=%s%s%s to=%s%s%s" % (iq, ident, iq, tq, own, tq, fq, sender, fq)
        replies.append(head + (b">%s</iq>" % payload if payload else b"/>"))
    return b"".join(replies), buffer[end:]


async def connect(host: str, port: int, jid: str, secret: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(
        f"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams' "
        f"to='{jid}'>".encode()
    )
    buffer = b""
    while not (match := STREAM_ID.search(buffer)):
        chunk = await asyncio.wait_for(reader.read(READ_SIZE), 10)
        if not chunk:
            raise ComponentError(f"stream closed before the header: {buffer!r}")
        buffer += chunk
    writer.write(f"<handshake>{handshake_digest(match.group(2), secret)}</handshake>".encode())
    while b"<handshake" not in buffer:
        if b"<stream:error" in buffer:
            raise ComponentError(f"handshake refused: {buffer.decode(errors='replace')}")
        chunk = await asyncio.wait_for(reader.read(READ_SIZE), 10)
        if not chunk:
            raise ComponentError(f"stream closed during the handshake: {buffer!r}")
        buffer += chunk
    return reader, writer


async def serve(host: str, port: int, jid: str, secret: str, payload: bytes) -> None:
    reader, writer = await connect(host, port, jid, secret)
    print(f"trivial component {jid} connected", file=sys.stderr, flush=True)
    buffer = b""
    while chunk := await reader.read(READ_SIZE):
        buffer += chunk
        replies, buffer = answer_iqs(buffer, payload)
        if replies:
            writer.write(replies)
        if b"</stream:stream>" in buffer or b"<stream:error" in buffer:
            break
    writer.close()


async def main_async(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    payload = SLOT_PAYLOAD if args.slot else b""
    task = asyncio.ensure_future(serve(args.host, args.port, args.jid, args.secret, payload))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        await task
    except asyncio.CancelledError:
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--jid", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--slot", action="store_true", help="answer with a canned slot instead of nothing")
    try:
        asyncio.run(main_async(parser.parse_args()))
    except ComponentError as error:
        print(f"trivial component: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
