"""The ledger on disk, the counts rebuilt from it, sweeping and purging: against real SQLite
files and (for S3 deletes) the real SeaweedFS."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import math
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from slixmpp import JID

from helpers import DOMAIN, run_cli, seaweedfs_s3, tmpfs, write_toml
from servers import SeaweedFS, anonymous_request
from slixmpp_http_upload import Slot, SlotRequest, register_backend
from slixmpp_http_upload.accounting import Accounting
from slixmpp_http_upload.config import parse_upload_settings
from slixmpp_http_upload.ledger import DEFAULT_LEDGER, INSERT_ROWS, Ledger, SlotRecord, _apply, _connect, _insert_rows, _inserts
from slixmpp_http_upload.limits import DAY, OverLimit
from slixmpp_http_upload.retention import RETRY_DELAY, sweep
from slixmpp_http_upload.s3 import S3Backend
from slixmpp_http_upload.slot import make_request

NOW = 1_800_000_000.0


def record(key: str, owner: str = "alice@localhost", *, issued: float = NOW, expires: float | None = None, size: int = 10, purpose: str = "message") -> SlotRecord:
    return SlotRecord(key, owner, owner.partition("@")[2], size, "text/plain", purpose, issued, expires)


def rows(path: Path) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT key, gone FROM slots ORDER BY key").fetchall()


def written(path: Path) -> list[tuple[int, str, int]]:
    """``(id, key, gone)`` of every row, in the order written."""
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT id, key, gone FROM slots ORDER BY id").fetchall()


class Backend:
    """Deletes what it is asked to, except the keys in ``failing``; remembers every call."""

    def __init__(self, failing: Iterable[str] = ()) -> None:
        self.failing = set(failing)
        self.calls: list[list[str]] = []

    async def create_slot(self, request: SlotRequest) -> Slot:
        return Slot(f"https://files.example/{request.filename}?put", f"https://files.example/{request.filename}")

    async def delete(self, keys: Sequence[str]) -> list[str]:
        self.calls.append(list(keys))
        if "everything" in self.failing:
            raise ConnectionError("storage is down")
        return [key for key in keys if key not in self.failing]


# ---------------------------------------------------------------------------- the file


def test_records_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.add(record("a", expires=NOW + 60))
    ledger.add(record("b", "bob@localhost"))
    ledger.add(record("c"))
    ledger.remove(["c"], forget=True)
    ledger.close()
    again = Ledger(path)
    assert again.records == {"a": record("a", expires=NOW + 60), "b": record("b", "bob@localhost")}
    assert again.next_due() == NOW + 60
    assert again.of("alice@localhost") == [record("a", expires=NOW + 60)]
    assert again.of("@localhost") == [record("a", expires=NOW + 60), record("b", "bob@localhost")]
    again.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert path.stat().st_mode & 0o777 == 0o600, "the ledger names every user: its owner's only"


def test_a_ledger_may_hold_only_the_records_that_expire_in_memory(tmp_path: Path) -> None:
    """``serve`` (without the S3 download redirect) holds in memory only the records of files
    that expire; the limits count the others from the file as it is read."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.add(record("lasting-before", issued=NOW))
    ledger.add(record("expiring-before", issued=NOW + 1, expires=NOW + 60))
    ledger.close()
    trimmed = Ledger(path, lasting=False)
    assert [r.key for r in trimmed.counted()] == ["lasting-before", "expiring-before"]
    trimmed.add(record("lasting-after", issued=NOW + 2))
    trimmed.add(record("expiring-after", issued=NOW + 3, expires=NOW + 120))
    assert list(trimmed.records) == ["expiring-before", "expiring-after"]
    assert (trimmed.expires("lasting-after"), trimmed.expires("expiring-after")) == (None, NOW + 120)
    assert [r.key for r in trimmed.pop_due(NOW + 120)] == ["expiring-before", "expiring-after"]
    trimmed.close()
    keys = ["lasting-before", "expiring-before", "lasting-after", "expiring-after"]
    assert [key for _, key, gone in written(path) if not gone] == keys, "the file has every record"
    again = Ledger(path)
    assert list(again.records) == keys
    again.close()


