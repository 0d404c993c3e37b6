"""The S3 backend: a slot is a SigV4-presigned PUT URL and the object's plain GET URL.

Object URL = bucket_url (scheme, host, non-default port, path) + ``/<token>/<filename>``,
the filename one path segment (see :func:`object_name`) encoded exactly once. The signed headers are ``host``,
``content-length`` (the declared size) and ``content-type`` when the client gave one, so S3
itself refuses another type or a longer body. ``add_acl`` travels in the signed query string
(``x-amz-acl=public-read``): the client sends no extra header.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .baseurl import BaseUrl, parse_base_url
from .credentials import AwsChainCredentials, CredentialsProvider, StaticCredentials, aws_chain_available
from .options import REQUIRED, Check, ConfigError, Option, boolean, integer, one_of, parse_table, text
from .sigv4 import MAX_EXPIRES, Credentials, Presigner, canonical_headers, uri_encode
from .slot import Slot, SlotRequest, object_name
from .tokens import token_hex

if TYPE_CHECKING:
    from .config import UploadSettings

_REGION = re.compile(r"^[a-z0-9][a-z0-9-]*$")
_KEY_ID = re.compile(r"^[!-.0-~]+$")
"""Printable ASCII without space or ``/`` (which separates the credential scope)."""
ACL_PARAMS = (("x-amz-acl", "public-read"),)
DELETE_CONCURRENCY = 8
DELETE_TIMEOUT = 30.0

log = logging.getLogger(__name__)


def parse_bucket_url(value: Any) -> BaseUrl:
    """``bucket_url``: a base URL; user info is refused with a hint where credentials go."""
    if isinstance(value, str) and "@" in value:
        raise ConfigError("", "must not contain user info (give credentials as access_key_id/secret_access_key)")
    return parse_base_url(value)


def _region(value: Any) -> str:
    if not isinstance(value, str) or not _REGION.match(value):
        raise ValueError("must be an AWS region name such as 'eu-west-1' (letters, digits, '-')")
    return value


def _key_id(value: Any) -> str:
    if not isinstance(value, str) or not _KEY_ID.match(value):
        raise ValueError("must be an access key id (printable ASCII, no space or '/')")
    return value


def _from_environment(path: str, names: tuple[str, ...], check: Check = text) -> str | None:
    """The first of the environment variables ``names`` that is set, checked (a ConfigError on
    ``path`` names the variable, never its value); None if none is set."""
    for name in names:
        if value := os.environ.get(name):
            try:
                return check(value)
            except ValueError as error:
                raise ConfigError(path, f"from {name}: {error}") from None
    return None


def _region_or_env(values: Mapping[str, Any], path: str) -> str:
    region = values["region"] or _from_environment(f"{path}.region", ("AWS_REGION", "AWS_DEFAULT_REGION"), _region)
    if not region:
        raise ConfigError(f"{path}.region", "is required (or set AWS_REGION)")
    return region


S3_OPTIONS = (
    Option("bucket_url", REQUIRED, parse_bucket_url),
    Option("add_acl", False, boolean),
    Option("region", None, _region),
    Option("access_key_id", None, _key_id, secret=True),
    Option("secret_access_key", None, text, secret=True),
    Option("session_token", None, text, secret=True),
    Option("downloads", "direct", one_of("direct", "redirect")),
    Option("redirect_expiration", 300, integer(1, MAX_EXPIRES)),
)
"""``[http_upload.s3]``. Left out, the region comes from ``AWS_REGION``/``AWS_DEFAULT_REGION``,
and each key from its own variable (see :func:`credentials_provider`). ``downloads = "redirect"``
hands out GET URLs of the built-in HTTP server, which redirects each GET to a presigned S3 GET
valid ``redirect_expiration`` seconds (see :mod:`slixmpp_http_upload.http.redirect`)."""


def credentials_provider(values: Mapping[str, Any], path: str) -> CredentialsProvider:
    """Static keys when the file or the environment gives some: each of ``access_key_id`` and
    ``secret_access_key`` from the file, else from ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``;
    ``session_token`` from the file, else ``AWS_SESSION_TOKEN`` when the secret came from the
    environment too (a token belongs to its secret). With no key anywhere, the standard AWS
    chain (the ``aws`` extra)."""
    key_id = values["access_key_id"] or _from_environment(f"{path}.access_key_id", ("AWS_ACCESS_KEY_ID",), _key_id)
    secret = values["secret_access_key"]
    token = values["session_token"]
    if secret is None:
        secret = _from_environment(f"{path}.secret_access_key", ("AWS_SECRET_ACCESS_KEY",))
        token = token or _from_environment(f"{path}.session_token", ("AWS_SESSION_TOKEN",))
    if key_id and secret:
        return StaticCredentials(Credentials(key_id, secret, token))
    if key_id:
        raise ConfigError(f"{path}.secret_access_key", "is required when access_key_id is set (or set AWS_SECRET_ACCESS_KEY)")
    if secret:
        raise ConfigError(f"{path}.access_key_id", "is required when secret_access_key is set (or set AWS_ACCESS_KEY_ID)")
    if values["session_token"]:
        raise ConfigError(f"{path}.session_token", "needs access_key_id and secret_access_key")
    if not aws_chain_available():
        raise ConfigError(
            f"{path}.access_key_id",
            "is required (or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
            "or install the aws extra for the standard AWS credential chain)",
        )
    return AwsChainCredentials()


class S3Backend:
    """Presigned S3 slots; creating one does no I/O."""

    def __init__(
        self,
        bucket: BaseUrl,
        region: str,
        credentials: Credentials | CredentialsProvider,
        *,
        add_acl: bool = False,
        expiration_time: int = 60,
        token_bytes: int = 32,
        redirect_from: str | None = None,
        redirect_expiration: int = 300,
    ) -> None:
        self.bucket = bucket
        self.region = region
        if isinstance(credentials, Credentials):
            credentials = StaticCredentials(credentials)
        self.credentials = credentials
        self.presigner: Presigner | None = None
        self.expiration_time = expiration_time
        self.token_bytes = token_bytes
        self.put_params = ACL_PARAMS if add_acl else ()
        self.redirect_from = redirect_from
        """The built-in HTTP server's public URL with ``downloads = "redirect"``, else None."""
        self.redirect_expiration = redirect_expiration

    @classmethod
    def from_settings(cls, settings: UploadSettings, options: Mapping[str, Any], path: str) -> S3Backend:
        """The backend factory registered as ``s3``."""
        values = parse_table(options, S3_OPTIONS, path)
        return cls(
            values["bucket_url"],
            _region_or_env(values, path),
            credentials_provider(values, path),
            add_acl=values["add_acl"],
            expiration_time=settings.expiration_time,
            token_bytes=settings.token_bytes,
            redirect_from=settings.public_url if values["downloads"] == "redirect" else None,
            redirect_expiration=values["redirect_expiration"],
        )

    async def create_slot(self, request: SlotRequest) -> Slot:
        self.sign_with(await self.credentials.current())
        return self.make_slot(request)

    def slot_now(self, request: SlotRequest) -> Slot | None:
        """The slot, if the current keys need no fetch first (else None: await :meth:`create_slot`)."""
        credentials = self.credentials.ready()
        if credentials is None:
            return None
        self.sign_with(credentials)
        return self.make_slot(request)

    def sign_with(self, credentials: Credentials) -> None:
        """Sign with ``credentials`` from now on: a new :class:`Presigner` only when they changed
        (a provider returns the same object while they do not)."""
        if self.presigner is None or self.presigner.credentials is not credentials:
            self.presigner = Presigner(credentials, self.region)

    @property
    def signer(self) -> Presigner:
        """The presigner of the current credentials, fetched first (blocking) if there are none yet."""
        if self.presigner is None:
            self.sign_with(self.credentials.resolve())
        return self.presigner  # type: ignore[return-value]

    def make_slot(self, request: SlotRequest, now: float | None = None) -> Slot:
        """A new object key under a fresh random token; its presigned PUT and plain GET URLs,
        signed with the credentials last taken (:meth:`create_slot` takes the current ones). With
        :attr:`redirect_from`, the GET URL is the same path on the built-in HTTP server instead."""
        name = uri_encode(object_name(request.filename))
        object_path = f"/{token_hex(self.token_bytes)}/{name}"
        key_path = self.bucket.path + object_path
        object_url = self.bucket.origin + key_path
        get_url = object_url if self.redirect_from is None else self.redirect_from + object_path
        return Slot(f"{object_url}?{self.put_query(key_path, request, now)}", get_url, key=key_path)

    def put_query(self, key_path: str, request: SlotRequest, now: float | None = None) -> str:
        """The presigned query string of the PUT of ``request`` to the encoded ``key_path``,
        valid ``expiration_time`` seconds, or until the file's expiry if that comes sooner."""
        header_block, signed_headers = self.signed_put_headers(request)
        expires = self.expiration_time
        if request.expires is not None:  # no upload may bring back a file after its expiry
            left = request.expires - (time.time() if now is None else now)
            expires = max(1, min(expires, int(left)))
        return self.signer.presign(
            "PUT", key_path, header_block, signed_headers, expires, now=now, extra_params=self.put_params
        )

    def signed_put_headers(self, request: SlotRequest) -> tuple[str, str]:
        """What :func:`~slixmpp_http_upload.sigv4.canonical_headers` makes of the headers a
        PUT signs, written out in their sorted order: this runs for every slot."""
        if request.content_type:
            content_type = " ".join(request.content_type.split())
            return (
                f"content-length:{request.size}\ncontent-type:{content_type}\nhost:{self.bucket.host}\n",
                "content-length;content-type;host",
            )
        return f"content-length:{request.size}\nhost:{self.bucket.host}\n", "content-length;host"

    async def delete(self, keys: Sequence[str]) -> list[str]:
        """Delete the objects at the encoded key paths ``keys`` with signed DELETEs,
        :data:`DELETE_CONCURRENCY` at a time; returns those gone (deleted, or absent already)."""
        self.sign_with(await self.credentials.current())
        limit = asyncio.Semaphore(DELETE_CONCURRENCY)

        async def delete_one(key: str) -> bool:
            async with limit:
                url = self.presigned_url("DELETE", key, {"host": self.bucket.host})
                return await asyncio.to_thread(_delete_url, url, key)

        gone = await asyncio.gather(*(delete_one(key) for key in keys))
        return [key for key, done in zip(keys, gone) if done]

    def presigned_url(
        self,
        method: str,
        key_path: str,
        headers: Mapping[str, str],
        *,
        expires: int | None = None,
        params: tuple[tuple[str, str], ...] = (),
    ) -> str:
        """A presigned URL for ``method`` on the encoded path ``key_path`` with ``headers`` and
        the query ``params`` signed, valid ``expires`` seconds (default ``expiration_time``)."""
        header_block, signed_headers = canonical_headers(headers)
        query = self.signer.presign(
            method, key_path, header_block, signed_headers, expires or self.expiration_time, extra_params=params
        )
        return f"{self.bucket.origin}{key_path}?{query}"


def _delete_url(url: str, key: str) -> bool:
    """One signed DELETE; True when the object is gone (2xx, or 404: it was not there)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="DELETE"), timeout=DELETE_TIMEOUT):
            return True
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return True
        log.warning("S3 refused to delete %s: HTTP %d", key, error.code)
    except (urllib.error.URLError, OSError) as error:
        log.warning("Could not delete %s: %s", key, getattr(error, "reason", error))
    return False
