"""Microseconds of CPU per row that the ledger's writer spends on new slots, by table size.

What it measures: transactions of ``--batch`` new rows (the writer's 50 ms batch at a few
thousand slots/s) into a ledger file already holding 0, 100 000 and 1 000 000 rows, WAL journal
with ``synchronous = NORMAL`` as :mod:`slixmpp_http_upload.ledger` opens it; CPU of the process
(``time.process_time()``: the writer thread's SQLite work and the kernel's file writes). Side by
side:

* ``ledger``       — the ledger's table (rows in the order written, an index on ``issued``);
* ``key-keyed``    — the table it replaced, keyed by the object key (``WITHOUT ROWID``): each row
                     lands on a random page of a B-tree that grows with the table.

Run (from the repository root, about a minute)::

    .venv/bin/python bench/ledger_insert.py [--batch 400] [--batches 20]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from slixmpp_http_upload.ledger import _COLUMNS, _INSERT, _connect  # noqa: E402

KEY_KEYED = """
CREATE TABLE slots (key TEXT PRIMARY KEY, owner TEXT NOT NULL, domain TEXT NOT NULL,
    size INTEGER NOT NULL, content_type TEXT, purpose TEXT NOT NULL, issued REAL NOT NULL,
    expires REAL, gone INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID;
"""
SIZES = (0, 100_000, 1_000_000)


def rows(start: int, count: int) -> list[tuple[object, ...]]:
    """Rows like ``serve``'s: an S3 key under a 32-byte token, 16 users, one per millisecond."""
    return [
        (f"/bucket/{secrets.token_urlsafe(32)}/photo-{n}.jpg", f"user{n % 16}@example.org", "upload.example.org",
         1000, "image/jpeg", "message", 1.7e9 + n / 1000, 1.7e9 + 86400)
        for n in range(start, start + count)
    ]


def per_row(path: str, schema: str | None, size: int, batch: int, batches: int) -> float:
    """CPU µs per row of ``batches`` transactions of ``batch`` rows after ``size`` rows."""
    connection = _connect(path) if schema is None else sqlite3.connect(path, isolation_level=None)
    insert = _INSERT if schema is None else f"INSERT OR REPLACE INTO slots ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
    if schema is not None:
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(schema)
        connection.isolation_level = "DEFERRED"  # as the ledger: ``with connection`` is one transaction
    with connection:
        connection.executemany(insert, rows(0, size))
    connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    new = [rows(size + n * batch, batch) for n in range(batches)]
    start = time.process_time()
    for chunk in new:
        with connection:
            connection.executemany(insert, chunk)
    spent = time.process_time() - start
    connection.close()
    return spent / (batch * batches) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=400)
    parser.add_argument("--batches", type=int, default=20)
    args = parser.parse_args()
    print(f"CPU µs per new row, transactions of {args.batch} rows")
    print(f"{'rows before':>12} {'ledger':>8} {'key-keyed':>10}")
    with tempfile.TemporaryDirectory() as folder:
        for size in SIZES:
            figures = []
            for n, schema in enumerate((None, KEY_KEYED)):
                path = os.path.join(folder, f"{size}-{n}.sqlite")
                figures.append(per_row(path, schema, size, args.batch, args.batches))
                for suffix in ("", "-wal", "-shm"):
                    Path(path + suffix).unlink(missing_ok=True)
            print(f"{size:>12,} {figures[0]:>8.1f} {figures[1]:>10.1f}", flush=True)


if __name__ == "__main__":
    main()
