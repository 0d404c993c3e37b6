"""Microseconds of CPU per slot that the ledger's writes cost: per new row by table size, and
inside a process whose event loop is busy.

1. By table size: transactions of ``--batch`` new rows (the writer's 50 ms batch at several
   thousand slots/s) into a ledger file already holding 0, 100 000 and 1 000 000 rows, WAL
   journal with ``synchronous = NORMAL`` as :mod:`slixmpp_http_upload.ledger` opens it; CPU of
   the process (``time.process_time()``: SQLite's work and the kernel's file writes). Side by
   side:

   * ``ledger``    — the ledger as it writes: its table (rows in the order written, an index on
                     ``issued``), a batch's rows by INSERT statements of up to 256 rows;
   * ``per row``   — the same table, one INSERT statement per row (``executemany``: the writer
                     before);
   * ``key-keyed`` — the table before that, keyed by the object key (``WITHOUT ROWID``), one
                     statement per row: each row lands on a random page of a growing B-tree.

2. With a busy event loop: a real :class:`~slixmpp_http_upload.ledger.Ledger` (its writer
   thread, a fresh file, records that never expire) while the main thread does ``--work`` µs of
   Python per slot (about what ``bench/request_path.py`` measures for a whole slot request),
   then ``Ledger.add``, and after every 16 slots a ``select`` (the event loop between two
   reads: the GIL let go), for ``--slots`` slots; then ``flush()``. Per slot: the main thread's CPU beyond the same loop
   without a ledger (``add`` and the GIL's hand-offs), the writer thread's CPU (the process's
   minus the main thread's, until flushed), their sum; and how long ``flush()`` took once the
   loop stopped (what the writer had fallen behind: a hard crash loses that much). ``ledger``
   against ``per row`` (the writer's inserts one statement per row), rounds interleaved,
   medians.

Run (from the repository root, about a minute)::

    .venv/bin/python bench/ledger_insert.py [--batch 400] [--batches 20] [--slots 30000] [--work 80] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import select
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slixmpp_http_upload import ledger as ledger_module  # noqa: E402
from slixmpp_http_upload.ledger import (  # noqa: E402
    _COLUMNS,
    Ledger,
    SlotRecord,
    _apply,
    _connect,
    _insert_rows,
    _inserts,
    _Statement,
)

KEY_KEYED = """
CREATE TABLE slots (key TEXT PRIMARY KEY, owner TEXT NOT NULL, domain TEXT NOT NULL,
    size INTEGER NOT NULL, content_type TEXT, purpose TEXT NOT NULL, issued REAL NOT NULL,
    expires REAL, gone INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
"""
SIZES = (0, 100_000, 1_000_000)
PER_READ = 16
"""Slots per pass of the busy loop (``bench/request_path.py``'s stanzas per read)."""
ONE_ROW = f"INSERT INTO slots ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"

Inserts = Callable[[list[SlotRecord], int], list[_Statement]]


def per_row(records: list[SlotRecord], most: int) -> list[_Statement]:
    """The writer's inserts before: one statement per row."""
    return [(ONE_ROW, records, True)] if records else []


def records(start: int, count: int, expire: bool = True) -> list[SlotRecord]:
    """Records like ``serve``'s: an S3 key under a 32-byte token, 16 users, one per millisecond,
    expiring a day later (``expire``) or never."""
    return [
        SlotRecord(f"/bucket/{secrets.token_urlsafe(32)}/photo-{n}.jpg", f"user{n % 16}@example.org",
                   "upload.example.org", 1000, "image/jpeg", "message", 1.7e9 + n / 1000,
                   1.7e9 + n / 1000 + 86400 if expire else None)
        for n in range(start, start + count)
    ]


def key_keyed(records: list[SlotRecord], most: int) -> list[_Statement]:
    """The inserts into the key-keyed table: one statement per row."""
    return [(ONE_ROW.replace("INSERT", "INSERT OR REPLACE"), records, True)]


def by_size(path: str, inserts: Inserts, size: int, batch: int, batches: int) -> float:
    """CPU µs per row of ``batches`` transactions of ``batch`` rows after ``size`` rows."""
    if inserts is key_keyed:
        connection = sqlite3.connect(path, isolation_level=None)
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(KEY_KEYED)
    else:
        connection = _connect(path)
    most = _insert_rows(connection)
    _apply(connection, inserts(records(0, size), most))
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    new = [inserts(records(size + n * batch, batch), most) for n in range(batches)]
    start = time.process_time()
    for statements in new:
        assert _apply(connection, statements) is None
    spent = time.process_time() - start
    connection.close()
    return spent / (batch * batches) * 1e6


def busy(microseconds: float) -> None:
    """Python work of ``microseconds`` of this thread's CPU (the GIL held throughout)."""
    end = time.thread_time() + microseconds / 1e6
    while time.thread_time() < end:
        pass


def busy_loop(folder: str, inserts: Inserts | None, slots: int, work: float) -> tuple[float, float, float]:
    """Per slot: (main thread's CPU µs minus ``work``, writer thread's CPU µs), and the ms
    ``flush()`` took after the loop; ``inserts`` None: no ledger (the main thread's control)."""
    ledger = Ledger(os.path.join(folder, f"{time.monotonic_ns()}.sqlite"))
    new = records(0, slots + 1, expire=False)  # as ``serve`` without ``expire_after``
    add = ledger.add if inserts is not None else lambda record: None
    if inserts is not None:
        ledger_module._inserts = inserts  # type: ignore[attr-defined]
        ledger.add(new.pop())
        ledger.flush()  # the writer thread runs
    main, process = time.thread_time(), time.process_time()
    for n, record in enumerate(new):
        busy(work)
        add(record)
        if n % PER_READ == 0:
            select.select([], [], [], 0)  # what the event loop does between reads: the GIL let go
    main = time.thread_time() - main
    flushing = time.monotonic()
    ledger.flush()
    flushing = time.monotonic() - flushing
    process = time.process_time() - process
    ledger.close()
    ledger_module._inserts = _inserts  # type: ignore[attr-defined]
    return main / slots * 1e6 - work, (process - main) / slots * 1e6, flushing * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=400)
    parser.add_argument("--batches", type=int, default=20)
    parser.add_argument("--slots", type=int, default=30_000)
    parser.add_argument("--work", type=float, default=80.0, help="µs of the main thread's own work per slot")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    writers: dict[str, Inserts] = {"ledger": _inserts, "per row": per_row}
    with tempfile.TemporaryDirectory() as folder:
        print(f"CPU µs per new row, transactions of {args.batch} rows")
        print(f"{'rows before':>12} {'ledger':>8} {'per row':>8} {'key-keyed':>10}")
        for size in SIZES:
            figures = []
            for n, inserts in enumerate((_inserts, per_row, key_keyed)):
                path = os.path.join(folder, f"{size}-{n}.sqlite")
                figures.append(by_size(path, inserts, size, args.batch, args.batches))
                for suffix in ("", "-wal", "-shm"):
                    Path(path + suffix).unlink(missing_ok=True)
            print(f"{size:>12,} {figures[0]:>8.1f} {figures[1]:>8.1f} {figures[2]:>10.1f}", flush=True)

        print(f"\nBusy event loop: {args.slots} slots, {args.work:g} µs of work each, {args.rounds} rounds (median)")
        control: list[float] = []
        results: dict[str, list[tuple[float, float, float]]] = {name: [] for name in writers}
        for _ in range(args.rounds):
            control.append(busy_loop(folder, None, args.slots, args.work)[0])
            for name, inserts in writers.items():
                results[name].append(busy_loop(folder, inserts, args.slots, args.work))
        print(f"{'writes':>8} {'loop µs':>8} {'writer µs':>10} {'total µs':>9} {'flush after ms':>15}")
        for name, runs in results.items():
            loop = statistics.median(run[0] for run in runs) - statistics.median(control)
            writer = statistics.median(run[1] for run in runs)
            flushing = statistics.median(run[2] for run in runs)
            print(f"{name:>8} {loop:>8.2f} {writer:>10.2f} {loop + writer:>9.2f} {flushing:>15.0f}", flush=True)


if __name__ == "__main__":
    main()
