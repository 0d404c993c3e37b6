"""Domain names in the one form every comparison uses.

slixmpp keeps a JID's domain as Unicode (``münchen.de``: lower-cased and nameprep'd) when it
was written so, but leaves punycode (``xn--mnchen-3ya.de``) as it came. Configuration may use
either form and so may a remote server, so both sides of every comparison (the served domain,
``allow``/``deny``, a requester's domain, ``urls DOMAIN``, the users ``purge`` and ``usage``
look for) go through :func:`normalise_domain`:
slixmpp's form with punycode labels decoded.
"""

from __future__ import annotations

import re

from slixmpp import JID
from slixmpp.jid import InvalidJID

_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
PUNYCODE_PREFIX = "xn--"


def normalise_domain(domain: str) -> str:
    """``domain`` (already accepted by slixmpp) in the compared form; cheap unless it holds punycode."""
    if PUNYCODE_PREFIX not in domain.lower():
        return domain
    try:
        return JID(domain.encode("idna").decode("idna")).domain
    except (UnicodeError, InvalidJID):
        return domain  # not valid IDNA: it can only equal itself


def normalise_bare(jid: str) -> str:
    """A bare JID (``node@domain``, as a string) with its domain in the compared form."""
    node, at, domain = jid.rpartition("@")
    return f"{node}{at}{normalise_domain(domain)}"


def same_jid(one: JID, other: JID) -> bool:
    """Whether two JIDs name the same entity, their domains compared in one form."""
    return one == other or (
        one.node == other.node
        and one.resource == other.resource
        and normalise_domain(one.domain) == normalise_domain(other.domain)
    )


def domain_name(value: str) -> str:
    """A domain name as slixmpp accepts it and as DNS can carry it (labels of letters, digits and
    ``-`` once converted to ASCII), in the compared form; ValueError otherwise."""
    wrong = ValueError("must be a domain name (labels of letters, digits and '-', joined by '.'; Unicode or punycode)")
    try:
        jid = JID(value)
        ascii_name = jid.domain.encode("idna").decode("ascii")
    except (InvalidJID, UnicodeError):
        raise wrong from None
    if jid.bare != jid.domain or jid.resource or value.endswith("."):
        raise wrong
    if not all(_LABEL.fullmatch(label) for label in ascii_name.split(".")):
        raise wrong
    return normalise_domain(jid.domain)


def service_jid_problem(jid: str) -> str | None:
    """Why slixmpp would refuse ``jid`` as a component's JID, or None."""
    try:
        JID(jid)
    except InvalidJID as error:
        return f"slixmpp refuses it ({error}; a domain has at most 253 characters)"
    return None
