"""Microseconds of CPU per slot request spent on the limits and the ledger, with and without limits.

What it measures: the work the plugin adds to every slot once the limits and the ledger are in
— ``Accounting.admit(request)`` (the limit checks and counts, in memory) and
``Accounting.record(usage, request, slot)`` (the in-memory record and the queued write) — for
``--requests`` requests from ``--users`` users, one ledger file on disk. The CPU is the whole
process's (``time.process_time()``), so the ledger's writer thread, which turns the queued
records into SQLite rows, is counted too; the run ends with ``flush()`` (every row written).

* ``off``        — no limit (the ledger alone: what every ``serve`` now does);
* ``daily+rate`` — ``daily_quota`` and ``rate_limit`` set high enough never to refuse (the
                   acceptance case of ``bench/throughput.py``);
* ``all``        — those, plus ``total_quota`` and ``global_quota`` with ``expire_after``.

Compare with the component's CPU per slot from ``bench/throughput.py`` (about 100 µs in the
README's figures): the difference to ``off`` is what the limits cost per slot.

Run (from the repository root, a few seconds)::

    .venv/bin/python bench/accounting.py [--requests 50000] [--users 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from slixmpp import JID

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slixmpp_http_upload.accounting import Accounting  # noqa: E402
from slixmpp_http_upload.config import parse_upload_settings  # noqa: E402
from slixmpp_http_upload.ledger import Ledger  # noqa: E402
from slixmpp_http_upload.limits import OverLimit  # noqa: E402
from slixmpp_http_upload.slot import Slot, SlotRequest  # noqa: E402

CASES: dict[str, dict[str, Any]] = {
    "off": {},
    "daily+rate": {"daily_quota": 1 << 50, "rate_limit": {"slots": 1_000_000, "seconds": 300}},
    "all": {
        "daily_quota": 1 << 50,
        "rate_limit": {"slots": 1_000_000, "seconds": 300},
        "total_quota": 1 << 50,
        "global_quota": 1 << 55,
        "expire_after": 3600,
    },
}


def run(options: dict[str, Any], requests: int, users: int, folder: Path) -> float:
    """CPU microseconds per request, writer thread included."""
    settings = parse_upload_settings({**options, "ledger": str(folder / f"ledger-{time.monotonic_ns()}.sqlite")})
    ledger = Ledger(settings.ledger)
    accounting = Accounting(settings, ledger)
    asks = [SlotRequest(f"file-{n}.jpg", 123456, "image/jpeg", "localhost", JID(f"user{n % users}@localhost/r"))
            for n in range(requests)]
    slots = [Slot(f"https://s3.example/b/{n:064x}/file-{n}.jpg?q", f"https://s3.example/b/{n:064x}/file-{n}.jpg")
             for n in range(requests)]
    started = time.process_time()
    for request, slot in zip(asks, slots):
        usage = accounting.admit(request)
        assert not isinstance(usage, OverLimit), usage
        accounting.record(usage, request, slot)
    ledger.flush()
    seconds = time.process_time() - started
    ledger.close()
    return seconds / requests * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=50_000)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results: dict[str, list[float]] = {name: [] for name in CASES}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            shift = round_ % len(CASES)
            names = list(CASES)[shift:] + list(CASES)[:shift]  # rotate the order
            for name in names:
                results[name].append(run(CASES[name], args.requests, args.users, Path(folder)))
    print(f"{args.requests} requests from {args.users} users, {args.rounds} rounds; CPU µs per request (median, min–max)")
    for name, values in results.items():
        print(f"  {name:<10} {statistics.median(values):6.1f}  ({min(values):.1f}–{max(values):.1f})")
    for name in list(CASES)[1:]:
        extra = statistics.median(results[name]) - statistics.median(results["off"])
        print(f"  {name} costs {extra:+.1f} µs per request over the ledger alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