def test_gone_records_stay_a_day_for_the_limits(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    now = time.time()
    ledger = Ledger(path)
    ledger.add(record("old", issued=now - DAY - 1, expires=now - DAY))
    ledger.add(record("recent", issued=now - 100, expires=now - 10))
    ledger.remove(["old", "recent"])
    ledger.flush()
    assert rows(path) == [("old", 1), ("recent", 1)]
    assert ledger.records == {}
    ledger.close()
    again = Ledger(path)
    assert rows(path) == [("recent", 1)], "gone for more than a day: pruned"
    assert (again.records, [r.key for r in again.counted()]) == ({}, ["recent"])
    again.close()


@pytest.mark.parametrize("lasting", [True, False], ids=["all in memory", "expiring in memory"])
@pytest.mark.parametrize("gone", [0, 1], ids=["older gone", "newer gone"])
def test_counts_survive_a_restart(tmp_path: Path, gone: int, lasting: bool) -> None:
    """Gone records count as the live ones do, in the order they were issued: the windows
    forget the oldest first. Files that never expire count whether or not the ledger holds their
    records in memory."""
    settings = parse_upload_settings({"rate_limit": {"slots": 2, "seconds": 300}, "ledger": str(tmp_path / "l.sqlite")})
    alice = JID("alice@localhost/phone")
    request = SlotRequest("a.txt", 10, None, DOMAIN, alice)
    clock = [time.time()]
    ledger = Ledger(settings.ledger)
    accounting = Accounting(settings, ledger, clock=lambda: clock[0])
    first = clock[0]
    for n in range(2):
        usage = accounting.admit(request)
        assert not isinstance(usage, OverLimit)
        accounting.record(usage, request, Slot(f"https://f.example/{n}?p", f"https://f.example/{n}"))
        clock[0] += 1
    ledger.remove([f"https://f.example/{gone}"])  # the file is gone: its slot still counts
    ledger.close()
    restarted = Accounting(settings, Ledger(settings.ledger, lasting=lasting), clock=lambda: clock[0])
    refusal = restarted.admit(request)
    assert isinstance(refusal, OverLimit) and refusal.retry is not None
    assert refusal.retry.timestamp() == math.ceil(first + 300), "the first slot leaves the window first"
    clock[0] = first + 300.5
    assert not isinstance(restarted.admit(request), OverLimit)
    restarted.ledger.close()


def test_records_a_full_disk_refused_are_written_once_there_is_room(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A failed write (disk full, file locked too long) keeps its changes and tries again: the
    records stay in memory and would be gone from the file at the next start."""
    with tmpfs(tmp_path / "disk", "size=1m") as disk:
        path = disk / "ledger.sqlite"
        ledger = Ledger(path)
        ledger.add(record("before"))
        ledger.flush()
        filler = disk / "filler"
        fill = os.open(filler, os.O_WRONLY | os.O_CREAT)
        with contextlib.suppress(OSError):
            while True:
                os.write(fill, b"x" * 4096)
        os.close(fill)
        for n in range(200):  # more than the WAL's free room
            ledger.add(record(f"while-full-{n:03}", size=n))
        time.sleep(1)  # the writer has tried (and failed) meanwhile
        filler.unlink()
        ledger.flush()
        ledger.close()
        again = Ledger(path)
        assert sorted(again.records) == ["before", *(f"while-full-{n:03}" for n in range(200))]
        again.close()
        assert [key for _, key, _ in written(path)] == ["before", *(f"while-full-{n:03}" for n in range(200))]
    assert f"Could not write the ledger {path} (database or disk is full); trying again every 1 s" in caplog.text
    assert f"The ledger {path} is written again" in caplog.text


def test_a_long_outage_is_retried_every_second_however_busy_the_service(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While writes fail and slots keep coming, the writer tries again every ``RETRY_SECONDS``
    (with everything kept so far), not with each new batch: each try rebuilds the whole backlog."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    write = ledger._write
    tries: list[int] = []
    outage = True

    def failing(changes: list[Any]) -> sqlite3.Error | None:
        tries.append(len(changes))
        return sqlite3.OperationalError("database or disk is full") if outage else write(changes)

    ledger._write = failing  # type: ignore[method-assign]
    started = time.monotonic()
    n = 0
    while time.monotonic() - started < 2.5:  # a slot every 10 ms: a new batch every 50 ms
        ledger.add(record(f"k{n:04}", size=n))
        n += 1
        time.sleep(0.01)
    assert 2 <= len(tries) <= 4, tries  # the first failure, then one try a second
    assert tries == sorted(tries)  # each with everything kept so far
    outage = False
    ledger.flush()
    ledger.close()
    assert [key for _, key, _ in written(tmp_path / "ledger.sqlite")] == [f"k{i:04}" for i in range(n)]
    assert "is written again" in caplog.text


def test_a_writer_that_raises_keeps_its_changes_and_goes_on(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Anything but SQLite's own errors (a bug) must not end the writer thread: its changes are
    kept and written at the next try, and ``flush`` returns."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    write = ledger._write
    raised: list[bool] = []

    def buggy(changes: list[Any]) -> sqlite3.Error | None:
        if not raised:
            raised.append(True)
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        return write(changes)

    ledger._write = buggy  # type: ignore[method-assign]
    ledger.add(record("first"))
    ledger.add(record("second"))
    ledger.flush()  # returns: the writer is alive and wrote both at its next try
    ledger.close()
    assert [key for _, key, _ in written(tmp_path / "ledger.sqlite")] == ["first", "second"]
    assert "The ledger's writer failed on" in caplog.text and "is written again" in caplog.text


def test_a_batch_of_many_slots_is_written_in_the_order_given(tmp_path: Path) -> None:
    """More new rows in one batch than one INSERT statement holds, a removal among them: every row
    is written, ``id`` in the order of the slots, and an ``id`` is never given again (``served``
    finds the rows other processes added as those after the last ``id`` it saw)."""
    path = tmp_path / "ledger.sqlite"
    count = 2 * INSERT_ROWS + 45  # two full statements, then smaller ones
    ledger = Ledger(path)
    for n in range(count):
        ledger.add(record(f"k{n:04}", size=n, expires=NOW + n))
        if n == 300:
            ledger.remove(["k0007"], forget=True)
            ledger.remove(["k0008"])
    ledger.flush()
    rows_written = written(path)
    assert [key for _, key, _ in rows_written] == [f"k{n:04}" for n in range(count) if n != 7]
    assert [key for _, key, gone in rows_written if gone] == ["k0008"]
    assert [row_id for row_id, _, _ in rows_written] == sorted({row_id for row_id, _, _ in rows_written})
    newest = rows_written[-1][0]
    ledger.remove([f"k{count - 1:04}"], forget=True)  # the newest row: its id is not reused
    ledger.add(record("after"))
    ledger.close()
    assert written(path)[-2:] == [(newest - 1, f"k{count - 2:04}", 0), (newest + 1, "after", 0)]
    again = Ledger(path)
    assert len(again.records) == count - 2
    assert again.records["k0500"] == record("k0500", size=500, expires=NOW + 500)
    assert again.last_row == newest + 1
    again.close()


def test_a_record_is_a_record_whatever_its_key(tmp_path: Path) -> None:
    """The writer is sent new records as they are, and its own requests as ``(kind, value)``:
    a key that spells one of those kinds is still a record."""
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    for key in ("flush", "gone", "forget", "add"):
        ledger.add(record(key))
    ledger.flush()
    assert ledger._writer is not None and ledger._writer.is_alive()  # (flush returns if it died)
    ledger.add(record("after"))
    ledger.flush()
    assert [key for _, key, _ in written(path)] == ["flush", "gone", "forget", "add", "after"]
    ledger.close()


def test_rows_are_written_where_sqlite_allows_few_parameters(tmp_path: Path) -> None:
    """A SQLite built with a lower limit on a statement's parameters gets fewer rows per INSERT."""
    connection = _connect(str(tmp_path / "ledger.sqlite"))
    connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 20)  # two rows of eight
    assert _insert_rows(connection) == 2
    statements = _inserts([record(f"k{n}", size=n) for n in range(7)], _insert_rows(connection))
    assert [len(parameters) for _, parameters, _ in statements] == [16, 16, 16, 8]
    assert _apply(connection, statements) is None
    assert connection.execute("SELECT key, size FROM slots ORDER BY id").fetchall() == [(f"k{n}", n) for n in range(7)]
    connection.close()


def test_a_sqlite_that_cannot_take_one_row_fails_its_writes_instead_of_hanging(tmp_path: Path) -> None:
    connection = _connect(str(tmp_path / "ledger.sqlite"))
    connection.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 5)  # fewer than one row's eight
    assert _insert_rows(connection) == 1
    statements = _inserts([record("k0"), record("k1")], _insert_rows(connection))
    assert len(statements) == 2
    assert isinstance(_apply(connection, statements), sqlite3.Error)
    connection.close()


