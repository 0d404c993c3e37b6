"""Stanza-level tests of limits, purposes and ``ephemeral``: the exact XML of every refusal, on a
fixed clock (so each ``<retry stamp>`` is known to the second)."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from typing import Any

from test_plugin_stanzas import (
    ALICE,
    ALL_NS,
    BOB,
    NS,
    NS_PURPOSE,
    NS_V02,
    SERVICE,
    FailingBackend,
    UploadTest,
    disco_query,
    disco_xml,
    error_xml,
    request_xml,
    slot_xml,
    too_large_xml,
)

from slixmpp_http_upload.accounting import Accounting
from slixmpp_http_upload.config import parse_upload_settings
from slixmpp_http_upload.ledger import IN_MEMORY, Ledger

T0 = datetime(2026, 11, 17, 9, 46, 40, 250000, timezone.utc).timestamp()
"""A fraction of a second, so that stamps must round up."""
T0_STAMP = "2026-11-17T09:46:41Z"


def stamp(seconds_after_t0: int) -> str:
    """The stamp of T0 + n seconds, rounded up like the service does."""
    return datetime.fromtimestamp(math.ceil(T0 + seconds_after_t0), timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def retry(ns: str, seconds_after_t0: int) -> str:
    return f'<retry xmlns="{ns}" stamp="{stamp(seconds_after_t0)}"/>'


def purpose_request(
    iq_id: str, purpose: str, filename: str = "a.txt", size: str = "3", *, expire_before: str | None = None, ns: str = NS
) -> str:
    attribute = f' expire-before="{expire_before}"' if expire_before is not None else ""
    child = f'<{purpose} xmlns="{NS_PURPOSE}"{attribute}/>'
    if ns == NS:
        payload = f'<request xmlns="{ns}" filename="{filename}" size="{size}">{child}</request>'
    else:
        payload = f'<request xmlns="{ns}"><filename>{filename}</filename><size>{size}</size>{child}</request>'
    return f'<iq type="get" id="{iq_id}" from="{ALICE}" to="{SERVICE}">{payload}</iq>'


class LimitTest(UploadTest):
    """The plugin with ``options`` as its ``[http_upload]`` table and a clock the test moves."""

    def start_limited(self, **options: Any) -> None:
        self.now = T0
        settings = parse_upload_settings(options)
        self.ledger = Ledger(IN_MEMORY)
        self.addCleanup(self.ledger.close)
        self.start(settings=settings, accounting=Accounting(settings, self.ledger, clock=lambda: self.now))

    def ask(self, iq_id: str, filename: str, size: int, *, sender: str = ALICE, ns: str = NS) -> None:
        self.recv(request_xml(iq_id, filename, str(size), ns=ns, sender=sender))

    def granted(self, iq_id: str, filename: str, size: int, *, sender: str = ALICE) -> None:
        self.ask(iq_id, filename, size, sender=sender)
        self.expect(slot_xml(iq_id, filename, to=sender))


class TestRateLimit(LimitTest):
    def test_sixth_slot_in_five_minutes_waits_for_the_first_to_leave(self) -> None:
        self.start_limited(rate_limit={"slots": 5, "seconds": 300})
        for n in range(5):
            self.granted(str(n), f"f{n}.txt", 3)
            self.now += 10
        text = "Rate limit reached: at most 5 files in 5 minutes."
        for ns in ALL_NS:  # the <retry/> in the namespace asked
            self.ask("6", "f6.txt", 3, ns=ns)
            self.expect(error_xml("6", "wait", "resource-constraint", text, retry(ns, 300)))
        self.assertEqual(self.plugin.metrics.refusals, {"rate-limit": 3})
        self.assertEqual(len(self.ledger.records), 5, "a refused request records nothing")
        self.granted("7", "other.txt", 3, sender=BOB)  # per user
        self.now = T0 + 299.9
        self.ask("8", "f8.txt", 3)
        self.expect(error_xml("8", "wait", "resource-constraint", text, retry(NS, 300)))
        self.now = T0 + 300.75  # the stamp: the first slot has left the window
        self.granted("9", "f9.txt", 3)
        self.ask("10", "f10.txt", 3)  # now the second one must leave
        self.expect(error_xml("10", "wait", "resource-constraint", text, retry(NS, 310)))


class TestBackendFailure(LimitTest):
    def test_a_slot_the_backend_could_not_make_counts_for_nothing(self) -> None:
        self.start_limited(rate_limit={"slots": 1, "seconds": 60}, daily_quota=10, total_quota=10, global_quota=10)
        self.plugin.backend = FailingBackend()
        self.ask("1", "fail.txt", 10)
        self.expect(error_xml("1", "wait", "internal-server-error", "Could not make a slot now."))
        self.assertEqual(self.ledger.records, {})
        self.granted("2", "a.txt", 10)
        self.assertEqual([record.size for record in self.ledger.records.values()], [10])


class TestDailyQuota(LimitTest):
    def test_refused_until_enough_of_the_day_has_passed(self) -> None:
        self.start_limited(daily_quota=100)
        self.granted("1", "a.bin", 60)
        self.now += 3600
        self.granted("2", "b.bin", 30)
        self.ask("3", "c.bin", 20)
        text = "Daily quota reached: 90 of 100 bytes used in the last 24 hours, 20 more asked."
        self.expect(error_xml("3", "wait", "resource-constraint", text, retry(NS, 86400)))
        self.ask("4", "d.bin", 101)  # never fits: no stamp
        text = "Daily quota reached: 90 of 100 bytes used in the last 24 hours, 101 more asked."
        self.expect(error_xml("4", "wait", "resource-constraint", text))
        self.granted("5", "e.bin", 10)  # what still fits does
        self.now = T0 + 86400.75
        self.granted("6", "c.bin", 20)
        self.assertEqual(self.plugin.metrics.refusals, {"daily-quota": 2})


class TestTotalQuota(LimitTest):
    def test_refused_until_enough_files_expire(self) -> None:
        self.start_limited(total_quota=100, expire_after=3600)
        self.granted("1", "a.bin", 60)
        self.now += 100
        self.granted("2", "b.bin", 30)
        self.ask("3", "c.bin", 50)  # 40 bytes must go: the first file, at T0 + 3600
        text = "Storage quota reached: 90 of 100 bytes stored, 50 more asked."
        self.expect(error_xml("3", "wait", "resource-constraint", text, retry(NS, 3600)))
        self.ask("4", "d.bin", 80)  # both must go
        text = "Storage quota reached: 90 of 100 bytes stored, 80 more asked."
        self.expect(error_xml("4", "wait", "resource-constraint", text, retry(NS, 3700)))
        self.now = T0 + 3600
        self.granted("5", "c.bin", 50)
        self.assertEqual(self.plugin.metrics.refusals, {"total-quota": 2})

    def test_files_kept_for_ever_never_free_room(self) -> None:
        self.start_limited(total_quota=100)
        self.granted("1", "a.bin", 90)
        self.ask("2", "b.bin", 20)
        text = "Storage quota reached: 90 of 100 bytes stored, 20 more asked."
        self.expect(error_xml("2", "wait", "resource-constraint", text))


class TestGlobalQuota(LimitTest):
    def test_counts_everybody(self) -> None:
        self.start_limited(global_quota=100, expire_after=60)
        self.granted("1", "a.bin", 70)
        self.now += 5
        self.ask("2", "b.bin", 40, sender=BOB)
        text = "The service's storage is full (100 bytes)."
        self.expect(error_xml("2", "wait", "resource-constraint", text, retry(NS, 60), to=BOB))
        self.assertEqual(self.plugin.metrics.refusals, {"global-quota": 1})

    def test_the_limit_that_holds_longest_is_named(self) -> None:
        self.start_limited(global_quota=100, daily_quota=1000, expire_after=60)
        self.granted("1", "a.bin", 70)
        self.granted("2", "b.bin", 20)
        self.ask("3", "c.bin", 950)  # daily at T0 + 1 day, global never (more than the quota)
        self.expect(error_xml("3", "wait", "resource-constraint", "The service's storage is full (100 bytes)."))
        self.ask("4", "c.bin", 40)  # global: at T0 + 60; daily fits
        self.expect(error_xml("4", "wait", "resource-constraint", "The service's storage is full (100 bytes).", retry(NS, 60)))


class TestPurposes(LimitTest):
    OPTIONS: dict[str, Any] = {
        "purposes": ["message", "profile", "ephemeral"],
        "max_file_size": 1000,
        "daily_quota": 100,
        "purpose": {"profile": {"max_file_size": 50, "daily_quota": 60}},
    }

    def test_advertised_with_the_message_limit_in_the_form(self) -> None:
        self.start_limited(**self.OPTIONS)
        self.recv(disco_query("d1"))
        self.expect(disco_xml("d1", max_size=1000, purposes=["message", "profile", "ephemeral"]))

    def test_served_purpose_has_its_own_size_and_quota(self) -> None:
        self.start_limited(**self.OPTIONS)
        self.recv(purpose_request("1", "profile", "avatar.png", "51"))
        self.expect(error_xml("1", "modify", "not-acceptable", "Declared file size exceeds the host's maximum file size.", too_large_xml(NS, 50)))
        self.recv(purpose_request("2", "profile", "avatar.png", "50"))
        self.expect(slot_xml("2", "avatar.png"))
        self.recv(purpose_request("3", "profile", "avatar2.png", "20"))
        text = "Daily quota reached: 50 of 60 bytes used in the last 24 hours, 20 more asked."
        self.expect(error_xml("3", "wait", "resource-constraint", text, retry(NS, 86400)))
        self.granted("4", "photo.jpg", 100)  # messages have their own 100 bytes
        self.assertEqual([(r.filename, r.purpose) for r in self.backend.requests], [("avatar.png", "profile"), ("photo.jpg", "message")])
        self.assertEqual(sorted(r.purpose for r in self.ledger.records.values()), ["message", "profile"])

    def test_purpose_not_served(self) -> None:
        self.start_limited(**self.OPTIONS)
        self.recv(purpose_request("1", "permanent"))
        text = "This service does not take files for the purpose 'permanent'."
        self.expect(error_xml("1", "cancel", "feature-not-implemented", text))
        self.assertEqual(self.plugin.metrics.refusals, {"purpose": 1})

    def test_no_purpose_is_message(self) -> None:
        self.start_limited(purposes=["profile"])
        self.recv(request_xml("1", "a.txt", "3"))
        text = "This service does not take files for the purpose 'message'."
        self.expect(error_xml("1", "cancel", "feature-not-implemented", text))
        self.recv(purpose_request("2", "message"))
        self.expect(error_xml("2", "cancel", "feature-not-implemented", text))

    def test_purposes_only_in_the_current_dialect(self) -> None:
        self.start_limited(purposes=["message"])
        self.recv(purpose_request("1", "permanent", ns=NS_V02))  # ignored there: a message
        self.expect(slot_xml("1", "a.txt", ns=NS_V02))
        self.assertEqual(self.backend.requests[0].purpose, "message")


class TestEphemeral(LimitTest):
    def test_expire_before_required_valid_and_future(self) -> None:
        self.start_limited(purposes=["message", "ephemeral"], expire_after=86400)
        cases = {
            None: "An ephemeral upload needs expire-before.",
            "tomorrow": "expire-before is not an XEP-0082 date and time (such as 2026-01-01T12:00:00Z).",
            "2026-11-17T09:46:40": "expire-before is not an XEP-0082 date and time (such as 2026-01-01T12:00:00Z).",
            "2026-13-17T09:46:40Z": "expire-before is not a valid date and time.",
            "2026-11-17T09:46:40Z": "expire-before is already past.",
        }
        for n, (value, text) in enumerate(cases.items()):
            self.recv(purpose_request(str(n), "ephemeral", expire_before=value))
            self.expect(error_xml(str(n), "modify", "bad-request", text))
        self.recv(purpose_request("ok", "ephemeral", expire_before="2026-11-17T11:46:40+01:00"))
        self.expect(slot_xml("ok", "a.txt"))
        self.assertEqual(self.backend.requests[0].expires, T0 - 0.25 + 3600)
        self.recv(purpose_request("far", "ephemeral", expire_before="2027-11-17T09:46:40Z"))
        self.expect(slot_xml("far", "a.txt"))
        self.assertEqual(self.backend.requests[1].expires, T0 + 86400, "expire_after still holds")
        self.assertEqual(self.plugin.metrics.refusals, {"bad-request": len(cases)})

    def test_stamp_of_t0(self) -> None:
        self.assertEqual(stamp(0), T0_STAMP)
