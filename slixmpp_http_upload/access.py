"""Who may ask for a slot.

By default only the served domain's own users; ``allow`` adds bare JIDs or whole domains,
``deny`` removes them (deny wins). An embedder's async ``policy`` hook is asked last and may
refuse: for good with a reason (``auth/forbidden``), or for now with a :class:`TryLater`
(``wait/resource-constraint``, with XEP-0363's ``<retry stamp>`` when it says when).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from slixmpp import JID

from .domains import normalise_domain
from .slot import SlotRequest

KNOWN_REQUESTERS = 4096


@dataclass(frozen=True)
class TryLater:
    """A temporary refusal (a quota, a rate): ``reason`` for the user, ``retry`` (timezone-aware)
    when to ask again, if known."""

    reason: str
    retry: datetime | None = None


Policy = Callable[[JID, SlotRequest], Awaitable[str | TryLater | None]]
"""``await policy(requester, request)``: None allows, a string refuses with that reason, a
:class:`TryLater` refuses for now."""


class AccessRules:
    """The static part of the decision, made before the request is even parsed."""

    def __init__(self, served_domain: str, allow: frozenset[str], deny: frozenset[str]) -> None:
        """``allow`` and ``deny`` as the configuration checked them; every domain compares in
        :func:`~slixmpp_http_upload.domains.normalise_domain`'s form."""
        self.served_domain = normalise_domain(served_domain)
        self.allow = allow
        self.deny = deny
        self.requester: Callable[[str], JID | None] = functools.lru_cache(maxsize=KNOWN_REQUESTERS)(self._requester)
        """The JID of the sender ``address`` (as written in the request) if :meth:`permits` it,
        else None; remembered for the last :data:`KNOWN_REQUESTERS` addresses, as the same
        users ask again and again."""

    def _requester(self, address: str) -> JID | None:
        jid = JID(address)
        return jid if self.permits(jid) else None

    def permits(self, requester: JID) -> bool:
        domain = normalise_domain(requester.domain)
        bare = f"{requester.node}@{domain}" if requester.node else domain
        if bare in self.deny or domain in self.deny:
            return False
        return domain == self.served_domain or bare in self.allow or domain in self.allow