def test_a_batch_that_fails_in_its_last_statement_writes_nothing(tmp_path: Path) -> None:
    """The statements of a batch are one transaction: one that fails takes back those before it."""
    connection = _connect(str(tmp_path / "ledger.sqlite"))
    statements = _inserts([record(f"k{n}") for n in range(3)], 2)
    statements.append(("INSERT INTO slots (key) VALUES (?)", ["no owner"], False))  # NOT NULL fails
    error = _apply(connection, statements)
    assert isinstance(error, sqlite3.IntegrityError)
    assert not connection.in_transaction
    assert connection.execute("SELECT count(*) FROM slots").fetchone() == (0,)
    assert _apply(connection, statements[:-1]) is None
    assert connection.execute("SELECT count(*) FROM slots").fetchone() == (3,)
    owners = [("bob@localhost", "k0"), ("bob@localhost", "k1"), (None, "k2")]  # the last: NOT NULL fails
    failing = ("UPDATE slots SET gone = 1, owner = ? WHERE key = ?", owners, True)
    assert isinstance(_apply(connection, [failing]), sqlite3.IntegrityError), "many rows: one transaction"
    assert connection.execute("SELECT count(*) FROM slots WHERE gone = 1").fetchone() == (0,)
    connection.close()


def test_a_batch_refused_by_a_lock_is_written_once_the_lock_is_gone(tmp_path: Path) -> None:
    """Another process (``purge``, ``sweep``, a worker of ``serve --processes``) holding the write
    lock past the wait: the batch fails whole, leaves no transaction open, and its retry writes
    each row once, a removal after the rows it follows."""
    path = tmp_path / "ledger.sqlite"
    connection = _connect(str(path))
    connection.execute("PRAGMA busy_timeout = 0")  # the writer waits 30 s; the failure is the same
    statements = _inserts([record(f"k{n}", size=n) for n in range(INSERT_ROWS + 3)], INSERT_ROWS)
    statements.append(("UPDATE slots SET gone = 1 WHERE issued = ? AND key = ?", [(NOW, "k1")], True))
    other = sqlite3.connect(path, isolation_level=None)
    for batch in (statements, statements[:1]):  # a transaction, and a statement of its own
        other.execute("BEGIN IMMEDIATE")
        error = _apply(connection, batch)
        assert isinstance(error, sqlite3.OperationalError) and "locked" in str(error)
        assert not connection.in_transaction
        other.execute("ROLLBACK")
        assert connection.execute("SELECT count(*) FROM slots").fetchone() == (0,)
    assert _apply(connection, statements) is None
    other.close()
    connection.close()
    assert [key for _, key, _ in written(path)] == [f"k{n}" for n in range(INSERT_ROWS + 3)]
    assert [key for _, key, gone in written(path) if gone] == ["k1"]


