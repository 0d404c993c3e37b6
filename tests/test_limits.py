"""The limits' counters on their own: what they forget, and when."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from slixmpp_http_upload.limits import DAY, PRUNE_SECONDS, Quotas, RateLimit, Usage, _Stored

T0 = 1_800_000_000.0


def usage(owner: str, issued: float, expires: float | None = None, size: int = 10) -> Usage:
    return Usage(owner, "", "", size, issued, expires)


def test_users_who_never_come_back_are_forgotten() -> None:
    quotas = Quotas(daily_quotas={"": 1000}, total_quotas={"": 1000}, rate_limit=RateLimit(5, 60), global_quota=10_000)
    quotas.count(usage("alice@localhost", T0, expires=T0 + 100))
    quotas.count(usage("bob@localhost", T0 + 1))  # kept for ever: stays counted
    assert quotas.check(usage("alice@localhost", T0 + 2, size=991)) is not None  # 10 + 991 > 1000 a day
    quotas.count(usage("carol@localhost", T0 + PRUNE_SECONDS))  # an hour on: the first prune
    assert set(quotas._rate) == {"carol@localhost"}
    assert set(quotas._daily) == {("alice@localhost", ""), ("bob@localhost", ""), ("carol@localhost", "")}
    assert set(quotas._stored) == {("bob@localhost", ""), ("carol@localhost", "")}
    quotas.count(usage("carol@localhost", T0 + DAY + PRUNE_SECONDS))
    assert set(quotas._daily) == {("carol@localhost", "")}
    assert quotas.check(usage("alice@localhost", T0 + DAY + PRUNE_SECONDS, size=990)) is None


def test_the_rate_window_names_the_slot_that_must_leave_it_and_forgets_a_slot_taken_back() -> None:
    quotas = Quotas(daily_quotas={"": None}, total_quotas={"": None}, rate_limit=RateLimit(2, 60))
    for issued in (T0, T0 + 10, T0 + 15):  # three, as after a restart with a lower limit
        quotas.count(usage("alice@localhost", issued))
    refusal = quotas.check(usage("alice@localhost", T0 + 20))
    assert refusal is not None and refusal.retry is not None
    assert refusal.retry.timestamp() == T0 + 10 + 60  # the oldest of the last two must leave
    assert quotas.check(usage("alice@localhost", T0 + 70)) is None  # at or before start: left
    quotas.uncount(usage("alice@localhost", T0 + 10))
    quotas.uncount(usage("alice@localhost", T0 + 15))
    assert quotas.check(usage("alice@localhost", T0 + 20)) is None  # one slot in the window now


@given(
    st.lists(st.tuples(st.integers(0, 50), st.integers(1, 20)), max_size=40),
    st.lists(st.integers(1, 20), max_size=5),
    st.integers(1, 400),
)
def test_room_comes_when_enough_of_the_soonest_files_expired(
    files: list[tuple[int, int]], kept: list[int], needed: int
) -> None:
    """``retry`` of a storage quota: the moment the files expiring first add up to what is
    missing, whatever order they were stored in (files kept for ever never free room)."""
    stored = _Stored()
    for expires, size in files:
        stored.add(size, T0 + expires)
    for size in kept:
        stored.add(size, None)
    freed, wanted = 0, None
    for expires, size in sorted(files):
        freed += size
        if freed >= needed:
            wanted = T0 + expires
            break
    assert stored.room_at(needed) == wanted


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("add"), st.integers(1, 20), st.one_of(st.none(), st.integers(1, 60))),
            st.tuples(st.just("discard"), st.integers(0, 6), st.none()),
            st.tuples(st.just("advance"), st.integers(0, 15), st.none()),
            st.tuples(st.just("room"), st.integers(1, 120), st.none()),
        ),
        max_size=60,
    )
)
@example([("add", 10, 5), ("discard", 0, None), ("room", 5, None)])  # taken back: frees nothing
@example([("add", 10, 5), ("advance", 5, None), ("discard", 0, None), ("advance", 1, None)])  # expired, then taken back
@example([("add", 10, 5), ("add", 10, 5), ("discard", 0, None), ("advance", 5, None)])  # taken back, then expired
@example([("add", 10, 5), ("add", 10, 5), ("discard", 0, None), ("discard", 1, None), ("advance", 5, None)])
def test_stored_bytes_follow_adds_discards_and_time(operations: list[tuple[str, int, int | None]]) -> None:
    """The storage counters against the plain sum of what was added, not taken back and not
    expired: their total, and when room comes."""
    stored, now = _Stored(), T0
    model: list[list[object]] = []  # [size, expires, taken back]
    for kind, number, offset in operations:
        if kind == "add":
            expires = None if offset is None else now + offset
            stored.add(number, expires)
            model.append([number, expires, False])
        elif kind == "discard" and number < len(model) and not model[number][2]:
            size, expires, _ = model[number]
            stored.discard(size, expires)  # type: ignore[arg-type]
            model[number][2] = True
        elif kind == "advance":
            now += number
            stored.advance(now)
            counted = [(e, s) for s, e, back in model if not back and (e is None or e > now)]
            assert stored.total == sum(s for _, s in counted)  # type: ignore[misc]
        elif kind == "room":
            stored.advance(now)
            expiring = sorted((e, s) for s, e, back in model if not back and e is not None and e > now)  # type: ignore[operator]
            freed, wanted = 0, None
            for expires, size in expiring:
                freed += size  # type: ignore[operator]
                if freed >= number:
                    wanted = expires
                    break
            assert stored.room_at(number) == wanted
