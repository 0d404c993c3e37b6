"""Which S3 objects the download redirect may serve: those the ledger records, until they expire.

The redirect (:mod:`slixmpp_http_upload.http.redirect`) asks :class:`ServedFiles` for each GET,
never S3. A file is served when the ledger holds its record, not gone, and not past its expiry
(``expire_after``, ``ephemeral``): unknown, expired and deleted files are 404.

``serve``'s ledger lives in memory, but ``purge``, ``sweep`` and ``check`` change the ledger file
from processes of their own. So when the ledger is a file, the file decides, read on a read-only
connection (WAL: no writer waits): a record ``purge`` removed is gone here at once, and one
``check`` added is served. A record in memory is found in the file by its ``(issued, key)`` (the
ledger's index); a key memory does not know sends a look at the rows written since the last look
(by ``id``, in the order written) for records other processes added, remembered here by ``id``. Only a slot ``serve`` itself handed out in the
last :data:`WRITE_GRACE` seconds may be missing from the file still (its writer batches changes);
memory vouches for those.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable

from .ledger import IN_MEMORY, Ledger, SlotRecord

WRITE_GRACE = 1.0
"""Seconds within which a new record of this process's ledger may not be in the file yet (its
writer batches 50 ms of changes)."""
_FIND = "SELECT content_type, expires FROM slots WHERE issued = ? AND key = ? AND gone = 0"
_FIND_ROW = "SELECT content_type, expires FROM slots WHERE id = ? AND gone = 0"
_NEW_ROWS = "SELECT id, key FROM slots WHERE id > ? ORDER BY id"


class ServedFiles:
    """``served(key_path)``: the declared content type of a servable object (``""`` for none),
    else None — the redirect's ``lookup``."""

    def __init__(self, ledger: Ledger, clock: Callable[[], float] = time.time) -> None:
        self.ledger = ledger
        self.clock = clock
        self._file = None
        self._last_row = ledger.last_row
        self._others: dict[str, int] = {}
        """The ``id`` of each record another process added since the ledger was read."""
        if ledger.path != IN_MEMORY:
            self._file = sqlite3.connect(f"file:{ledger.path}?mode=ro", uri=True, check_same_thread=False)

    def __call__(self, key: str) -> str | None:
        now = self.clock()
        record = self.ledger.records.get(key)
        if self._file is not None:
            row = self._find(key, record)
            if row is not None:
                content_type, expires = row
            elif record is not None and record.issued > now - WRITE_GRACE:
                content_type, expires = record.content_type, record.expires
            else:
                return None  # never recorded, or deleted (perhaps by another process)
        elif record is not None:
            content_type, expires = record.content_type, record.expires
        else:
            return None
        if expires is not None and expires <= now:
            return None
        return content_type or ""

    def _find(self, key: str, record: SlotRecord | None) -> tuple[str | None, float | None] | None:
        """The file's ``(content_type, expires)`` of ``key`` if it has the record, not gone."""
        assert self._file is not None
        if record is not None:
            return self._file.execute(_FIND, (record.issued, key)).fetchone()  # type: ignore[no-any-return]
        if key not in self._others:
            for row_id, row_key in self._file.execute(_NEW_ROWS, (self._last_row,)):
                self._last_row = row_id
                if row_key not in self.ledger.records:
                    self._others[row_key] = row_id
        if (row_id := self._others.get(key)) is None:
            return None
        row = self._file.execute(_FIND_ROW, (row_id,)).fetchone()
        if row is None:
            del self._others[key]  # removed (or gone) since: forget it here too
        return row  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