@pytest.mark.parametrize("was_written", [True, False], ids=["written", "never written"])
def test_a_closed_ledger_refuses_changes_and_never_hangs(tmp_path: Path, was_written: bool) -> None:
    """``flush()`` after ``close()`` waited forever for a writer that had ended; a change after
    ``close()`` was dropped without a word, or (on a ledger never written) started a writer on
    the closed file that retried for ever."""
    ledger = Ledger(tmp_path / "ledger.sqlite")
    if was_written:
        ledger.add(record("k"))
    ledger.close()
    with pytest.raises(RuntimeError, match="is closed"):
        ledger.add(record("late"))
    assert "late" not in ledger.records
    flushing = threading.Thread(target=ledger.flush, daemon=True)
    flushing.start()
    flushing.join(timeout=10)
    assert not flushing.is_alive()
    ledger.close()  # twice: nothing more
    assert [key for _, key, _ in written(tmp_path / "ledger.sqlite")] == (["k"] if was_written else [])


def test_a_new_file_another_process_holds_is_opened_once_it_lets_go(tmp_path: Path) -> None:
    """Turning a new file to WAL takes a lock SQLite does not wait for: two ``serve`` processes
    starting on one new ledger at the same moment made one of them fail ("database is locked",
    exit 2). Opening now waits for the other, as every statement does."""
    path = tmp_path / "ledger.sqlite"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE setting_up (x)")
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO setting_up VALUES (1)")
    letting_go = threading.Timer(0.3, other.execute, ("COMMIT",))
    letting_go.start()
    ledger = Ledger(path)
    letting_go.join()
    other.close()
    ledger.add(record("k"))
    ledger.close()
    assert [key for _, key, _ in written(path)] == ["k"]


