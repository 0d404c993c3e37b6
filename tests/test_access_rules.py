"""``AccessRules``: who may ask for a slot, and the remembered answers per sender address."""

from __future__ import annotations

import pytest
from slixmpp import JID

from slixmpp_http_upload import access
from slixmpp_http_upload.access import AccessRules


@pytest.fixture
def rules() -> AccessRules:
    return AccessRules(
        "example.org",
        allow=frozenset({"friend@other.example", "partner.example"}),
        deny=frozenset({"troll@example.org", "spam.example"}),
    )


@pytest.mark.parametrize(
    ("address", "allowed"),
    [
        ("alice@example.org/phone", True),
        ("EXAMPLE.ORG", True),
        ("troll@example.org/x", False),  # deny wins over the served domain
        ("friend@other.example/pc", True),
        ("stranger@other.example/pc", False),
        ("anyone@partner.example", True),
        ("x@spam.example", False),
        ("", False),  # no sender at all
    ],
)
def test_requester_is_the_jid_when_permitted(rules: AccessRules, address: str, allowed: bool) -> None:
    assert rules.permits(JID(address)) is allowed
    for _ in range(2):  # asked, then remembered: the same answer
        found = rules.requester(address)
        assert (found == JID(address)) if allowed else found is None


def test_remembered_answers_are_bounded(rules: AccessRules) -> None:
    for n in range(access.KNOWN_REQUESTERS + 35):
        assert rules.requester(f"user{n}@example.org/r") == JID(f"user{n}@example.org/r")
    assert rules.requester.cache_info().currsize == access.KNOWN_REQUESTERS  # type: ignore[attr-defined]
    assert rules.requester("troll@example.org/r") is None
    assert rules.requester("troll@example.org/r") is None
    assert rules.requester.cache_info().hits >= 1  # type: ignore[attr-defined]
