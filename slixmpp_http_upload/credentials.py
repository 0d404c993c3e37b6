"""Where the S3 backend's keys come from, kept fresh while ``serve`` runs.

- :class:`StaticCredentials`: an access key from the configuration file or the environment;
- :class:`AwsChainCredentials`: when neither gives one, the standard AWS chain (environment,
  shared config and credentials files with their profile, container and instance roles, web
  identity) through botocore's credential resolver — the ``aws`` extra. Temporary credentials
  are refreshed before they expire. botocore only supplies the keys: signing stays ours
  (:mod:`~slixmpp_http_upload.sigv4`).

A provider that cannot give keys raises :class:`CredentialsUnavailable`: the plugin refuses the
slot with ``wait/internal-server-error`` and logs the one-line reason.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

from .sigv4 import Credentials
from .slot import SlotsUnavailable


RETRY_SECONDS = 30.0
"""The AWS chain is asked for new keys at most this often (see :class:`AwsChainCredentials`)."""


class CredentialsUnavailable(SlotsUnavailable):
    """No credentials now; ``str()`` says why in one line, without any secret."""


class CredentialsProvider(Protocol):
    async def current(self) -> Credentials:
        """The keys to sign with now (the same object while they do not change)."""

    def resolve(self) -> Credentials:
        """The same, blocking the caller while it fetches (for the one-shot commands)."""

    def ready(self) -> Credentials | None:
        """The keys to sign with now if that needs no fetch, else None (then await :meth:`current`)."""


class StaticCredentials:
    """Keys that never change."""

    def __init__(self, credentials: Credentials) -> None:
        self.credentials = credentials

    async def current(self) -> Credentials:
        return self.credentials

    def resolve(self) -> Credentials:
        return self.credentials

    def ready(self) -> Credentials:
        return self.credentials


def aws_chain_available() -> bool:
    """Whether botocore (the ``aws`` extra) is installed."""
    try:
        import botocore.session  # type: ignore[import-untyped]  # noqa: F401
    except ImportError:
        return False
    return True


class AwsChainCredentials:
    """The standard AWS credential chain, found on first use and refreshed by botocore ahead of
    expiry (15 minutes before; within the last 10 a failed refresh is a failure). Fetching runs
    in a thread so that the stream goes on meanwhile; in between, taking the keys costs a
    comparison of times. After a failed fetch the chain is asked again :data:`RETRY_SECONDS`
    later at the earliest: botocore would otherwise try its source for every slot while that
    source is down (each slot waiting for the one before). Meanwhile the keys it has are used as
    long as they are valid; without valid keys, slots are refused with the last failure."""

    def __init__(self) -> None:
        self._source: Any = None  # botocore's Credentials or RefreshableCredentials
        self._current: Credentials | None = None
        self._lock = asyncio.Lock()
        self._next_try = 0.0  # time.monotonic()
        self._failure: CredentialsUnavailable | None = None

    async def current(self) -> Credentials:
        if (credentials := self.ready()) is not None:
            return credentials
        async with self._lock:
            if self._current is not None and not self._refresh_due():
                return self._current
            if self._failure is not None and time.monotonic() < self._next_try:
                raise self._failure
            try:
                fresh = await asyncio.to_thread(self.resolve)
            except CredentialsUnavailable as failure:
                self._failure, self._next_try = failure, time.monotonic() + RETRY_SECONDS
                raise
            self._failure = None
            if self._botocore_wants():  # it could not replace them and goes on with the old ones
                self._next_try = time.monotonic() + RETRY_SECONDS
            return fresh

    def ready(self) -> Credentials | None:
        return self._current if self._current is not None and not self._refresh_due() else None

    def _refresh_due(self) -> bool:
        """Whether to ask botocore for the keys now: it wants to replace them, and the last try
        is long enough ago or they have expired."""
        return self._botocore_wants() and (time.monotonic() >= self._next_try or self._botocore_wants(0))

    def _botocore_wants(self, within: int | None = None) -> bool:
        """Whether botocore would replace the keys (that expire ``within`` seconds; by default
        its own 15 minutes)."""
        refresh_needed = getattr(self._source, "refresh_needed", None)  # temporary credentials only
        return bool(refresh_needed and refresh_needed(within))

    def resolve(self) -> Credentials:
        import botocore.session  # type: ignore[import-untyped]

        try:
            if self._source is None:
                self._source = botocore.session.Session().get_credentials()
                if self._source is None:
                    raise CredentialsUnavailable(
                        "no AWS credentials: none in the configuration file, the environment, the shared "
                        "files, or from a container, instance or web-identity role"
                    )
            frozen = self._source.get_frozen_credentials()
        except CredentialsUnavailable:
            raise
        except Exception as error:  # botocore's retrieval, parsing and connection errors
            raise CredentialsUnavailable(f"the AWS credential chain failed: {error}") from None
        fresh = Credentials(frozen.access_key, frozen.secret_key, frozen.token)
        if fresh != self._current:
            self._current = fresh
        return self._current  # type: ignore[return-value]