def test_the_largest_size_a_slot_may_declare_is_written(tmp_path: Path) -> None:
    """With no size limit (``max_file_size = "infinity"``) a request may declare a size up to the
    largest integer SQLite stores (larger ones are refused: ``test_slot_rules``), and the ledger
    writes it; a record it could not write would stop the writer thread for good."""
    largest = make_request("f.txt", str(2**63 - 1), None, domain=DOMAIN, max_file_size=None)
    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    ledger.add(record("largest", size=largest.size))
    ledger.add(record("after"))
    ledger.close()
    again = Ledger(path)
    assert again.records == {"largest": record("largest", size=2**63 - 1), "after": record("after")}
    again.close()


def test_a_ledger_that_cannot_be_opened_is_a_configuration_error(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "c.toml", {"http_upload": {"backend": "deleting", "ledger": "missing/dir/l.sqlite"}})
    register_backend("deleting", lambda settings, options, path: Backend())
    status, out, err = run_cli("usage", "-c", str(config), "alice@localhost")
    assert (status, out) == (2, "")
    assert err.startswith("slixmpp-http-upload: configuration error: http_upload.ledger: cannot open "), err


# ------------------------------------------------------------------------- sweeping


def test_sweep_deletes_due_files_and_keeps_failures_for_later(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "l.sqlite")
    ledger.add(record("due", expires=NOW - 1))
    ledger.add(record("fails", expires=NOW))
    ledger.add(record("later", expires=NOW + 50))
    ledger.add(record("never"))
    backend = Backend(failing=["fails"])
    removed, waiting = asyncio.run(sweep(ledger, backend, NOW))
    assert ([r.key for r in removed], waiting) == (["due"], 1)
    assert backend.calls == [["due", "fails"]]
    assert sorted(ledger.records) == ["fails", "later", "never"]
    assert ledger.next_due() == NOW + 50
    backend.failing = {"everything"}
    assert asyncio.run(sweep(ledger, backend, NOW + 50)) == ([], 1), "a failing backend keeps every record"
    assert sorted(ledger.records) == ["fails", "later", "never"]
    assert ledger.next_due() == NOW + RETRY_DELAY  # "fails", again
    backend.failing = set()
    removed, _ = asyncio.run(sweep(ledger, backend, NOW + RETRY_DELAY + 50))
    assert sorted(r.key for r in removed) == ["fails", "later"]
    assert sorted(ledger.records) == ["never"] and ledger.next_due() is None
    ledger.close()
    assert rows(tmp_path / "l.sqlite") == [("due", 1), ("fails", 1), ("later", 1), ("never", 0)], "kept a day, gone"


