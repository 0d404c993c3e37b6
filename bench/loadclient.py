"""A cheap XMPP load client on raw asyncio sockets, for the benchmarks in this folder.

It measures nothing by itself: ``throughput.py`` and ``memory.py`` drive it. Each of K
connections logs in as a local user over plaintext c2s on loopback (stream header, SASL
PLAIN, stream restart, resource bind — no XML parser), then keeps D slot requests in flight
(a new one leaves as soon as an answer comes back) until a shared budget of N requests is
spent. Replies are matched by id with one regex over the byte stream.

:class:`LoadClientProcess` runs all connections in one asyncio loop in a child process, so
the client's CPU is separate from the orchestrating script's and can be reported on its own.
Each run is bounded in time (``timeout``) and in count (the budget).
"""

from __future__ import annotations

import asyncio
import base64
from html import unescape
from xml.sax.saxutils import escape as xml_escape
import multiprocessing
import re
import statistics
import time
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import Connection
from typing import Any

STREAM_HEADER = (
    "<?xml version='1.0'?><stream:stream to='{domain}' version='1.0' "
    "xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
)
REQUEST_TEMPLATE = (
    "<iq type='get' id='{id}' to='{to}'><request xmlns='urn:xmpp:http:upload:0' "
    "filename='f.jpg' size='1000' content-type='image/jpeg'/></iq>"
)
IQ_STANZA = re.compile(rb"<iq\s([^>]*?)(?:/>|>.*?</iq>)", re.S)
ATTR_ID = re.compile(rb"""\bid=(['"])(.*?)\1""")
ATTR_TYPE = re.compile(rb"""\btype=(['"])(.*?)\1""")
STREAM_ERROR = re.compile(rb"<stream:error>.*?</stream:error>|</stream:stream>", re.S)
READ_SIZE = 1 << 16


class LoadError(RuntimeError):
    """Login failed, the server closed the stream, or replies went missing."""


@dataclass
class Account:
    user: str
    password: str


@dataclass
class RunStats:
    """What one run saw; latencies in microseconds, CPU in seconds of this process."""

    requests: int
    results: int
    errors: int
    error_samples: list[str]
    wall_s: float
    client_cpu_s: float
    rate: float
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    mean_us: float


@dataclass
class Session:
    """One logged-in c2s connection."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    jid: str
    buffer: bytes = b""
    next_id: int = 0
    sent_at: dict[bytes, int] = field(default_factory=dict)


# --------------------------------------------------------------------------
# login


async def _read_until(session: Session, marker: bytes, timeout: float, failure: bytes = b"") -> bytes:
    """Read until ``marker`` is in the buffer; return and consume everything up to its end."""
    deadline = time.monotonic() + timeout
    while marker not in session.buffer:
        if failure and failure in session.buffer:
            raise LoadError(f"server refused: {session.buffer[-300:].decode(errors='replace')}")
        left = deadline - time.monotonic()
        if left <= 0:
            raise LoadError(f"timed out waiting for {marker!r}; got {session.buffer[-300:]!r}")
        chunk = await asyncio.wait_for(session.reader.read(READ_SIZE), left)
        if not chunk:
            raise LoadError(f"connection closed while waiting for {marker!r}; got {session.buffer[-300:]!r}")
        session.buffer += chunk
    end = session.buffer.index(marker) + len(marker)
    head, session.buffer = session.buffer[:end], session.buffer[end:]
    return head


async def open_session(
    host: str, port: int, domain: str, account: Account, resource: str, timeout: float = 10.0
) -> Session:
    """Connect, authenticate with SASL PLAIN, restart the stream and bind ``resource``."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    session = Session(reader, writer, jid="")
    header = STREAM_HEADER.format(domain=domain).encode()
    writer.write(header)
    features = await _read_until(session, b"</stream:features>", timeout)
    if b"<mechanism>PLAIN</mechanism>" not in features:
        raise LoadError(f"PLAIN is not offered: {features.decode(errors='replace')}")
    token = base64.b64encode(f"\0{account.user}\0{account.password}".encode()).decode()
    writer.write(f"<auth xmlns='urn:ietf:params:xml:ns:xmpp-sasl' mechanism='PLAIN'>{token}</auth>".encode())
    await _read_until(session, b"<success", timeout, failure=b"<failure")
    await _read_until(session, b">", timeout)
    session.buffer = b""
    writer.write(header)
    await _read_until(session, b"</stream:features>", timeout)
    writer.write(
        f"<iq type='set' id='bind'><bind xmlns='urn:ietf:params:xml:ns:xmpp-bind'>"
        f"<resource>{resource}</resource></bind></iq>".encode()
    )
    bound = await _read_until(session, b"</iq>", timeout, failure=b"type='error'")
    match = re.search(rb"<jid>(.*?)</jid>", bound)
    if not match:
        raise LoadError(f"no JID in the bind result: {bound!r}")
    session.jid = match.group(1).decode()
    return session


