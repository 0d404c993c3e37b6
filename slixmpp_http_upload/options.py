"""Declaring and checking configuration options.

Every table of the configuration (and the plugin's config dict) is described by a tuple of
:class:`Option`: its name, its default and a check that turns the raw value into the typed one.
:func:`parse_table` applies such a declaration and reports the first problem as a
:class:`ConfigError` naming the key path — never the value of a secret.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from . import domains


class ConfigError(ValueError):
    """A configuration value is wrong; ``str()`` is one line: ``key.path: problem``."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}" if path else problem)
        self.path = path
        self.problem = problem


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()
"""Default of an option that has none."""

Check = Callable[[Any], Any]
"""Turns a raw value into the option's value, or raises ``ValueError("what is wrong")``."""


CREDENTIAL_WORDS = frozenset({"secret", "password", "passphrase", "credentials", "key", "token"})
"""An option whose name ends in one of these words (``api_key``, ``session_token``,
``secret``; not ``token_bytes``) may hold a credential, declared secret or not."""


@dataclass(frozen=True)
class Option:
    """One configuration key: name, default, check; ``secret`` keeps its value out of messages
    (so does a name ending in one of :data:`CREDENTIAL_WORDS`: a credential may land in a neighbour)."""

    name: str
    default: Any
    check: Check
    secret: bool = False

    @property
    def hidden(self) -> bool:
        """Whether messages show at most the value's type, never the value."""
        return self.secret or self.name.lower().rpartition("_")[2] in CREDENTIAL_WORDS


def parse_table(raw: Mapping[str, Any], options: Sequence[Option], path: str = "") -> dict[str, Any]:
    """Check ``raw`` against ``options``; return every option's value, defaults filled in."""
    if not isinstance(raw, Mapping):
        raise ConfigError(path, f"must be a table, got {type(raw).__name__}")
    known = {option.name: option for option in options}
    for key in raw:
        if key not in known:
            raise ConfigError(_join(path, str(key)), f"unknown option (known: {', '.join(known)})")
    values: dict[str, Any] = {}
    for option in options:
        values[option.name] = _parse_value(raw, option, _join(path, option.name))
    return values


def _parse_value(raw: Mapping[str, Any], option: Option, path: str) -> Any:
    if option.name not in raw:
        if option.default is REQUIRED:
            raise ConfigError(path, "is required")
        return option.default
    value = raw[option.name]
    try:
        return option.check(value)
    except ConfigError as error:  # a nested table reports its own, deeper path
        raise ConfigError(_join(path, error.path), error.problem) from None
    except ValueError as error:
        shown = f" (got a {type(value).__name__}, not shown)" if option.hidden else f", got {value!r}"
        raise ConfigError(path, f"{error}{shown}") from None


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path and key else path or key


# --- checks ---------------------------------------------------------------------------------


def integer(low: int, high: int | None = None) -> Check:
    """An int (not a bool) in ``[low, high]``."""
    wanted = f"an integer from {low} to {high}" if high is not None else f"an integer ≥ {low}"

    def check(value: Any) -> int:
        is_int = isinstance(value, int) and not isinstance(value, bool)
        if not is_int or value < low or (high is not None and value > high):
            raise ValueError(f"must be {wanted}")
        return value

    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError("must be true or false")
    return value


def text(value: Any) -> str:
    """A non-empty string without control characters."""
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in value):
        raise ValueError("must not contain control characters")
    return value


def one_of(*choices: str) -> Check:
    def check(value: Any) -> str:
        if value not in choices:
            raise ValueError(f"must be one of {', '.join(repr(c) for c in choices)}")
        return value

    return check


def domain_name(value: Any) -> str:
    """A domain name, Unicode or punycode, in the compared form (see :mod:`.domains`)."""
    if not isinstance(value, str):
        raise ValueError("must be a domain name")
    return domains.domain_name(value)


def domain_list(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError("must be a list of domain names")
    names = tuple(domain_name(item) for item in value)
    if len(set(names)) != len(names):
        raise ValueError("must not list a domain twice")
    return names