# ------------------------------------------------------------------ S3 (SeaweedFS)


def put(url: str, body: bytes) -> int:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    connection.request("PUT", f"{parts.path}?{parts.query}", body, {"Content-Length": str(len(body))})
    return connection.getresponse().status


def s3_backend(seaweedfs: SeaweedFS, **changes: str) -> S3Backend:
    settings = parse_upload_settings({"s3": {**seaweedfs_s3(seaweedfs), **changes}})
    return S3Backend.from_settings(settings, settings.backend_options, "http_upload.s3")


def test_s3_delete(seaweedfs: SeaweedFS) -> None:
    backend = s3_backend(seaweedfs)
    slots = [backend.make_slot(SlotRequest(f"f{n}.txt", 3, None, DOMAIN)) for n in range(3)]
    for slot in slots[:2]:
        assert put(slot.put_url, b"abc") == 200
        assert anonymous_request("GET", slot.get_url)[0] == 200
    keys = [slot.key for slot in slots]  # the third was never uploaded: gone already
    assert asyncio.run(backend.delete(keys)) == keys
    assert [anonymous_request("GET", slot.get_url)[0] for slot in slots] == [404, 404, 404]


def test_s3_put_url_never_outlives_the_file(seaweedfs: SeaweedFS) -> None:
    backend = s3_backend(seaweedfs)  # expiration_time: 60
    for expires, signed_for in ((None, "60"), (NOW + 600, "60"), (NOW + 5.9, "5"), (NOW - 3, "1")):
        slot = backend.make_slot(SlotRequest("a.txt", 3, None, DOMAIN, expires=expires), now=NOW)
        assert parse_qs(urlsplit(slot.put_url).query)["X-Amz-Expires"] == [signed_for]


def test_s3_delete_when_s3_is_down(seaweedfs: SeaweedFS) -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        port = unused.getsockname()[1]
        backend = s3_backend(seaweedfs, bucket_url=f"http://127.0.0.1:{port}/bucket")
        assert asyncio.run(backend.delete(["/bucket/t/a.txt"])) == []


# --------------------------------------------------------------------- the commands


def test_purge_and_usage(tmp_path: Path) -> None:
    backend = Backend()
    register_backend("deleting", lambda settings, options, path: backend)
    config = write_toml(tmp_path / "c.toml", {"http_upload": {"backend": "deleting"}})
    ledger = Ledger(tmp_path / DEFAULT_LEDGER)  # beside the configuration file by default
    ledger.add(record("a1", size=5, purpose="profile"))
    ledger.add(record("a2", size=7, expires=time.time() - 1))
    ledger.add(record("b1", "bob@localhost", size=11))
    ledger.add(record("c1", "carol@example.org"))
    ledger.close()
    status, out, _ = run_cli("usage", "-c", str(config), "Alice@localhost")
    assert (status, out) == (0, "alice@localhost: 2 files, 12 bytes\n  message: 1 files, 7 bytes (1 expired, not yet deleted)\n  profile: 1 files, 5 bytes\n")
    status, out, _ = run_cli("purge", "-c", str(config), "alice@localhost")
    assert status == 0
    assert out == (
        "deleted a1 (alice@localhost, 5 bytes, profile)\ndeleted a2 (alice@localhost, 7 bytes, message)\n"
        "2 files of alice@localhost deleted (12 bytes)\n"
    )
    assert backend.calls == [["a1", "a2"]]
    status, out, _ = run_cli("purge", "-c", str(config), "@localhost")
    assert (status, out.splitlines()[-1]) == (0, "1 files of @localhost deleted (11 bytes)")
    assert rows(tmp_path / DEFAULT_LEDGER) == [("c1", 0)], "purged records are forgotten at once"