async def close_session(session: Session) -> None:
    try:
        session.writer.write(b"</stream:stream>")
        await session.writer.drain()
        session.writer.close()
        await asyncio.wait_for(session.writer.wait_closed(), 2)
    except (TimeoutError, OSError):
        pass


SLOT_PUT = re.compile(r"<put url=(['\"])(.*?)\1")
SLOT_GET = re.compile(r"<get url=(['\"])(.*?)\1")
SLOT_HEADER = re.compile(r"<header name=(['\"])(.*?)\1>(.*?)</header>")


async def request_slot(
    host: str, port: int, domain: str, account: Account, to: str, filename: str, size: int, content_type: str
) -> tuple[str, str, list[tuple[str, str]]]:
    """One XEP-0363 slot from ``to`` on a fresh session: PUT URL, GET URL and the PUT headers."""
    session = await open_session(host, port, domain, account, "slot")
    try:
        session.writer.write(
            f"<iq type='get' id='slot' to='{xml_escape(to)}'><request xmlns='urn:xmpp:http:upload:0' "
            f"filename='{xml_escape(filename)}' size='{size}' content-type='{xml_escape(content_type)}'/></iq>".encode()
        )
        reply = (await _read_until(session, b"</iq>", 10.0, failure=b"type='error'")).decode()
    finally:
        await close_session(session)
    put, get = SLOT_PUT.search(reply), SLOT_GET.search(reply)
    if not put or not get:
        raise LoadError(f"no slot in {reply!r}")
    headers = [(unescape(m.group(2)), unescape(m.group(3))) for m in SLOT_HEADER.finditer(reply)]
    return unescape(put.group(2)), unescape(get.group(2)), headers


# --------------------------------------------------------------------------
# load


class Budget:
    """The requests still to send, shared by every connection of one loop."""

    def __init__(self, total: int) -> None:
        self.left = total

    def take(self, wanted: int) -> int:
        granted = min(wanted, self.left)
        self.left -= granted
        return granted


@dataclass
class Tally:
    latencies_ns: list[int] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)


def _requests(session: Session, to: str, count: int) -> bytes:
    """``count`` new slot requests as one write; remembers when each id left."""
    now = time.perf_counter_ns()
    parts = []
    for _ in range(count):
        session.next_id += 1
        ident = str(session.next_id)
        session.sent_at[ident.encode()] = now
        parts.append(REQUEST_TEMPLATE.format(id=ident, to=to))
    return "".join(parts).encode()


def _take_replies(session: Session, tally: Tally) -> int:
    """Consume every complete ``<iq>`` in the buffer; return how many were answers to us."""
    now = time.perf_counter_ns()
    answered = 0
    end = 0
    for match in IQ_STANZA.finditer(session.buffer):
        end = match.end()
        attrs = match.group(1)
        ident = ATTR_ID.search(attrs)
        sent = session.sent_at.pop(ident.group(2), None) if ident else None
        if sent is None:
            continue  # not one of ours
        answered += 1
        tally.latencies_ns.append(now - sent)
        kind = ATTR_TYPE.search(attrs)
        if not kind or kind.group(2) != b"result":
            tally.errors += 1
            if len(tally.error_samples) < 5:
                tally.error_samples.append(match.group(0)[:600].decode(errors="replace"))
    if end:
        session.buffer = session.buffer[end:]
    if STREAM_ERROR.search(session.buffer):
        raise LoadError(f"stream closed by the server: {session.buffer[:600].decode(errors='replace')}")
    return answered


async def _drive(session: Session, to: str, budget: Budget, inflight: int, tally: Tally) -> None:
    """Keep ``inflight`` requests outstanding on one connection until the budget is spent."""
    first = budget.take(inflight)
    if first:
        session.writer.write(_requests(session, to, first))
    while session.sent_at:
        chunk = await session.reader.read(READ_SIZE)
        if not chunk:
            raise LoadError(f"connection of {session.jid} closed with {len(session.sent_at)} requests unanswered")
        session.buffer += chunk
        answered = _take_replies(session, tally)
        more = budget.take(answered)
        if more:
            session.writer.write(_requests(session, to, more))


def _percentile(ordered: list[int], fraction: float) -> float:
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index] / 1000


