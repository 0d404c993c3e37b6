"""The slot ledger: every slot handed out, kept in SQLite so that quotas, expiry and deletion
survive restarts. A record whose file was deleted on expiry stays in the file, marked gone, for
a day (the longest window of a limit); ``purge`` forgets at once.

The records live in memory (what the stanza path reads, and all that the commands read) — in
``serve``, unless S3 downloads are redirected, only those of files that expire (``lasting =
False``: a service whose files never expire needs no memory per file, on start either, as the
limits count the file's rows as they are read: :meth:`Ledger.counted`); in the file they are
rows in the order written (``id``, never reused) with one index, on ``issued``, so that each new
row lands at the end of both B-trees (a few µs, however long the table) and a record is found by
``(issued, key)``. Keys are unique (each holds a fresh random token): nothing in the file
enforces it, as an index on the random key would cost a random B-tree write per slot. A writer
thread mirrors each change to the database (WAL journal) in batches of :data:`BATCH_SECONDS`, so
no request waits for the disk; a batch that could not be written is tried again
(:data:`RETRY_SECONDS`). A batch is one transaction, its new rows INSERT statements of up to
:data:`INSERT_ROWS` rows each (~2 µs of CPU a row, against ~6 µs for a statement per row:
``bench/ledger_insert.py``). Few statements matter twice: SQLite works per statement (opening
the table and its index, ``AUTOINCREMENT``'s ``sqlite_sequence``), and each statement lets go of
the GIL, which the writer must then win back from the event loop's thread — a busy loop lets go
of it and takes it back between any two reads, waking the writer each time, so every hand-off
costs both threads CPU and can keep the writer waiting, behind the slots handed out, for seconds
under full load. :meth:`Ledger.flush` waits until everything asked so far is written. Other
processes (``sweep``, ``purge``) may open the same file at the same time; what one removes,
another's memory still holds until it starts again.
"""

from __future__ import annotations

import contextlib
import functools
import heapq
import logging
import os
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple, cast

from .domains import normalise_bare, normalise_domain
from .limits import DAY

log = logging.getLogger(__name__)

DEFAULT_LEDGER = "slixmpp-http-upload-ledger.sqlite"
"""The ledger's file name beside the configuration file, when ``ledger`` is not set."""
IN_MEMORY = ":memory:"
BATCH_SECONDS = 0.05
"""The writer gathers the changes of this long into one transaction."""
PRUNE_SECONDS = 3600
"""How often the writer drops the records gone for more than a day."""
LOCK_SECONDS = 30.0
"""How long a statement waits for a lock that another process holds; opening the file tries
again until this long has passed (so it may wait up to about twice this)."""
FLUSH_CHECK_SECONDS = 0.5
""":meth:`Ledger.flush` checks this often that the writer is still there to answer it."""
RETRY_SECONDS = 1.0
"""A write that failed (disk full, the file locked too long) is tried again this often, with
the changes that came meanwhile; they stay in memory until then."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS slots (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    owner TEXT NOT NULL,
    domain TEXT NOT NULL,
    size INTEGER NOT NULL,
    content_type TEXT,
    purpose TEXT NOT NULL,
    issued REAL NOT NULL,
    expires REAL,
    gone INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS slots_issued ON slots (issued);
"""
_COLUMNS = "key, owner, domain, size, content_type, purpose, issued, expires"
INSERT_ROWS = 256
"""The most new rows one INSERT statement writes (fewer when SQLite allows fewer parameters)."""
_DELETE = "DELETE FROM slots WHERE issued = ? AND key = ?"
_GONE = "UPDATE slots SET gone = 1 WHERE issued = ? AND key = ?"
_PRUNE = "DELETE FROM slots WHERE gone = 1 AND issued <= ?"


class SlotRecord(NamedTuple):
    """One slot handed out. ``key`` is the backend's name of the object (what its ``delete``
    takes); ``owner`` the requester's bare JID (its domain as the requester's server sent it);
    ``domain`` the served domain that made the slot; ``expires`` (epoch seconds) when the file stops
    being served, None for never. A tuple: it is the row written to the file."""

    key: str
    owner: str
    domain: str
    size: int
    content_type: str | None
    purpose: str
    issued: float
    expires: float | None


