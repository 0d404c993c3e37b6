"""What a slot request is, what a slot is, and the rules a request must follow.

The same rules serve the XMPP plugin and the ``urls`` command: :func:`make_request` turns the
raw fields into a :class:`SlotRequest` or raises :class:`BadRequest` / :class:`FileTooLarge`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from slixmpp import JID

ALLOWED_PUT_HEADERS = frozenset({"authorization", "cookie", "expires"})
"""The only header names XEP-0363 lets a service hand to clients."""

_URL = re.compile(r"[!-~]+")
"""What a slot URL may hold: printable ASCII, no space (anything else is percent-encoded)."""
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
"""C0 and C1 control characters and DEL, refused in file names."""
_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
"""What a file name may not hold: control characters, and lone surrogates (no UTF-8 carries them)."""

MAX_FILENAME_BYTES = 255
MAX_SIZE_DIGITS = 20
MAX_SIZE = 2**63 - 1
"""The largest size a request may declare, whatever ``max_file_size``: the largest integer SQLite
stores (the ledger writes each slot's size)."""
MAX_CONTENT_TYPE_LENGTH = 255


class BadRequest(ValueError):
    """A request field is missing or malformed; ``str()`` says which and why."""


class FileTooLarge(ValueError):
    """The declared size is over the limit."""

    def __init__(self, max_file_size: int) -> None:
        super().__init__("Declared file size exceeds the host's maximum file size.")
        self.max_file_size = max_file_size


class SlotsUnavailable(Exception):
    """A backend cannot make slots now for a reason it knows (no credentials, say): ``str()``
    is that reason in one line, logged without a traceback; the requester gets
    ``wait/internal-server-error``."""


@dataclass(slots=True, unsafe_hash=True)
class SlotRequest:
    """A valid request for an upload slot (a value, hashable as one: read it, do not change it;
    not frozen, as building a frozen dataclass costs a few µs on the path of every slot).

    ``domain`` is the served XMPP domain; ``requester`` is None when no XMPP user asked
    (the ``urls`` command). ``content_type`` is None when the client gave none (or "").
    ``purpose`` is the XEP-0363 purpose; ``expires`` (epoch seconds) when the file must stop
    being served, None for never.
    """

    filename: str
    size: int
    content_type: str | None
    domain: str
    requester: JID | None = None
    purpose: str = "message"
    expires: float | None = None


@dataclass(slots=True, unsafe_hash=True)
class Slot:
    """Where to PUT the bytes (with optional headers) and where everyone GETs them. ``key`` is
    the backend's own name of the object, what its ``delete`` takes (default: the GET URL).
    Checked when made; a value from then on (not frozen, as :class:`SlotRequest`)."""

    put_url: str
    get_url: str
    put_headers: tuple[tuple[str, str], ...] = ()
    key: str = ""

    def __post_init__(self) -> None:
        put, get = self.put_url, self.get_url
        # the GET URL is often where the PUT URL starts: then the PUT URL's check covers it
        if not _URL.fullmatch(put) or not ((get and put.startswith(get)) or _URL.fullmatch(get)):
            url = get if _URL.fullmatch(put) else put
            raise ValueError(f"a slot URL must be printable ASCII without spaces: {url[:80]!r}")
        for name, value in self.put_headers:
            if name.lower() not in ALLOWED_PUT_HEADERS:
                raise ValueError(f"XEP-0363 forbids handing the header {name!r} to clients")
            if "\r" in value or "\n" in value:
                raise ValueError(f"the value of header {name!r} contains a line break")


def make_request(
    filename: str | None,
    size: str | int | None,
    content_type: str | None,
    *,
    domain: str,
    max_file_size: int | None,
    requester: JID | None = None,
    purpose: str = "message",
    expires: float | None = None,
) -> SlotRequest:
    """Check the raw fields of a slot request; ``max_file_size`` None means no limit."""
    request = SlotRequest(  # by position: half the cost of keywords, on the path of every slot
        check_filename(filename), check_size(size), check_content_type(content_type), domain, requester, purpose, expires
    )
    if max_file_size is not None and request.size > max_file_size:
        raise FileTooLarge(max_file_size)
    return request


def check_filename(filename: str | None) -> str:
    if not filename:
        raise BadRequest("The filename is missing or empty.")
    refused = _REFUSED.search(filename)  # one scan for the usual name; which rule it broke, below
    if refused and _CONTROL.search(filename):
        raise BadRequest("The filename contains control characters.")
    if filename in (".", ".."):
        raise BadRequest("The filename cannot be '.' or '..'.")
    if len(filename) > MAX_FILENAME_BYTES // 4 and len(filename.encode("utf-8", "surrogatepass")) > MAX_FILENAME_BYTES:
        raise BadRequest(f"The filename is longer than {MAX_FILENAME_BYTES} bytes.")
    if refused:
        raise BadRequest("The filename is not valid Unicode.")
    return filename


def check_size(size: str | int | None) -> int:
    if isinstance(size, int) and not isinstance(size, bool):
        value = size
    elif isinstance(size, str) and size.isascii() and size.isdigit():
        if len(size) > MAX_SIZE_DIGITS:  # no file is that large, and int() refuses 4300 digits
            raise BadRequest(f"The size has more than {MAX_SIZE_DIGITS} digits.")
        value = int(size)
    else:
        raise BadRequest("The size is missing or not a positive decimal integer.")
    if value < 1:
        raise BadRequest("The size is missing or not a positive decimal integer.")
    if value > MAX_SIZE:
        raise BadRequest("The size is larger than any file can be.")
    return value


def check_content_type(content_type: str | None) -> str | None:
    if not content_type:
        return None
    if "\r" in content_type or "\n" in content_type:
        raise BadRequest("The content-type contains a line break.")
    if not (content_type.isascii() and content_type.isprintable()):  # U+0020 to U+007E
        raise BadRequest("The content-type must be printable ASCII.")
    if len(content_type) > MAX_CONTENT_TYPE_LENGTH:
        raise BadRequest(f"The content-type is longer than {MAX_CONTENT_TYPE_LENGTH} characters.")
    return content_type


def object_name(filename: str) -> str:
    """The file name as one path segment of a slot URL: ``/`` and ``\\`` become ``_``.

    S3 servers treat both as folder separators (SeaweedFS and Ceph decode ``%2F`` before
    checking the signature; SeaweedFS turns ``\\`` into ``/``), so neither can be sent safely.
    """
    return filename.replace("/", "_").replace("\\", "_")
