"""``slixmpp-http-upload check``: prove a live configuration works, step by step.

Create a slot for a small probe file, PUT it with exactly the headers a standard XEP-0363
client sends, GET it back anonymously and compare, then delete it: from S3 with the configured
key, or from the ``local`` backend's root (whose HTTP server — ``serve`` — must be running at
``public_url``). Each step prints one line; a failure names the error (and for S3 a hint). URLs
that are not https get a warning (clients such as Gajim refuse them), which does not fail the
check.

For each web client's origin given (``--origin``, S3 only), first the CORS preflight exactly as
Chromium sends it before Converse.js's PUT (``OPTIONS`` with ``Origin``,
``Access-Control-Request-Method: PUT``, ``Access-Control-Request-Headers: content-type``), then
the PUT from that origin, whose answer must carry its ``Access-Control-Allow-Origin``. With
``downloads = "redirect"`` the GET goes through the service's own URL (``serve`` must be
running): the probe is written to the ledger file for the time of the check, since the service
serves only what the ledger records; the object's plain S3 URL should refuse anonymous readers
(a warning if not).
"""

from __future__ import annotations

import re
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TextIO
from urllib.parse import urlsplit

from .ledger import Ledger, SlotRecord
from .local import LocalBackend
from .s3 import S3Backend
from .slot import SlotRequest, SlotsUnavailable

PROBE = b"slixmpp-http-upload check probe\n"
TIMEOUT = 15.0

HINTS = {
    "SignatureDoesNotMatch": "check secret_access_key, region and bucket_url (host, port, path)",
    "InvalidAccessKeyId": "the server does not know access_key_id",
    "NoSuchBucket": "the bucket named in bucket_url does not exist",
    "RequestTimeTooSkewed": "this machine's clock is off",
    "ExpiredToken": "the session_token has expired",
    "InvalidToken": "the session_token is not valid",
}
ACCESS_HINTS = {
    "put": "the key may not write to this bucket",
    "get": "anonymous reads are refused: run setup-bucket (a read-only bucket policy), set add_acl = true, "
    'or set downloads = "redirect"',
    "delete": "the key may not delete in this bucket (the probe object stays)",
}


class StepFailed(Exception):
    """A step failed; ``str()`` is the line to print after the step's name."""


CORS_HINT = "run setup-bucket --origin {origin} (or add a CORS rule allowing PUT from it with any header)"


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    body: bytes
    headers: Mapping[str, str] = field(default_factory=dict)


