"""Base URLs that slot URLs are built on: an S3 ``bucket_url`` and the HTTP server's ``public_url``.

:func:`parse_base_url` keeps only what every client sends back unchanged: http or https, a host
in unreserved characters (or an IPv6 literal), a non-default port, a path of unreserved
characters without empty, ``.`` or ``..`` segments, no user info, query or fragment.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from .options import ConfigError

DEFAULT_PORTS = {"http": 80, "https": 443}
_PATH = re.compile(r"^[A-Za-z0-9._~/-]*$")
_HOST = re.compile(r"^[a-z0-9._~-]+$")
"""A host name (lower-cased by urlsplit) in unreserved characters; IPv6 literals are checked apart."""
_IPV6_NETLOC = re.compile(r"^\[[0-9A-Fa-f:.]+\](:[0-9]*)?$")


@dataclass(frozen=True)
class BaseUrl:
    """A checked base URL (an S3 bucket_url, the HTTP server's public_url): ``origin`` is ``scheme://host[:port]``, ``host`` the Host header
    value, ``path`` the encoded path prefix without a trailing ``/``."""

    origin: str
    host: str
    path: str


def parse_base_url(value: Any) -> BaseUrl:
    if not isinstance(value, str) or not value:
        raise ValueError("must be an http:// or https:// URL")
    if "@" in value:
        # User info may carry a password: a ConfigError with no deeper path keeps the value
        # out of the message (a plain ValueError would be shown with ", got '<value>'").
        # No valid base URL contains "@" anywhere (the path allows none, query and fragment are refused).
        raise ConfigError("", "must not contain user info")
    parts = urlsplit(value.strip())
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError("must be an http:// or https:// URL")
    if parts.query or parts.fragment or value.rstrip().endswith(("?", "#")):
        raise ValueError("must not contain a query or a fragment")
    if not parts.hostname:
        raise ValueError("must name a host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError("has an invalid port") from None
    if "[" in parts.netloc or ":" in parts.hostname:
        if not _IPV6_NETLOC.match(parts.netloc):
            raise ValueError("has an invalid IPv6 host (write it as [address] or [address]:port)")
        try:
            ipaddress.IPv6Address(parts.hostname)
        except ValueError:
            raise ValueError("has an invalid IPv6 host (write it as [address] or [address]:port)") from None
    elif not _HOST.match(parts.hostname):
        raise ValueError("host may contain only letters, digits and '-._~'")
    if not _PATH.match(parts.path):
        raise ValueError("path may contain only letters, digits and '-._~/'")
    path = parts.path[:-1] if parts.path.endswith("/") else parts.path
    if any(segment in ("", ".", "..") for segment in path.split("/")[1:]):
        raise ValueError("path must not have empty, '.' or '..' segments (clients would rewrite them)")
    if port == 0:
        raise ValueError("has an invalid port")
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    if port is not None and port != DEFAULT_PORTS[scheme]:
        host = f"{host}:{port}"
    return BaseUrl(origin=f"{scheme}://{host}", host=host, path=path)
