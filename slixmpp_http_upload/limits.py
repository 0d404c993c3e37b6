"""Per-user limits on slots, kept in memory: ``daily_quota``, ``rate_limit``, ``total_quota``
and ``global_quota``.

:class:`Quotas` counts every admitted slot and answers each request in constant time (old
entries leave their windows as time passes). A refusal (:class:`OverLimit`) names the limit with
its numbers and says when the same request would fit: once enough of a window has passed, or
enough stored files have expired — or never (``retry`` None) when nothing will free room.
The counters are rebuilt from the ledger's records on start (:meth:`Quotas.count`).
"""

from __future__ import annotations

import heapq
import math
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import NamedTuple, TypeVar

DAY = 86400
PRUNE_SECONDS = 3600
_K = TypeVar("_K")


@dataclass(frozen=True)
class RateLimit:
    """At most ``slots`` slots in any ``seconds`` seconds."""

    slots: int
    seconds: int


@dataclass(frozen=True)
class OverLimit:
    """A request over a limit: ``reason`` is the metrics label, ``text`` what the user reads,
    ``retry`` (a whole second) when the same request would fit, if ever."""

    reason: str
    text: str
    retry: datetime | None


class Usage(NamedTuple):
    """One admitted slot as the limits see it. ``pool`` is the purpose whose own quotas it counts
    against, "" for the shared ones; ``expires`` None means stored for ever."""

    owner: str
    pool_daily: str
    pool_total: str
    size: int
    issued: float
    expires: float | None


@dataclass
class _Window:
    """Slots in a sliding window: (issued, size) oldest first, and their byte sum (the rate
    limit counts each slot as size 1)."""

    entries: deque[tuple[float, int]] = field(default_factory=deque)
    total: int = 0

    def advance(self, start: float) -> None:
        """Forget what was issued at or before ``start``."""
        entries = self.entries
        while entries and entries[0][0] <= start:
            self.total -= entries.popleft()[1]

    def add(self, issued: float, size: int) -> None:
        self.entries.append((issued, size))
        self.total += size

    def discard(self, issued: float, size: int) -> None:
        try:
            self.entries.remove((issued, size))
        except ValueError:
            return
        self.total -= size


@dataclass
class _Stored:
    """Bytes stored and not yet expired: their sum and a heap of (expires, size). A slot taken
    back (:meth:`discard`) stays in the heap, counted in ``withdrawn``, until it reaches the top:
    taking it out at once would cost a scan of the heap (the global one holds every expiring
    file of the service) for every slot the backend failed to make."""

    expiring: list[tuple[float, int]] = field(default_factory=list)
    withdrawn: Counter[tuple[float, int]] = field(default_factory=Counter)
    total: int = 0
    advanced: float = -math.inf
    """Everything that expires at or before this moment has left the heap."""

    def advance(self, now: float) -> None:
        expiring, withdrawn = self.expiring, self.withdrawn
        while expiring and expiring[0][0] <= now:
            entry = heapq.heappop(expiring)
            count = withdrawn.pop(entry, 0)
            if count > 1:
                withdrawn[entry] = count - 1
            elif not count:
                self.total -= entry[1]
        self.advanced = max(self.advanced, now)

    def add(self, size: int, expires: float | None) -> None:
        self.total += size
        if expires is not None:
            heapq.heappush(self.expiring, (expires, size))

    def discard(self, size: int, expires: float | None) -> None:
        if expires is not None:
            if expires <= self.advanced:  # expired meanwhile: no longer counted
                return
            self.withdrawn[(expires, size)] += 1
        self.total -= size

    def room_at(self, needed: int) -> float | None:
        """When ``needed`` more bytes than allowed will have expired (None: never). Walks the
        heap in order from its top, so a refusal costs the files it must count, not a sort of
        all."""
        expiring, freed = self.expiring, 0
        skip = Counter(self.withdrawn) if self.withdrawn else None
        frontier = [(expiring[0], 0)] if expiring else []
        while frontier:
            entry, index = heapq.heappop(frontier)
            for child in (2 * index + 1, 2 * index + 2):
                if child < len(expiring):
                    heapq.heappush(frontier, (expiring[child], child))
            if skip and skip[entry]:
                skip[entry] -= 1
                continue
            freed += entry[1]
            if freed >= needed:
                return entry[0]
        return None


