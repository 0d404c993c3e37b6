"""CPU per slot request inside one process: the component's own path without any server.

What it measures: a ``serve`` component (``serve.make_component``: the plugin, S3 backend on a
dummy bucket URL or the ``local`` backend) is handed the bytes a server would send — stream
header, handshake, then slot requests in batches of ``--batch`` stanzas per read, as Prosody or
ejabberd write them — through ``data_received``, and answers into a transport that only counts
bytes. Each batch is fed, then the loop runs until every reply of it is written. It reports
process CPU (``time.process_time()``) per request over ``--requests`` requests after a warm-up,
the median of ``--rounds`` rounds; ``--profile`` runs cProfile over one more round instead and
prints the top functions.

No socket, no XMPP server, no load client: only the parser, slixmpp's dispatch, the plugin,
the backend and the reply's serialisation, i.e. the part of ``throughput.py``'s "component
CPU/slot" that is ours to change (the rest is the kernel and asyncio's socket writes).

Run (from the repository root; ~10 s)::

    .venv/bin/python bench/request_path.py                  # S3 backend
    .venv/bin/python bench/request_path.py --backend local
    .venv/bin/python bench/request_path.py --profile
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from slixmpp_http_upload.accounting import Accounting, open_ledger
from slixmpp_http_upload.backends import create_backend
from slixmpp_http_upload.config import load_config
from slixmpp_http_upload.serve import keeps_every_record, make_component

JID = "upload.localhost"
STREAM_HEADER = (
    b"<stream:stream xmlns='jabber:component:accept' xmlns:stream='http://etherx.jabber.org/streams'"
    b" from='upload.localhost' id='bench-stream'>"
)
REQUEST = (
    "<iq type='get' id='r{n}' to='upload.localhost' from='bench{u}@localhost/load' xml:lang='en'>"
    "<request xmlns='urn:xmpp:http:upload:0' filename='f.jpg' size='1000' content-type='image/jpeg'/></iq>"
)


class CountingTransport:
    """An asyncio transport stand-in: counts what is written, and replies (``</iq>``/``/>`` ends)."""

    def __init__(self) -> None:
        self.written = 0
        self.replies = 0
        self.last = b""

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self.replies += data.count(b"<iq ")
        self.last = data

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def is_closing(self) -> bool:
        return False

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass


def write_config(directory: Path, backend: str, extra: list[str]) -> Path:
    lines = [
        "[component]",
        'server = "127.0.0.1"',
        "port = 9",
        'secret = "bench"',
        'domains = ["localhost"]',
        "",
        "[http_upload]",
        'host = "upload.@HOST@"',
        *extra,
    ]
    if backend == "s3":
        lines += [
            "",
            "[http_upload.s3]",
            'bucket_url = "http://127.0.0.1:9/bucket"',
            'region = "us-east-1"',
            'access_key_id = "AKIDBENCHMARK0000000"',
            'secret_access_key = "bench-secret-not-a-real-key"',
        ]
    else:
        lines += ["", "[http_upload.local]", f'root = "{directory / "files"}"']
        lines += ["", "[http]", 'public_url = "http://127.0.0.1:9/files"']
    path = directory / "bench.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def run(args: argparse.Namespace) -> list[float]:
    with tempfile.TemporaryDirectory(prefix="bench-path-") as tmp:
        config = load_config(write_config(Path(tmp), args.backend, args.http_upload))
        backend = create_backend(config.http_upload)
        ledger = open_ledger(config.http_upload, lasting=keeps_every_record(backend))  # as serve does
        accounting = Accounting(config.http_upload, ledger)
        xmpp = make_component(config, "localhost", backend, accounting)
        transport = CountingTransport()
        xmpp.connection_made(transport)  # type: ignore[arg-type]
        sender = asyncio.ensure_future(xmpp.run_filters())  # what connect() starts: the send queue
        xmpp.data_received(STREAM_HEADER)
        xmpp.data_received(b"<handshake/>")
        await asyncio.sleep(0.05)
        counter = 0

        async def batches(count: int) -> None:
            nonlocal counter
            for _ in range(count // args.batch):
                data = "".join(REQUEST.format(n=counter + i, u=(counter + i) % 4) for i in range(args.batch)).encode()
                counter += args.batch
                wanted = transport.replies + args.batch
                xmpp.data_received(data)
                while transport.replies < wanted:
                    await asyncio.sleep(0)

        await batches(args.warmup)
        if b"<slot" not in transport.last:
            raise SystemExit(f"no slot in the last reply: {transport.last[:300]!r}")
        per_slot = []
        for _ in range(args.rounds):
            started = time.process_time()
            await batches(args.requests)
            per_slot.append((time.process_time() - started) * 1e6 / args.requests)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            await batches(args.requests)
            profiler.disable()
            stats = pstats.Stats(profiler)
            stats.sort_stats(args.sort).print_stats(args.top)
        sender.cancel()
        ledger.close()
        print(f"last reply ({len(transport.last)} bytes): {transport.last[:160].decode()}…")
        return per_slot


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("s3", "local"), default="s3")
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--warmup", type=int, default=2000)
    parser.add_argument("--batch", type=int, default=16, help="stanzas per read (default 16)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--http-upload", action="append", default=[], metavar="TOML", help="a further [http_upload] line (limits…)"
    )
    parser.add_argument("--profile", action="store_true", help="cProfile one more round")
    parser.add_argument("--sort", default="tottime")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    per_slot = asyncio.run(run(args))
    print(
        f"{args.backend}: {statistics.median(per_slot):.1f} µs CPU per slot request (median of {args.rounds} rounds: "
        + ", ".join(f"{value:.1f}" for value in per_slot)
        + ")"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
