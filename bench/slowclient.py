"""Many slow HTTP downloads at once, for ``http_storage.py`` (it measures nothing by itself).

Opens ``count`` connections to one GET URL, each with a small receive buffer, and reads every
body ``chunk`` bytes at a time with a pause of ``interval`` seconds between reads (a phone on a
poor link), so that the server must hold all the downloads open at the same time. Connections
are opened in batches (the servers' listen backlogs are ~128). Every download must end with
status 200 and exactly the announced ``Content-Length`` bytes. Bounded by ``timeout``.

Run as a child process (its CPU is then apart from the measuring script's)::

    python bench/slowclient.py URL --count 1000 --size BYTES [--chunk 16384 --interval 0.25]

It prints one JSON object: completed/failed counts, the peak number of downloads in progress,
the first failures and the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from urllib.parse import urlsplit


@dataclass
class Tally:
    completed: int = 0
    failed: int = 0
    active: int = 0
    peak_active: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, message: str) -> None:
        self.failed += 1
        if len(self.failures) < 5:
            self.failures.append(message)


def _status_and_length(head: bytes) -> tuple[int, int | None]:
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            return status, int(value)
    return status, None


async def download(address: tuple[str, int], request: bytes, size: int, args: argparse.Namespace, tally: Tally) -> None:
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.rcvbuf)  # before connect: sets the window
    sock.setblocking(False)
    tally.active += 1
    tally.peak_active = max(tally.peak_active, tally.active)
    try:
        await loop.sock_connect(sock, address)
        await loop.sock_sendall(sock, request)
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            data = await loop.sock_recv(sock, args.chunk)
            if not data:
                raise ConnectionError(f"closed before the headers ({len(buffer)} bytes)")
            buffer += data
        head, _, body = buffer.partition(b"\r\n\r\n")
        status, length = _status_and_length(head)
        if status != 200 or length != size:
            raise ConnectionError(f"status {status}, Content-Length {length} (expected 200, {size})")
        received = len(body)
        while received < size:
            await asyncio.sleep(args.interval)
            data = await loop.sock_recv(sock, args.chunk)
            if not data:
                raise ConnectionError(f"closed after {received} of {size} body bytes")
            received += len(data)
        if received != size:
            raise ConnectionError(f"{received} body bytes, expected {size}")
        tally.completed += 1
    except (OSError, ValueError, IndexError) as error:
        tally.fail(f"{type(error).__name__}: {error}")
    finally:
        tally.active -= 1
        sock.close()


async def run(args: argparse.Namespace) -> dict[str, object]:
    url = urlsplit(args.url)
    assert url.hostname and url.port, "URL needs a host and a port"
    target = url.path + (f"?{url.query}" if url.query else "")
    request = f"GET {target} HTTP/1.1\r\nHost: {url.netloc}\r\nConnection: close\r\n\r\n".encode()
    tally = Tally()
    started = time.monotonic()
    tasks = []
    for index in range(args.count):
        tasks.append(asyncio.create_task(download((url.hostname, url.port), request, args.size, args, tally)))
        if (index + 1) % args.batch == 0:
            await asyncio.sleep(args.batch_pause)
    done, pending = await asyncio.wait(tasks, timeout=args.timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)
        tally.fail(f"{len(pending)} downloads still running after {args.timeout} s")
        tally.failed += len(pending) - 1
    return {**asdict(tally), "count": args.count, "wall_s": time.monotonic() - started}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--size", type=int, required=True, help="expected body size in bytes")
    parser.add_argument("--chunk", type=int, default=16384, help="bytes per read (default 16384)")
    parser.add_argument("--interval", type=float, default=0.25, help="seconds between reads (default 0.25)")
    parser.add_argument("--rcvbuf", type=int, default=16384, help="SO_RCVBUF of each socket (default 16384)")
    parser.add_argument("--batch", type=int, default=50, help="connections opened per batch (default 50)")
    parser.add_argument("--batch-pause", type=float, default=0.02, help="seconds between batches (default 0.02)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds for the whole run (default 120)")
    args = parser.parse_args(argv)
    print(json.dumps(asyncio.run(run(args))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