class Quotas:
    """The counters behind the limits; ``None`` turns a limit off. ``daily_quotas`` and
    ``total_quotas`` map each pool ("" for the shared one, else a purpose with its own quota)
    to its limit."""

    def __init__(
        self,
        *,
        daily_quotas: dict[str, int | None],
        total_quotas: dict[str, int | None],
        rate_limit: RateLimit | None = None,
        global_quota: int | None = None,
    ) -> None:
        self.daily_quotas = daily_quotas
        self.total_quotas = total_quotas
        self.rate_limit = rate_limit
        self.global_quota = global_quota
        self._daily: dict[tuple[str, str], _Window] = {}
        self._rate: dict[str, _Window] = {}
        self._stored: dict[tuple[str, str], _Stored] = {}
        self._global = _Stored()
        self._next_prune = 0.0
        checks = (
            (self._check_rate, rate_limit is not None),
            (self._check_daily, any(limit is not None for limit in daily_quotas.values())),
            (self._check_total, any(limit is not None for limit in total_quotas.values())),
            (self._check_global, global_quota is not None),
        )
        self._checks = [check for check, on in checks if on]

    @property
    def active(self) -> bool:
        """Whether any limit is on (if not, nothing needs counting)."""
        return bool(self._checks)

    def check(self, usage: Usage) -> OverLimit | None:
        """Whether ``usage`` fits every limit at its ``issued`` time; counts nothing."""
        refusals = [refusal for check in self._checks if (refusal := check(usage)) is not None]
        if not refusals:
            return None
        # The request fits once every limit lets it through: name the one that holds longest.
        if any(refusal.retry is None for refusal in refusals):
            return next(refusal for refusal in refusals if refusal.retry is None)
        return max(refusals, key=lambda refusal: refusal.retry)  # type: ignore[arg-type,return-value]

    def count(self, usage: Usage) -> None:
        """Count an admitted slot (also each slot of the ledger on start)."""
        if self.rate_limit is not None:
            self._rate.setdefault(usage.owner, _Window()).add(usage.issued, 1)
        if self.daily_quotas.get(usage.pool_daily) is not None:
            self._daily.setdefault((usage.owner, usage.pool_daily), _Window()).add(usage.issued, usage.size)
        if self.total_quotas.get(usage.pool_total) is not None:
            self._stored.setdefault((usage.owner, usage.pool_total), _Stored()).add(usage.size, usage.expires)
        if self.global_quota is not None:
            self._global.add(usage.size, usage.expires)
        if usage.issued >= self._next_prune:
            self.prune(usage.issued)

    def prune(self, now: float) -> None:
        """Forget what no limit counts any more, for every user (the checks do it only for the
        user who asks): runs from :meth:`count` once every :data:`PRUNE_SECONDS`."""
        self._next_prune = now + PRUNE_SECONDS
        if (limit := self.rate_limit) is not None:
            _prune_windows(self._rate, now - limit.seconds)
        _prune_windows(self._daily, now - DAY)
        for key, stored in list(self._stored.items()):
            stored.advance(now)
            if not stored.total:
                del self._stored[key]

    def uncount(self, usage: Usage) -> None:
        """Take back a counted slot that was not handed out after all (the backend failed)."""
        if (times := self._rate.get(usage.owner)) is not None:
            times.discard(usage.issued, 1)
        if (window := self._daily.get((usage.owner, usage.pool_daily))) is not None:
            window.discard(usage.issued, usage.size)
        if (stored := self._stored.get((usage.owner, usage.pool_total))) is not None:
            stored.discard(usage.size, usage.expires)
        if self.global_quota is not None:
            self._global.discard(usage.size, usage.expires)

    def _check_rate(self, usage: Usage) -> OverLimit | None:
        limit, now = self.rate_limit, usage.issued
        times = self._rate.get(usage.owner)
        if limit is None or times is None:
            return None
        times.advance(now - limit.seconds)
        if times.total < limit.slots:
            return None
        # The oldest of the last ``slots`` slots must leave the window first.
        retry = times.entries[times.total - limit.slots][0] + limit.seconds
        return OverLimit(
            "rate-limit",
            f"Rate limit reached: at most {limit.slots} files in {_duration(limit.seconds)}.",
            _whole(retry),
        )

    def _check_daily(self, usage: Usage) -> OverLimit | None:
        now = usage.issued
        quota = self.daily_quotas.get(usage.pool_daily)
        window = self._daily.get((usage.owner, usage.pool_daily))
        if quota is None:
            return None
        used = 0
        if window is not None:
            window.advance(now - DAY)
            used = window.total
        if used + usage.size <= quota:
            return None
        text = f"Daily quota reached: {used} of {quota} bytes used in the last 24 hours, {usage.size} more asked."
        if usage.size > quota or window is None:
            return OverLimit("daily-quota", text, None)
        excess = used + usage.size - quota
        freed = 0
        for issued, size in window.entries:
            freed += size
            if freed >= excess:
                return OverLimit("daily-quota", text, _whole(issued + DAY))
        return OverLimit("daily-quota", text, None)  # not reached: the window holds ``used`` bytes

    def _check_total(self, usage: Usage) -> OverLimit | None:
        now = usage.issued
        quota = self.total_quotas.get(usage.pool_total)
        if quota is None:
            return None
        stored = self._stored.get((usage.owner, usage.pool_total)) or _Stored()
        stored.advance(now)
        if stored.total + usage.size <= quota:
            return None
        text = f"Storage quota reached: {stored.total} of {quota} bytes stored, {usage.size} more asked."
        retry = stored.room_at(stored.total + usage.size - quota) if usage.size <= quota else None
        return OverLimit("total-quota", text, _whole(retry))

    def _check_global(self, usage: Usage) -> OverLimit | None:
        quota, size, now = self.global_quota, usage.size, usage.issued
        if quota is None:
            return None
        stored = self._global
        stored.advance(now)
        if stored.total + size <= quota:
            return None
        retry = stored.room_at(stored.total + size - quota) if size <= quota else None
        return OverLimit("global-quota", f"The service's storage is full ({quota} bytes).", _whole(retry))


def _prune_windows(windows: dict[_K, _Window], start: float) -> None:
    """Forget what was issued at or before ``start`` in every window, and the empty windows."""
    for key, window in list(windows.items()):
        window.advance(start)
        if not window.entries:
            del windows[key]


def _whole(moment: float | None) -> datetime | None:
    """The next whole second: a stamp carries whole seconds, and asking earlier would not fit."""
    return None if moment is None else datetime.fromtimestamp(math.ceil(moment), timezone.utc)


def _duration(seconds: int) -> str:
    for unit, size in (("hours", 3600), ("minutes", 60)):
        if seconds >= size and seconds % size == 0:
            count = seconds // size
            return f"{count} {unit[:-1] if count == 1 else unit}"
    return f"{seconds} seconds"
