"""Who used what: the limits (:mod:`.limits`) in front of every slot, the ledger (:mod:`.ledger`)
behind it.

The plugin asks :meth:`Accounting.admit` before the backend makes a slot: a request over a
limit gets an :class:`~slixmpp_http_upload.limits.OverLimit`, one that fits is counted at once
(so that requests answered in parallel cannot overrun a limit together). Once the slot exists,
:meth:`Accounting.record` writes it to the ledger; :meth:`Accounting.withdraw` takes the count
back when the backend failed. Nothing here waits for the disk.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from .config import UploadSettings
from .ledger import IN_MEMORY, Ledger, SlotRecord
from .limits import OverLimit, Quotas, Usage
from .options import ConfigError
from .slot import Slot, SlotRequest


def open_ledger(settings: UploadSettings, path: str = "http_upload", *, lasting: bool = True) -> Ledger:
    """The ledger ``settings`` name (in memory when none; see :class:`Ledger` for ``lasting``); a
    file that cannot be opened is a :class:`ConfigError` on ``<path>.ledger``."""
    try:
        return Ledger(settings.ledger or IN_MEMORY, lasting=lasting)
    except Exception as error:  # sqlite3.Error, or an OSError on the folder
        raise ConfigError(f"{path}.ledger", f"cannot open {settings.ledger!r}: {error}") from None


def quotas(settings: UploadSettings) -> Quotas:
    """The (empty) counters of the limits ``settings`` turn on."""
    rules = settings.purposes.values()
    return Quotas(
        daily_quotas={"": settings.daily_quota, **{r.name: r.daily_quota for r in rules if r.daily_pool}},
        total_quotas={"": settings.total_quota, **{r.name: r.total_quota for r in rules if r.total_pool}},
        rate_limit=settings.rate_limit,
        global_quota=settings.global_quota,
    )


class Accounting:
    """The limits of ``settings`` over the records of ``ledger``; ``clock`` gives epoch seconds."""

    def __init__(self, settings: UploadSettings, ledger: Ledger, clock: Callable[[], float] = time.time) -> None:
        self.purposes = settings.purposes
        self.ledger = ledger
        self.clock = clock
        self.quotas = quotas(settings)
        self._limited = self.quotas.active
        if self._limited:
            for record in ledger.counted():  # oldest first: each window forgets from its front
                self.quotas.count(self._usage(record.owner, record.purpose, record.size, record.issued, record.expires))

    def admit(self, request: SlotRequest) -> OverLimit | Usage:
        """Check ``request`` against every limit now; count it when it fits."""
        owner = request.requester.bare if request.requester is not None else ""
        usage = self._usage(owner, request.purpose, request.size, self.clock(), request.expires)
        if self._limited:
            refusal = self.quotas.check(usage)
            if refusal is not None:
                return refusal
            self.quotas.count(usage)
        return usage

    def withdraw(self, usage: Usage) -> None:
        """Take back the count of an admitted request that got no slot."""
        if self._limited:
            self.quotas.uncount(usage)

    def record(self, usage: Usage, request: SlotRequest, slot: Slot) -> None:
        """Write the slot made for an admitted request to the ledger."""
        key = slot.key or slot.get_url
        self.ledger.add(  # SlotRecord's fields in order (by keyword: twice the cost, on every slot)
            SlotRecord(key, usage.owner, request.domain, request.size, request.content_type, request.purpose,
                       usage.issued, usage.expires)
        )

    def _usage(self, owner: str, purpose: str, size: int, issued: float, expires: float | None) -> Usage:
        rules = self.purposes.get(purpose)  # a purpose served no more counts in the shared pools
        daily_pool, total_pool = (rules.daily_pool, rules.total_pool) if rules else ("", "")
        return Usage(owner, daily_pool, total_pool, size, issued, expires)