_Change = SlotRecord | tuple[str, object]
"""What the writer is sent: a new record, or ``(kind, value)`` (``gone``, ``forget``, ``flush``)."""


class Ledger:
    """The records of one ledger file (``:memory:`` for none), loaded on open: those of files not
    gone, or with ``lasting`` False only those of files that expire (:attr:`records`, :meth:`of`
    and :meth:`remove` then know nothing of the others, which the file keeps all the same)."""

    def __init__(self, path: Path | str, *, lasting: bool = True) -> None:
        self.path = str(path)
        self._lasting = lasting
        self._connection = _connect(self.path)
        self._connection.execute(_PRUNE, (time.time() - DAY,))
        self.last_row: int = self._connection.execute("SELECT max(id) FROM slots").fetchone()[0] or 0
        """The ``id`` of the newest row when the file was read: rows after it are not in memory
        unless this process wrote them."""
        kept = "gone = 0" if lasting else "gone = 0 AND expires IS NOT NULL"
        rows = self._connection.execute(f"SELECT {_COLUMNS} FROM slots WHERE {kept} ORDER BY issued")
        self.records: dict[str, SlotRecord] = {record.key: record for record in map(SlotRecord._make, rows)}
        self._due = [(record.expires, key) for key, record in self.records.items() if record.expires is not None]
        heapq.heapify(self._due)
        self._watcher: Callable[[float], None] | None = None
        self._insert_rows = _insert_rows(self._connection)
        self._next_prune = time.monotonic() + PRUNE_SECONDS
        self._writes: queue.SimpleQueue[_Change | None] = queue.SimpleQueue()
        self._writer: threading.Thread | None = None  # started by the first change
        self._closed = False

    def counted(self) -> Iterator[SlotRecord]:
        """What the limits count, oldest first, as the file holds it: the records of files not
        gone, and of those gone within the last day (the windows still count them). Read as it
        is consumed, so that no list of every record is ever made; call it before any change
        (:class:`~slixmpp_http_upload.accounting.Accounting` does, when it is made)."""
        rows = self._connection.execute(
            f"SELECT {_COLUMNS} FROM slots WHERE gone = 0 OR issued > ? ORDER BY issued", (time.time() - DAY,)
        )
        return map(SlotRecord._make, rows)

    def add(self, record: SlotRecord) -> None:
        """Record a slot (written to the file soon after)."""
        self._send(record)
        if record.expires is None and not self._lasting:
            return  # in the file only
        self.records[record.key] = record
        if record.expires is not None:
            heapq.heappush(self._due, (record.expires, record.key))
            if self._watcher is not None:
                self._watcher(record.expires)

    def watch(self, watcher: Callable[[float], None]) -> None:
        """Have ``watcher(expires)`` called for each new record that expires."""
        self._watcher = watcher

    def remove(self, keys: Iterable[str], *, forget: bool = False) -> list[SlotRecord]:
        """Take the records of ``keys`` (those it has) out of :attr:`records`; returns them. The
        file keeps them a day as gone, for the limits' windows, unless ``forget``."""
        removed = [record for key in keys if (record := self.records.pop(key, None)) is not None]
        if removed:
            self._send(("forget" if forget else "gone", [(record.issued, record.key) for record in removed]))
        return removed

    def expires(self, key: str) -> float | None:
        """When the file of ``key`` stops being served (None: never, or not recorded)."""
        record = self.records.get(key)
        return record.expires if record is not None else None

    def of(self, who: str) -> list[SlotRecord]:
        """The records of a bare JID, or of every user of a domain given as ``@domain`` (whatever
        domain served them); domains compare in one form (Unicode or punycode alike)."""
        if who.startswith("@"):
            domain = normalise_domain(who[1:])
            return [
                record for record in self.records.values() if normalise_domain(record.owner.rpartition("@")[2]) == domain
            ]
        who = normalise_bare(who)
        return [record for record in self.records.values() if normalise_bare(record.owner) == who]

    def pop_due(self, now: float) -> list[SlotRecord]:
        """The records whose time came (expiry, or a moment given to :meth:`again`), each once."""
        due = []
        while self._due and self._due[0][0] <= now:
            _, key = heapq.heappop(self._due)
            if (record := self.records.get(key)) is not None:
                due.append(record)
        return due

    def again(self, record: SlotRecord, moment: float) -> None:
        """Make ``record`` due again at ``moment`` (a delete that failed or came too early)."""
        if record.key in self.records:
            heapq.heappush(self._due, (moment, record.key))

    def next_due(self) -> float | None:
        """When the next record falls due, if any does."""
        while self._due and self._due[0][1] not in self.records:
            heapq.heappop(self._due)
        return self._due[0][0] if self._due else None

    def flush(self) -> None:
        """Wait until every change so far is in the file (once closed, or closing, return as soon
        as the writer has ended: nothing is written any more)."""
        writer = self._writer
        if writer is None or self._closed:
            return
        done = threading.Event()
        self._writes.put(("flush", done))
        while not done.wait(FLUSH_CHECK_SECONDS):
            if not writer.is_alive():
                return

    def close(self) -> None:
        """Write what is pending and close the file; a change asked for after that raises
        :class:`RuntimeError`."""
        if self._closed:
            return
        self._closed = True
        if self._writer is None:
            self._connection.close()
        else:
            self._writes.put(None)
            self._writer.join()

    def _send(self, change: _Change) -> None:
        if self._closed:
            raise RuntimeError(f"the ledger {self.path} is closed")
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_loop, name="ledger writer", daemon=True)
            self._writer.start()
        self._writes.put(change)

    def _write_loop(self) -> None:
        unwritten: list[_Change] = []  # what a failed write left, oldest first
        retry_at = 0.0  # time.monotonic() of the next try after a failed write
        while True:
            batch = self._gather_until(retry_at) if unwritten else self._next_batch()
            closing = None in batch
            changes = unwritten + [change for change in batch if change is not None]
            error: Exception | None
            try:
                error = self._write(changes)
            except Exception as failure:  # a bug, not the file: keep the changes, as for a full disk
                log.exception("The ledger's writer failed on %d changes", len(changes))
                error = failure
            written = error is None
            if not written and not unwritten:
                log.error("Could not write the ledger %s (%s); trying again every %g s", self.path, error, RETRY_SECONDS)
            elif written and unwritten:
                log.warning("The ledger %s is written again", self.path)
            unwritten = [] if written else changes
            retry_at = time.monotonic() + RETRY_SECONDS
            if written or closing:
                for change in changes:
                    if _is_flush(change):
                        cast(threading.Event, change[1]).set()
            if closing:
                if unwritten:
                    log.error("%d changes to the ledger %s are lost", len(unwritten), self.path)
                self._connection.close()
                return

    def _next_batch(self) -> list[_Change | None]:
        """The changes queued within :data:`BATCH_SECONDS` of the first."""
        batch = [self._writes.get()]
        if not _is_flush(batch[0]):
            time.sleep(BATCH_SECONDS)
        return self._queued(batch)

    def _gather_until(self, moment: float) -> list[_Change | None]:
        """After a failed write: the changes queued until ``moment`` (``time.monotonic()``), or
        until :meth:`close` asks, so that the retries of a long outage come every
        :data:`RETRY_SECONDS` however busy the service, each with everything kept so far."""
        batch: list[_Change | None] = []
        while (left := moment - time.monotonic()) > 0:
            try:
                batch.append(self._writes.get(timeout=left))
            except queue.Empty:
                break
            if batch[-1] is None:
                break
        return self._queued(batch)

    def _queued(self, batch: list[_Change | None]) -> list[_Change | None]:
        while True:  # everything queued meanwhile goes in the same transaction
            try:
                batch.append(self._writes.get_nowait())
            except queue.Empty:
                return batch

    def _write(self, changes: list[_Change]) -> sqlite3.Error | None:
        """Apply ``changes`` in one transaction; SQLite's error (then nothing is applied), if any."""
        statements: list[_Statement] = []
        added: list[SlotRecord] = []
        for change in changes:
            if type(change) is SlotRecord:
                added.append(change)
                continue
            kind, value = cast(tuple[str, object], change)  # (a SlotRecord is a tuple too)
            if kind in ("forget", "gone"):
                statements += _inserts(added, self._insert_rows)  # in order: a removal may follow
                added = []
                statements.append((_DELETE if kind == "forget" else _GONE, value, True))  # type: ignore[arg-type]
        statements += _inserts(added, self._insert_rows)
        if time.monotonic() >= self._next_prune:  # a range of the issued index: once an hour
            statements.append((_PRUNE, (time.time() - DAY,), False))
            self._next_prune = time.monotonic() + PRUNE_SECONDS
        return _apply(self._connection, statements)


