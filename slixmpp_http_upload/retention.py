"""Throwing files away: when they expire (the :class:`Sweeper` inside ``serve``, or one
``sweep`` pass from cron) and on request (``purge``).

Deleting goes through the backend's optional ``async delete(keys)``, which returns the keys that
are gone (deleted, or absent already); only those leave the ledger. A key it could not delete
stays and is tried again :data:`RETRY_DELAY` seconds later. A backend's PUT URL must not outlive
the file's expiry (``SlotRequest.expires``), or a late upload would bring the file back for good.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from .ledger import Ledger, SlotRecord

log = logging.getLogger(__name__)

MAX_SLEEP = 60.0
"""The sweeper looks at the ledger at least this often (seconds)."""
RETRY_DELAY = 60.0
"""A file that could not be deleted is tried again after this many seconds."""


class CannotDelete(Exception):
    """The backend has no ``delete``; ``str()`` says so."""


def deleter(backend: Any) -> Callable[[Sequence[str]], Any]:
    """The backend's ``delete``, or :class:`CannotDelete` naming the backend."""
    delete = getattr(backend, "delete", None)
    if delete is None:
        raise CannotDelete(
            f"the {type(backend).__name__} backend cannot delete files (it has no delete method)"
        )
    return delete  # type: ignore[no-any-return]


async def delete_records(
    ledger: Ledger, backend: Any, records: Sequence[SlotRecord], *, forget: bool = False
) -> list[SlotRecord]:
    """Delete the files of ``records`` from ``backend`` and take those that are gone out of the
    ledger (see :meth:`Ledger.remove` for ``forget``); returns them. A backend that fails leaves
    every record in place (and logs why)."""
    if not records:
        return []
    delete = deleter(backend)
    try:
        gone = set(await delete([record.key for record in records]))
    except Exception:
        log.exception("Could not delete %d files (%s)", len(records), type(backend).__name__)
        return []
    return ledger.remove((record.key for record in records if record.key in gone), forget=forget)


async def sweep(ledger: Ledger, backend: Any, now: float) -> tuple[list[SlotRecord], int]:
    """One pass: delete every file expired at ``now``. Returns what was removed and how many
    expired files wait for a later pass (their delete failed)."""
    due = ledger.pop_due(now)
    removed = await delete_records(ledger, backend, due)
    gone = {record.key for record in removed}
    for record in due:
        if record.key not in gone:
            ledger.again(record, now + RETRY_DELAY)
    return removed, len(due) - len(removed)


class Sweeper:
    """Deletes expired files as they fall due (at most :data:`MAX_SLEEP` late), until cancelled."""

    def __init__(self, ledger: Ledger, backend: Any, clock: Callable[[], float] = time.time) -> None:
        deleter(backend)  # refuse a backend that cannot delete before anything is due
        self.ledger = ledger
        self.backend = backend
        self.clock = clock
        self._wake = asyncio.Event()
        self._planned = float("inf")
        ledger.watch(self._on_new_expiry)

    async def run(self) -> None:
        while True:
            now = self.clock()
            removed, waiting = await sweep(self.ledger, self.backend, now)
            if removed or waiting:
                size = sum(record.size for record in removed)
                log.info("expired: %d files deleted (%d bytes), %d left for later", len(removed), size, waiting)
            due = self.ledger.next_due()
            self._planned = min(due, now + MAX_SLEEP) if due is not None else now + MAX_SLEEP
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), max(self._planned - self.clock(), 0.0))
            except TimeoutError:
                pass

    def _on_new_expiry(self, moment: float) -> None:
        if moment < self._planned:
            self._planned = moment
            self._wake.set()
