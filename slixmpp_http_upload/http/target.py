"""Which stored file a request path names: ``[<prefix>]/<token>/<file name>``, or nothing.

The raw (still percent-encoded) path is split on ``/`` first and only then decoded, so an
encoded slash or backslash stays inside the name, where it is refused; the token must be
lowercase hexadecimal and the name must be what :func:`~slixmpp_http_upload.slot.object_name`
could have made (no ``/``, ``\\``, control characters, ``.`` or ``..``). Anything else — ``..``,
absolute paths, NUL, bad UTF-8 — names nothing: the caller answers 404.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote

from ..slot import BadRequest, check_filename

_TOKEN = re.compile(r"[0-9a-f]{32,512}")
"""``token_bytes`` (16 to 256) random bytes as lowercase hex."""


@dataclass(frozen=True, slots=True)
class Target:
    token: str
    name: str


def parse_target(raw_path: str, prefix: str = "") -> Target | None:
    """The target of ``raw_path``; ``prefix`` is the public URL's path, which a reverse proxy
    may or may not have kept."""
    if prefix and raw_path.startswith(prefix + "/"):
        raw_path = raw_path[len(prefix) :]
    parts = raw_path.split("/")
    if len(parts) != 3 or parts[0] or not _TOKEN.fullmatch(parts[1]):
        return None
    try:
        name = check_filename(unquote(parts[2], errors="strict"))
    except (UnicodeDecodeError, BadRequest):
        return None
    if "/" in name or "\\" in name:
        return None
    return Target(parts[1], name)