_Statement = tuple[str, Sequence[Any], bool]
"""SQL, its parameters, and whether those are a sequence of parameters (``executemany``)."""


def _is_flush(change: _Change | None) -> bool:
    """Whether ``change`` is :meth:`Ledger.flush`'s ``("flush", event)``."""
    return type(change) is tuple and change[0] == "flush"


def _insert_rows(connection: sqlite3.Connection) -> int:
    """The most rows one INSERT statement takes: :data:`INSERT_ROWS`, or fewer when SQLite allows
    fewer parameters (at least one: a build that cannot take one row fails its writes, loudly)."""
    rows = connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER) // len(SlotRecord._fields)
    return max(1, min(INSERT_ROWS, rows))


def _inserts(records: list[SlotRecord], most: int) -> list[_Statement]:
    """The INSERT statements that write ``records`` as new rows, in order, by many rows each:
    SQLite's work per statement (opening the table and its index, ``AUTOINCREMENT``'s update of
    ``sqlite_sequence``) and the GIL's hand-off around each step are paid once per statement, not
    per row. They hold ``most`` rows, then halves of it: the few distinct texts stay prepared in
    the connection's statement cache."""
    statements: list[_Statement] = []
    start = 0
    rows = most
    while start < len(records):
        while rows > len(records) - start:
            rows //= 2
        statements.append((_insert_statement(rows), list(chain.from_iterable(records[start : start + rows])), False))
        start += rows
    return statements