def http(method: str, url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> HttpAnswer:
    """One HTTP request; an S3 error answer raises StepFailed with its code and a hint."""
    request = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return HttpAnswer(response.status, response.read(), response.headers)
    except urllib.error.HTTPError as error:
        raise StepFailed(_describe_http_error(method, error.code, error.read())) from None
    except urllib.error.URLError as error:
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        raise StepFailed(f"cannot reach {origin}: {error.reason} — is the server (S3, or serve) up?") from None
    except (TimeoutError, OSError) as error:
        raise StepFailed(f"no answer: {error}") from None


def anonymous_status(url: str) -> int:
    """The status of an anonymous GET of ``url`` (its body unread)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url), timeout=TIMEOUT) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError) as error:
        raise StepFailed(f"no answer: {getattr(error, 'reason', error)}") from None


def _describe_http_error(method: str, status: int, body: bytes) -> str:
    code = _xml_text(body, "Code")
    message = _xml_text(body, "Message") if code else _plain_text(body)
    line = f"HTTP {status} {code or ''}".rstrip()
    if message:
        line += f": {message}"
    hint = HINTS.get(code or "") or (ACCESS_HINTS.get(method.lower()) if code == "AccessDenied" or status == 403 else None)
    return f"{line} — {hint}" if hint else line


def _xml_text(body: bytes, tag: str) -> str | None:
    match = re.search(rb"<%s>([^<]*)</%s>" % (tag.encode(), tag.encode()), body)
    return match.group(1).decode("utf-8", "replace") if match else None


def _plain_text(body: bytes) -> str | None:
    """The first line of a short plain-text answer (what the built-in HTTP server says)."""
    text = body[:200].decode("utf-8", "replace").strip()
    return text.splitlines()[0] if text and not text.startswith("<") else None


def preflight(url: str, origin: str) -> str:
    """The CORS preflight of a browser's PUT with a Content-Type from ``origin``, judged as
    Chromium does: the origin, ``PUT`` and ``content-type`` must each be allowed."""
    headers = {
        "Origin": origin,
        "Access-Control-Request-Method": "PUT",
        "Access-Control-Request-Headers": "content-type",
    }
    try:
        answer = http("OPTIONS", url, headers=headers)
    except StepFailed as failure:
        raise StepFailed(f"{failure} — {CORS_HINT.format(origin=origin)}") from None
    allowed = answer.headers.get("Access-Control-Allow-Origin")
    methods = answer.headers.get("Access-Control-Allow-Methods", "")
    request_headers = answer.headers.get("Access-Control-Allow-Headers", "")
    if (
        allowed not in (origin, "*")
        or not {"PUT", "*"} & _listed(methods.upper())
        or not {"CONTENT-TYPE", "*"} & _listed(request_headers.upper())
    ):
        seen = f"Allow-Origin {allowed!r}, Allow-Methods {methods!r}, Allow-Headers {request_headers!r}"
        raise StepFailed(f"HTTP {answer.status} but {seen} — {CORS_HINT.format(origin=origin)}")
    return f"HTTP {answer.status}, PUT with content-type allowed"


def _listed(value: str) -> set[str]:
    """The items of a comma-separated header value."""
    return {item.strip() for item in value.split(",")}


def allowed_origin(answer: HttpAnswer, origin: str) -> str:
    """`` from <origin>`` when the answer lets the page of ``origin`` read it, else StepFailed."""
    allowed = answer.headers.get("Access-Control-Allow-Origin")
    if allowed not in (origin, "*"):
        problem = f"HTTP {answer.status} but no Access-Control-Allow-Origin for {origin} (got {allowed!r})"
        raise StepFailed(f"{problem} — {CORS_HINT.format(origin=origin)}")
    return f" from {origin}"


def run_check(
    backend: S3Backend | LocalBackend,
    domain: str,
    out: TextIO,
    origins: Sequence[str] = (),
    ledger: Ledger | None = None,
) -> bool:
    """Run every step, print one line each; True when all passed. The probe's slot is recorded
    in ``ledger`` while the check runs."""
    filename = f"slixmpp-http-upload-check-{secrets.token_hex(4)}.txt"
    request = SlotRequest(filename=filename, size=len(PROBE), content_type="text/plain", domain=domain)
    try:
        slot = backend.make_slot(request)
    except SlotsUnavailable as error:
        out.write(f"FAIL  slot    {error}\nthe check failed\n")
        return False
    out.write(f"ok    slot    {slot.get_url} (PUT URL signed for {backend.expiration_time} s)\n")
    if not slot.get_url.startswith("https://"):
        out.write("warn  https   the URLs are not https: Gajim and other clients refuse such slots\n")

    def put(origin: str | None = None) -> str:
        headers = {"Content-Type": "text/plain", "Content-Length": str(len(PROBE))}
        answer = http("PUT", slot.put_url, PROBE, {**headers, "Origin": origin} if origin else headers)
        return f"HTTP {answer.status}, {len(PROBE)} bytes" + (allowed_origin(answer, origin) if origin else "")

    def get() -> str:
        answer = http("GET", slot.get_url)
        if answer.body != PROBE:
            raise StepFailed(f"HTTP {answer.status} but the bytes differ ({len(answer.body)} bytes back)")
        via = " through the service's redirect" if redirect else ""
        return f"HTTP {answer.status}, same {len(PROBE)} bytes, no credentials{via}"

    def private() -> str:
        status = anonymous_status(object_url)
        if status == 200:
            warning = "the object's plain S3 URL is readable by anyone; redirect needs no public bucket"
            out.write(f"warn  private {warning}\n")
        return f"plain S3 URL answers HTTP {status} to anonymous readers"

    def delete() -> str:
        if isinstance(backend, LocalBackend):
            backend.store.delete(slot.key)
            return f"removed from {backend.store.root}"
        url = backend.presigned_url("DELETE", urlsplit(object_url).path, {"host": backend.bucket.host})
        return f"HTTP {http('DELETE', url).status}"

    object_url = slot.put_url.partition("?")[0]
    redirect = isinstance(backend, S3Backend) and backend.redirect_from is not None
    steps: list[tuple[str, Callable[[], str]]] = [
        *((f"preflight {origin}", lambda origin=origin: preflight(slot.put_url, origin)) for origin in origins),
        ("put", lambda: put(origins[0] if origins else None)),
        *((f"put {origin}", lambda origin=origin: put(origin)) for origin in origins[1:]),
        ("get", get),
        *((("private", private),) if redirect else ()),
        ("delete", delete),
    ]
    if ledger is not None and slot.key is not None:
        now = time.time()
        expires = now + backend.expiration_time
        probe = SlotRecord(slot.key, "", domain, len(PROBE), "text/plain", "message", now, expires)
        ledger.add(probe)
        ledger.flush()
    passed = True
    try:
        for name, step in steps:
            try:
                out.write(f"ok    {name:<7} {step()}\n")
            except StepFailed as failure:
                out.write(f"FAIL  {name:<7} {failure}\n")
                passed = False
                if name == "put":
                    for later, _ in steps[steps.index((name, step)) + 1 :]:
                        out.write(f"skip  {later:<7} (nothing was uploaded)\n")
                    break
    finally:
        if ledger is not None and slot.key is not None:
            ledger.remove([slot.key], forget=True)
    out.write("all checks passed\n" if passed else "the check failed\n")
    return passed

