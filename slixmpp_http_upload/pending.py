"""The slot requests handed to the dispatcher and not answered yet, so that a shutdown answers
each of them: those that finish within the grace period with their slot, the rest with a
refusal — never silence (a client would wait for its IQ timeout)."""

from __future__ import annotations

import asyncio
from typing import Any

from .dispatch import Dispatcher, Job, OnFailure


class PendingRequests:
    """Submits jobs to a dispatcher and keeps the IQ of each until its job ends."""

    def __init__(self) -> None:
        self.closing = False
        """Set by :meth:`drain`: new requests are refused from then on."""
        self._iqs: dict[object, Any] = {}
        self._empty: asyncio.Event | None = None

    def submit(self, dispatcher: Dispatcher, key: str, iq: Any, job: Job, on_failure: OnFailure | None = None) -> bool:
        """``dispatcher.submit(key, job, on_failure)``, with ``iq`` pending until the job ends;
        False when full."""
        token = object()
        self._iqs[token] = iq

        async def tracked() -> None:
            try:
                await job()
            finally:
                self._done(token)

        if dispatcher.submit(key, tracked, on_failure):
            return True
        self._done(token)
        return False

    def _done(self, token: object) -> None:
        self._iqs.pop(token, None)
        if not self._iqs and self._empty is not None:
            self._empty.set()

    async def drain(self, timeout: float) -> list[Any]:
        """Stop taking requests, wait up to ``timeout`` seconds for the pending ones to be
        answered, and return the IQs of those still pending (forgotten from now on)."""
        self.closing = True
        self._empty = asyncio.Event()
        if self._iqs:
            try:
                await asyncio.wait_for(self._empty.wait(), timeout)
            except TimeoutError:
                pass
        return self.forget()

    def forget(self) -> list[Any]:
        """Forget every pending request (the stream that would carry the answers is gone);
        return their IQs."""
        iqs = list(self._iqs.values())
        self._iqs.clear()
        return iqs