@functools.cache
def _insert_statement(rows: int) -> str:
    """``INSERT`` of ``rows`` new rows, each as a :class:`SlotRecord`'s fields."""
    row = f"({', '.join('?' * len(SlotRecord._fields))})"
    return f"INSERT INTO slots ({_COLUMNS}) VALUES {', '.join([row] * rows)}"


def _apply(connection: sqlite3.Connection, statements: list[_Statement]) -> sqlite3.Error | None:
    """Run ``statements`` as one transaction; SQLite's error (then nothing is applied), if any.
    A single statement of one set of parameters is a transaction of its own, without BEGIN and
    COMMIT: each is one more step that lets go of the GIL, which the writer must then win back
    from the busy event loop."""
    try:
        if len(statements) > 1 or any(many for _, _, many in statements):
            connection.execute("BEGIN")
        for sql, parameters, many in statements:
            if many:
                connection.executemany(sql, parameters)
            else:
                connection.execute(sql, parameters)
        if connection.in_transaction:
            connection.execute("COMMIT")
    except sqlite3.Error as error:
        if connection.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                connection.execute("ROLLBACK")
        return error
    return None


def _connect(path: str) -> sqlite3.Connection:
    """Open (or create, readable by its owner only: it names every user) a ledger file, WAL
    journal, each statement a transaction unless begun explicitly; shared with the writer
    thread."""
    if path != IN_MEMORY:
        with contextlib.suppress(FileExistsError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    connection = sqlite3.connect(path, timeout=LOCK_SECONDS, check_same_thread=False, isolation_level=None)
    deadline = time.monotonic() + LOCK_SECONDS
    while True:
        try:
            if path != IN_MEMORY:
                connection.execute("PRAGMA journal_mode=WAL")
                connection.execute("PRAGMA synchronous=NORMAL")
            connection.executescript(_SCHEMA)
            return connection
        except Exception as error:
            # a new file that another process sets up at the same moment (``serve --processes``):
            # turning it to WAL takes a lock that SQLite does not wait for
            busy = isinstance(error, sqlite3.OperationalError) and error.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
            if not busy or time.monotonic() > deadline:
                connection.close()
                raise
        time.sleep(0.01)
