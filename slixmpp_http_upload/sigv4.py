"""AWS Signature Version 4 on hashlib and hmac: query-string form ("presigned URLs") and header form.

Each step of the algorithm is a small function named after it in the AWS documentation;
:meth:`Presigner.presign` chains them, caching what changes only once a day or once a second.
:func:`presign_query` is a one-off presign; :func:`authorization_headers` signs one request
(the S3 API calls of ``setup-bucket``) in the ``Authorization`` header.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
MAX_EXPIRES = 604800
"""S3 refuses presigned URLs valid for more than seven days."""


@dataclass(frozen=True)
class Credentials:
    """An access key; ``session_token`` for temporary (STS) credentials. Secrets stay out of repr."""

    access_key_id: str
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)


_UNRESERVED = re.compile(r"[A-Za-z0-9._~-]*")


def uri_encode(value: str, keep_slash: bool = False) -> str:
    """AWS URI encoding: keep ``A-Z a-z 0-9 - . _ ~``, every other UTF-8 byte as ``%XY`` (upper hex)."""
    if _UNRESERVED.fullmatch(value):  # most file names: nothing to encode
        return value
    return quote(value, safe="/-_.~" if keep_slash else "-_.~")


def amz_date(epoch: float) -> str:
    """``YYYYMMDDTHHMMSSZ`` in UTC, whole seconds."""
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(epoch))


def credential_scope(day: str, region: str, service: str) -> str:
    return f"{day}/{region}/{service}/aws4_request"


def canonical_query_string(params: Iterable[tuple[str, str]]) -> str:
    """Names and values encoded, sorted by encoded name (then value), joined as ``k=v&…``."""
    encoded = sorted((uri_encode(name), uri_encode(value)) for name, value in params)
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_headers(headers: Mapping[str, str]) -> tuple[str, str]:
    """Return the canonical header block and the signed-header list for ``headers``."""
    normalised = sorted((name.lower(), " ".join(value.split())) for name, value in headers.items())
    block = "".join(f"{name}:{value}\n" for name, value in normalised)
    return block, ";".join(name for name, _ in normalised)


def canonical_request(
    method: str,
    canonical_uri: str,
    query: str,
    header_block: str,
    signed_headers: str,
    payload_hash: str = UNSIGNED_PAYLOAD,
) -> str:
    return "\n".join((method, canonical_uri, query, header_block, signed_headers, payload_hash))


def string_to_sign(date: str, scope: str, request: str) -> str:
    digest = _EMPTY_SHA256.copy()  # OpenSSL 3 looks "sha256" up for each new hash object; a copy does not
    digest.update(request.encode())
    return f"{ALGORITHM}\n{date}\n{scope}\n{digest.hexdigest()}"


_EMPTY_SHA256 = hashlib.sha256()


def signing_key(secret_access_key: str, day: str, region: str, service: str) -> bytes:
    """The HMAC chain ``"AWS4"+secret → day → region → service → aws4_request``; changes once a day."""
    key = ("AWS4" + secret_access_key).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


class HmacSha256:
    """HMAC-SHA256 (RFC 2104) under one key, its two padded key blocks hashed once: a MAC is
    then two copies of a SHA-256 state and two short updates, about half of what copying a
    keyed ``hmac.HMAC`` costs (and a third of ``hmac.digest``, which sets OpenSSL's HMAC up
    each time). For keys used many times: the day's signing key, the ``local`` backend's."""

    def __init__(self, key: bytes) -> None:
        size = hashlib.sha256().block_size
        if len(key) > size:  # RFC 2104: a key longer than a block is hashed first (a long url_key)
            key = hashlib.sha256(key).digest()
        block = key.ljust(size, b"\0")
        self._inner = hashlib.sha256(bytes(byte ^ 0x36 for byte in block))
        self._outer = hashlib.sha256(bytes(byte ^ 0x5C for byte in block))

    def digest(self, message: bytes) -> bytes:
        inner = self._inner.copy()
        inner.update(message)
        outer = self._outer.copy()
        outer.update(inner.digest())
        return outer.digest()


def signature(key: HmacSha256, to_sign: str) -> str:
    """Hex HMAC-SHA256 of ``to_sign`` with the signing key."""
    return key.digest(to_sign.encode()).hex()


class Presigner:
    """Presigns requests for one access key, region and service.

    What does not depend on the request is cached: the signing key and scope for the day, the
    date for the second, and the canonical query string for each signed-header list. A
    presign is then one SHA-256 and one HMAC over strings joined once.
    """

    def __init__(self, credentials: Credentials, region: str, service: str = "s3") -> None:
        self.credentials = credentials
        self.region = region
        self.service = service
        self._second = -1
        self._date = self._scope = ""
        self._key = HmacSha256(b"")
        self._queries: dict[tuple[str, int, tuple[tuple[str, str], ...]], str] = {}

    def presign(
        self,
        method: str,
        canonical_uri: str,
        header_block: str,
        signed_headers: str,
        expires: int,
        *,
        now: float | None = None,
        extra_params: tuple[tuple[str, str], ...] = (),
    ) -> str:
        """The query string of a presigned request, ``X-Amz-Signature`` last.

        ``canonical_uri`` is the already-encoded path, exactly as it will appear in the URL;
        ``header_block`` and ``signed_headers`` come from :func:`canonical_headers` for the
        headers the client must send (``host`` included); ``extra_params`` are further values
        to enforce through the query string, such as ``x-amz-acl``.
        """
        second = int(time.time() if now is None else now)
        if second != self._second:
            self._set_time(second)
        query = self._queries.get((signed_headers, expires, extra_params)) or self._make_query(
            signed_headers, expires, extra_params
        )
        request = canonical_request(method, canonical_uri, query, header_block, signed_headers)
        return f"{query}&X-Amz-Signature={signature(self._key, string_to_sign(self._date, self._scope, request))}"

    def _set_time(self, second: int) -> None:
        date = amz_date(second)
        if date[:8] != self._date[:8]:
            day = date[:8]
            self._scope = credential_scope(day, self.region, self.service)
            self._key = HmacSha256(signing_key(self.credentials.secret_access_key, day, self.region, self.service))
        self._second, self._date = second, date
        self._queries.clear()

    def _make_query(self, signed_headers: str, expires: int, extra_params: tuple[tuple[str, str], ...]) -> str:
        """The canonical query string without the signature, made once a second for each
        signed-header list, expiry and extra parameters (:meth:`presign` looks in the cache first)."""
        params = [
            ("X-Amz-Algorithm", ALGORITHM),
            ("X-Amz-Credential", f"{self.credentials.access_key_id}/{self._scope}"),
            ("X-Amz-Date", self._date),
            ("X-Amz-Expires", str(expires)),
            ("X-Amz-SignedHeaders", signed_headers),
            *extra_params,
        ]
        if self.credentials.session_token:
            params.append(("X-Amz-Security-Token", self.credentials.session_token))
        query = self._queries[(signed_headers, expires, extra_params)] = canonical_query_string(params)
        return query


def presign_query(
    *,
    method: str,
    canonical_uri: str,
    headers: Mapping[str, str],
    credentials: Credentials,
    region: str,
    expires: int,
    now: float | None = None,
    service: str = "s3",
    extra_params: Iterable[tuple[str, str]] = (),
) -> str:
    """One presign with a fresh :class:`Presigner` (see :meth:`Presigner.presign`)."""
    header_block, signed_headers = canonical_headers(headers)
    return Presigner(credentials, region, service).presign(
        method, canonical_uri, header_block, signed_headers, expires, now=now, extra_params=tuple(extra_params)
    )


def authorization_headers(
    *,
    method: str,
    canonical_uri: str,
    params: Iterable[tuple[str, str]],
    headers: Mapping[str, str],
    payload: bytes,
    credentials: Credentials,
    region: str,
    now: float | None = None,
    service: str = "s3",
) -> dict[str, str]:
    """The headers that sign a request in header form: ``headers`` (``host`` included) plus
    ``x-amz-date``, ``x-amz-content-sha256`` (of ``payload``), ``x-amz-security-token`` with a
    session token, and ``Authorization``. ``params`` is the query, unencoded."""
    date = amz_date(time.time() if now is None else now)
    scope = credential_scope(date[:8], region, service)
    payload_hash = hashlib.sha256(payload).hexdigest()
    signed = {**headers, "x-amz-date": date, "x-amz-content-sha256": payload_hash}
    if credentials.session_token:
        signed["x-amz-security-token"] = credentials.session_token
    header_block, signed_headers = canonical_headers(signed)
    request = canonical_request(
        method, canonical_uri, canonical_query_string(params), header_block, signed_headers, payload_hash
    )
    key = signing_key(credentials.secret_access_key, date[:8], region, service)
    signed["Authorization"] = (
        f"{ALGORITHM} Credential={credentials.access_key_id}/{scope}, SignedHeaders={signed_headers}, "
        f"Signature={signature(HmacSha256(key), string_to_sign(date, scope, request))}"
    )
    return signed