def test_purge_and_usage_find_users_by_their_own_domain_in_either_form(tmp_path: Path) -> None:
    """``@domain`` is the users of that domain (also those of another domain that ``allow``
    lets in: a record's ``domain`` is the served one), and an IDN domain matches in Unicode and
    in punycode, whichever form the user's server sent."""
    backend = Backend()
    register_backend("deleting", lambda settings, options, path: backend)
    config = write_toml(tmp_path / "c.toml", {"http_upload": {"backend": "deleting"}})
    ledger = Ledger(tmp_path / DEFAULT_LEDGER)
    for key, owner in (("j1", "juliet@xn--mnchen-3ya.de"), ("r1", "romeo@münchen.de"), ("n1", "nurse@remote.example")):
        ledger.add(SlotRecord(key, owner, "upload-host.example", 10, None, "message", NOW, None))
    ledger.close()
    status, out, _ = run_cli("usage", "-c", str(config), "juliet@münchen.de")
    assert (status, out.splitlines()[0]) == (0, "juliet@münchen.de: 1 files, 10 bytes")
    status, out, _ = run_cli("purge", "-c", str(config), "@xn--mnchen-3ya.de")
    assert (status, out.splitlines()[-1]) == (0, "2 files of @münchen.de deleted (20 bytes)")
    status, out, _ = run_cli("purge", "-c", str(config), "@remote.example")
    assert (status, out.splitlines()[-1]) == (0, "1 files of @remote.example deleted (10 bytes)")
    assert backend.calls == [["j1", "r1"], ["n1"]]


def test_purge_refusals(tmp_path: Path) -> None:
    class NoDelete:
        async def create_slot(self, request: SlotRequest) -> Slot:
            raise NotImplementedError

    register_backend("nodelete", lambda settings, options, path: NoDelete())
    register_backend("failing", lambda settings, options, path: Backend(failing=["a1"]))
    ledger = Ledger(tmp_path / DEFAULT_LEDGER)
    ledger.add(record("a1"))
    ledger.close()
    config = write_toml(tmp_path / "c.toml", {"http_upload": {"backend": "nodelete"}})
    status, out, err = run_cli("purge", "-c", str(config), "alice@localhost")
    assert (status, out) == (1, "")
    assert err == "slixmpp-http-upload: the NoDelete backend cannot delete files (it has no delete method): nothing was removed\n"
    status, out, err = run_cli("purge", "-c", str(config), "alice")
    assert (status, err) == (1, "slixmpp-http-upload: 'alice' is not a bare JID (user@domain) or @domain\n")
    config = write_toml(tmp_path / "c.toml", {"http_upload": {"backend": "failing"}})
    status, out, err = run_cli("purge", "-c", str(config), "alice@localhost")
    assert (status, out) == (1, "0 files of alice@localhost deleted (0 bytes)\n")
    assert err == "slixmpp-http-upload: 1 files of alice@localhost could not be deleted; they stay in the ledger\n"
    assert rows(tmp_path / DEFAULT_LEDGER) == [("a1", 0)]


def test_serve_refuses_expiry_without_delete(tmp_path: Path) -> None:
    class NoDelete:
        async def create_slot(self, request: SlotRequest) -> Slot:
            raise NotImplementedError

    register_backend("nodelete", lambda settings, options, path: NoDelete())
    document = {
        "component": {"secret": "s", "domains": ["localhost"], "port": 1},
        "http_upload": {"backend": "nodelete", "expire_after": 60},
    }
    status, out, err = run_cli("serve", "-c", str(write_toml(tmp_path / "c.toml", document)))
    assert (status, out) == (2, "")
    assert err.endswith(
        "configuration error: http_upload.expire_after: files expire, but the NoDelete backend cannot delete files"
        " (it has no delete method)\n"
    ), err

