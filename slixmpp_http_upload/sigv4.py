"""AWS Signature Version 4, query-string form ("presigned URLs"), on hashlib and hmac.

Each step of the algorithm is a small function named after it in the AWS documentation;
:func:`presign_query` chains them. The day's signing key is cached.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
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


def uri_encode(value: str, keep_slash: bool = False) -> str:
    """AWS URI encoding: keep ``A-Z a-z 0-9 - . _ ~``, every other UTF-8 byte as ``%XY`` (upper hex)."""
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
    method: str, canonical_uri: str, query: str, header_block: str, signed_headers: str
) -> str:
    return "\n".join((method, canonical_uri, query, header_block, signed_headers, UNSIGNED_PAYLOAD))


def string_to_sign(date: str, scope: str, request: str) -> str:
    digest = hashlib.sha256(request.encode()).hexdigest()
    return f"{ALGORITHM}\n{date}\n{scope}\n{digest}"


@lru_cache(maxsize=32)
def signing_key(secret_access_key: str, day: str, region: str, service: str) -> bytes:
    """The HMAC chain ``"AWS4"+secret → day → region → service → aws4_request``; changes once a day."""
    key = ("AWS4" + secret_access_key).encode()
    for part in (day, region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


def signature(key: bytes, to_sign: str) -> str:
    return hmac.digest(key, to_sign.encode(), "sha256").hex()


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
    """The query string of a presigned request, ``X-Amz-Signature`` last.

    ``canonical_uri`` is the already-encoded path, exactly as it will appear in the URL;
    ``headers`` are the headers the client must send (``host`` included); ``extra_params``
    are further values to enforce through the query string, such as ``x-amz-acl``.
    """
    date = amz_date(time.time() if now is None else now)
    day = date[:8]
    scope = credential_scope(day, region, service)
    header_block, signed_headers = canonical_headers(headers)
    params = [
        ("X-Amz-Algorithm", ALGORITHM),
        ("X-Amz-Credential", f"{credentials.access_key_id}/{scope}"),
        ("X-Amz-Date", date),
        ("X-Amz-Expires", str(expires)),
        ("X-Amz-SignedHeaders", signed_headers),
        *extra_params,
    ]
    if credentials.session_token:
        params.append(("X-Amz-Security-Token", credentials.session_token))
    query = canonical_query_string(params)
    request = canonical_request(method, canonical_uri, query, header_block, signed_headers)
    key = signing_key(credentials.secret_access_key, day, region, service)
    return f"{query}&X-Amz-Signature={signature(key, string_to_sign(date, scope, request))}"