async def run_load(sessions: list[Session], to: str, total: int, inflight: int, timeout: float) -> RunStats:
    """Send ``total`` slot requests to ``to`` over ``sessions``, ``inflight`` outstanding on each."""
    budget, tally = Budget(total), Tally()
    for session in sessions:
        session.sent_at.clear()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    try:
        await asyncio.wait_for(
            asyncio.gather(*(_drive(session, to, budget, inflight, tally) for session in sessions)), timeout
        )
    except TimeoutError:
        missing = sum(len(s.sent_at) for s in sessions)
        raise LoadError(
            f"run against {to} timed out after {timeout:g} s: {len(tally.latencies_ns)} answered, "
            f"{budget.left} never sent, {missing} unanswered"
        ) from None
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    ordered = sorted(tally.latencies_ns)
    return RunStats(
        requests=total,
        results=len(ordered) - tally.errors,
        errors=tally.errors,
        error_samples=tally.error_samples,
        wall_s=wall,
        client_cpu_s=cpu,
        rate=len(ordered) / wall if wall else float("nan"),
        p50_us=_percentile(ordered, 0.50),
        p90_us=_percentile(ordered, 0.90),
        p99_us=_percentile(ordered, 0.99),
        max_us=ordered[-1] / 1000 if ordered else float("nan"),
        mean_us=statistics.fmean(ordered) / 1000 if ordered else float("nan"),
    )


async def wait_until_serving(session: Session, to: str, timeout: float) -> None:
    """Send one slot request every 0.2 s until one gets a result (a component just started)."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        tally = Tally()
        try:
            await asyncio.wait_for(_drive(session, to, Budget(1), 1, tally), 5)
        except TimeoutError:
            session.sent_at.clear()
            last = "no answer within 5 s"
            continue
        if not tally.errors:
            return
        last = tally.error_samples[0]
        await asyncio.sleep(0.2)
    raise LoadError(f"{to} did not answer a slot request within {timeout:g} s; last answer: {last}")


# --------------------------------------------------------------------------
# child process


async def _child_main(conn: Connection, host: str, port: int, domain: str, accounts: list[Account]) -> None:
    sessions = await asyncio.gather(
        *(open_session(host, port, domain, account, f"bench{i}") for i, account in enumerate(accounts))
    )
    conn.send(("ready", None))
    loop = asyncio.get_running_loop()
    try:
        while True:
            command, *args = await loop.run_in_executor(None, conn.recv)
            try:
                if command == "run":
                    to, total, inflight, timeout = args
                    stats = await run_load(list(sessions), to, total, inflight, timeout)
                    conn.send(("ok", asdict(stats)))
                elif command == "wait":
                    to, timeout = args
                    await wait_until_serving(sessions[0], to, timeout)
                    conn.send(("ok", None))
                elif command == "close":
                    conn.send(("ok", None))
                    return
                else:
                    conn.send(("error", f"unknown command {command!r}"))
            except LoadError as error:
                conn.send(("error", str(error)))
                return
    finally:
        await asyncio.gather(*(close_session(s) for s in sessions))


def _child(conn: Connection, host: str, port: int, domain: str, accounts: list[Account]) -> None:
    try:
        asyncio.run(_child_main(conn, host, port, domain, accounts))
    except Exception as error:  # noqa: BLE001 - reported to the parent, which raises
        try:
            conn.send(("error", f"{type(error).__name__}: {error}"))
        except OSError:
            pass


class LoadClientProcess:
    """The load client in a child process: ``start()`` logs every account in, ``run()`` drives
    one bounded run and returns its :class:`RunStats` as a dict, ``stop()`` ends the child."""

    def __init__(self, host: str, port: int, domain: str, accounts: list[Account]) -> None:
        self.args = (host, port, domain, accounts)
        self.process: multiprocessing.process.BaseProcess | None = None
        self.conn: Connection | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self, timeout: float = 30.0) -> None:
        context = multiprocessing.get_context("spawn")
        parent, child = context.Pipe()
        self.conn = parent
        self.process = context.Process(target=_child, args=(child, *self.args), daemon=True)
        self.process.start()
        child.close()
        self._answer(timeout, expect="ready")

    def _answer(self, timeout: float, expect: str = "ok") -> Any:
        assert self.conn is not None
        try:
            if not self.conn.poll(timeout):
                raise LoadError(f"load client gave no answer within {timeout:g} s")
            status, value = self.conn.recv()
        except (EOFError, OSError) as error:
            raise LoadError(f"load client process is gone ({type(error).__name__})") from None
        if status != expect:
            raise LoadError(f"load client: {value}")
        return value

    def wait_until_serving(self, to: str, timeout: float = 30.0) -> None:
        assert self.conn is not None
        self.conn.send(("wait", to, timeout))
        self._answer(timeout + 10)

    def run(self, to: str, total: int, inflight: int, timeout: float = 120.0) -> dict[str, Any]:
        assert self.conn is not None
        self.conn.send(("run", to, total, inflight, timeout))
        return self._answer(timeout + 10)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.pid is None:  # never started
            self.process = None
            return
        try:
            if self.conn is not None and self.process.is_alive():
                self.conn.send(("close",))
                self.conn.poll(5)
        except OSError:
            pass
        self.process.join(5)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(5)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(5)
        if self.conn is not None:
            self.conn.close()
        self.process, self.conn = None, None
