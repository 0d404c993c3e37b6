"""Upload purposes (XEP-0363 1.2, ``urn:xmpp:http:upload:purpose:0``): which are served, the
rules of each, and the purpose a request asks for.

``purposes`` lists the served ones (each advertised as the disco feature
``urn:xmpp:http:upload:purpose:0#<name>``); a table ``[http_upload.purpose.<name>]`` may override
``max_file_size``, ``expire_after``, ``daily_quota`` and ``total_quota`` for one of them. A purpose
that sets a quota of its own counts against it alone; the others share the top-level one.
A request without a purpose is ``message``; ``ephemeral`` must say ``expire-before``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .options import ConfigError, Option, parse_table
from .slot import BadRequest

NS_PURPOSE = "urn:xmpp:http:upload:purpose:0"
KNOWN_PURPOSES = ("message", "profile", "ephemeral", "permanent")
DEFAULT_PURPOSE = "message"
OVERRIDES = ("max_file_size", "expire_after", "daily_quota", "total_quota")
"""The ``[http_upload]`` options a purpose table may set for its purpose."""

_DATETIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")
"""XEP-0082 DateTime: date, time, optional fraction, a time zone (Z or an offset)."""


class PurposeNotServed(Exception):
    """The request's purpose is not among those served; ``str()`` says so to the user."""


@dataclass(frozen=True)
class PurposeRules:
    """The rules of one served purpose, overrides applied. ``daily_pool`` and ``total_pool``
    name the quota it counts against: the purpose's own, or "" for the shared one."""

    name: str
    max_file_size: int | None
    expire_after: int | None
    daily_quota: int | None
    total_quota: int | None
    daily_pool: str = ""
    total_pool: str = ""

    @property
    def feature(self) -> str:
        return f"{NS_PURPOSE}#{self.name}"


def purpose_list(value: Any) -> tuple[str, ...]:
    """The ``purposes`` option: a list of known purposes, each once."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError(f"must be a list of purposes ({', '.join(KNOWN_PURPOSES)})")
    for item in value:
        if item not in KNOWN_PURPOSES:
            raise ValueError(f"{item!r} is not a purpose (known: {', '.join(KNOWN_PURPOSES)})")
    if len(set(value)) != len(value):
        raise ValueError("must not list a purpose twice")
    return tuple(value)


def purpose_rules(
    served: tuple[str, ...], tables: Mapping[str, Any], defaults: Mapping[str, Any], options: tuple[Option, ...], path: str
) -> dict[str, PurposeRules]:
    """The rules of each served purpose: ``defaults`` (the top-level values) overridden by its
    table in ``tables`` (the raw ``purpose`` table), checked with the top-level ``options``."""
    for name in tables:
        if name not in served:
            raise ConfigError(f"{path}.{name}", f"is not a served purpose (purposes: {', '.join(served) or 'none'})")
    checks = tuple(option for option in options if option.name in OVERRIDES)
    rules = {}
    for name in served:
        raw = tables.get(name, {})
        parsed = parse_table(raw, checks, f"{path}.{name}")
        values = {key: parsed[key] if key in raw else defaults[key] for key in OVERRIDES}
        rules[name] = PurposeRules(
            name,
            **values,
            daily_pool=name if "daily_quota" in raw else "",
            total_pool=name if "total_quota" in raw else "",
        )
    return rules


def choose(
    purposes: Mapping[str, PurposeRules], purpose: str | None, expire_before: str | None, now: float
) -> tuple[PurposeRules, float | None]:
    """The rules of the purpose a request asks for, and when its file expires (epoch seconds,
    None for never). Raises :class:`PurposeNotServed` or :class:`BadRequest`."""
    name = purpose or DEFAULT_PURPOSE
    rules = purposes.get(name)
    if rules is None:
        raise PurposeNotServed(f"This service does not take files for the purpose {name!r}.")
    expires = None if rules.expire_after is None else now + rules.expire_after
    if name == "ephemeral":
        before = _expire_before(expire_before, now)
        expires = before if expires is None else min(expires, before)
    return rules, expires


def _expire_before(value: str | None, now: float) -> float:
    if not value:
        raise BadRequest("An ephemeral upload needs expire-before.")
    if not _DATETIME.fullmatch(value):
        raise BadRequest("expire-before is not an XEP-0082 date and time (such as 2026-01-01T12:00:00Z).")
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadRequest("expire-before is not a valid date and time.") from None
    if moment <= now:
        raise BadRequest("expire-before is already past.")
    return moment
