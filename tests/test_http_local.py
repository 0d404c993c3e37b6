"""The built-in HTTP server of the ``local`` backend, through a real server on a loopback port:
every PUT rule, GET/HEAD with their headers, ranges and conditions, CORS, paths that try to
leave the root, a client that goes away or goes silent (in its body or its request head), the
upload limit and a full disk."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import secrets
import shutil
import socket
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import pytest

from helpers import tmpfs, write_toml
from servers import make_test_certificates
from slixmpp_http_upload.backends import create_backend
from slixmpp_http_upload.config import load_config
from slixmpp_http_upload.filestore import TEMPORARY
from slixmpp_http_upload.http import HttpServer
from slixmpp_http_upload.http.server import REQUEST_HEAD_TIMEOUT
from slixmpp_http_upload.local import LocalBackend
from slixmpp_http_upload.metrics import SlotMetrics
from slixmpp_http_upload.options import ConfigError
from slixmpp_http_upload.slot import Slot, SlotRequest

NAMES = ["plain.txt", "with space.txt", "très cool.jpg", "odd #?%&+;=.bin", "日本語.png"]
CSP = "default-src 'none'; frame-ancestors 'none'"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@dataclass
class Served:
    """A running server: its backend, root, base URL, and an HTTP session to talk to it."""

    backend: LocalBackend
    server: HttpServer
    root: Path
    url: str
    port: int
    http: aiohttp.ClientSession

    def slot(
        self, name: str = "file.bin", size: int = 10, content_type: str | None = None, now: float | None = None
    ) -> Slot:
        return self.backend.make_slot(SlotRequest(name, size, content_type, "example.org"), now=now)

    async def put(
        self, slot: Slot, body: bytes, content_type: str | None = None, **headers: str
    ) -> aiohttp.ClientResponse:
        sent = {"Content-Type": content_type} if content_type is not None else {}
        async with self.http.put(slot.put_url, data=body, headers={**sent, **headers}) as response:
            await response.read()
            return response

    async def upload(self, body: bytes, name: str = "file.bin", content_type: str | None = None) -> Slot:
        slot = self.slot(name, len(body), content_type)
        assert (await self.put(slot, body, content_type or "")).status == 201
        return slot

    async def get(self, url: str, method: str = "GET", **headers: str) -> tuple[aiohttp.ClientResponse, bytes]:
        async with self.http.request(method, url, headers=headers) as response:
            return response, await response.read()

    def leftovers(self) -> list[str]:
        return os.listdir(self.root / TEMPORARY)

    def stored(self) -> list[str]:
        return [name for name in os.listdir(self.root) if not name.startswith(".")]


@contextlib.asynccontextmanager
async def serving(
    directory: Path,
    *,
    http: Mapping[str, Any] | None = None,
    metrics: bool = False,
    idle_timeout: float = 60,
    head_timeout: float = REQUEST_HEAD_TIMEOUT,
    expiry: Callable[[str], float | None] | None = None,
) -> AsyncIterator[Served]:
    port = (http or {}).get("port") or free_port()
    document = {"http": {"port": port, **(http or {})}, "http_upload": {"expiration_time": 300}}
    config = load_config(write_toml(directory / "upload.toml", document))
    backend = create_backend(config.http_upload)
    assert isinstance(backend, LocalBackend)
    if expiry is not None:  # what serve does with its ledger
        backend.expiry = expiry
    sources = [SlotMetrics("upload.example.org")] if metrics else None
    server = HttpServer(config.http, backend, sources, idle_timeout=idle_timeout, head_timeout=head_timeout)
    try:
        await server.start()
    except BaseException:
        backend.store.close()
        raise
    try:
        async with aiohttp.ClientSession(auto_decompress=False) as session:
            yield Served(backend, server, directory / "uploads", f"http://127.0.0.1:{port}", port, session)
    finally:
        await server.stop()
        backend.store.close()


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    async with serving(tmp_path) as running:
        yield running


def head(method: str, url: str, *headers: str) -> bytes:
    """A request head for ``url`` (a URL, or a raw request target), with ``headers``."""
    target = request_target(url) if url.startswith("http") else url
    return "\r\n".join([f"{method} {target} HTTP/1.1", "Host: x", *headers, "", ""]).encode()


async def raw_request(port: int, request: bytes) -> bytes:
    """Send ``request`` over a fresh connection; the answer's head and its body (of its Content-Length)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(read_answer(reader), 10)
    finally:
        writer.close()


async def begin_put(
    served: Served, url: str, length: int, first: bytes
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A PUT of ``length`` bytes that has sent ``first`` and reached the disk; its connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(head("PUT", url, f"Content-Length: {length}") + first)
    await writer.drain()
    await wait_until(lambda: served.leftovers(), "uploading")
    return reader, writer


async def read_answer(reader: asyncio.StreamReader) -> bytes:
    answer = await reader.readuntil(b"\r\n\r\n")
    while answer.startswith(b"HTTP/1.1 100 "):
        answer = await reader.readuntil(b"\r\n\r\n")
    lengths = [line for line in answer.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    return answer + (await reader.readexactly(int(lengths[0].split(b":")[1])) if lengths else b"")


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def request_target(url: str) -> str:
    parts = urlsplit(url)
    return parts.path + (f"?{parts.query}" if parts.query else "")


async def wait_until(condition: Any, what: str) -> None:
    for _ in range(200):
        if condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"still not {what}")


# ----------------------------------------------------------------------------- PUT and GET


@pytest.mark.parametrize("name", NAMES)
async def test_put_then_get_the_same_bytes(served: Served, name: str) -> None:
    body = secrets.token_bytes(5000)
    slot = served.slot(name, len(body), "image/png")
    response = await served.put(slot, body, "image/png", Origin="https://chat.example")
    assert response.status == 201
    assert response.headers["Access-Control-Allow-Origin"] == "*"

    got, data = await served.get(slot.get_url, Origin="https://chat.example")
    assert got.status == 200 and data == body
    assert got.headers["Access-Control-Allow-Origin"] == "*"
    assert got.headers["Content-Type"] == "image/png"
    assert got.headers["Content-Length"] == str(len(body))
    assert not served.leftovers()


async def test_a_large_file_goes_out_whole(served: Served) -> None:
    body = secrets.token_bytes(3 * 1024 * 1024 + 7)  # beyond the small-file read: sendfile
    slot = await served.upload(body, "big.bin", "application/octet-stream")
    got, data = await served.get(slot.get_url)
    assert got.status == 200 and hashlib.sha256(data).digest() == hashlib.sha256(body).digest()
    assert got.headers["Content-Length"] == str(len(body))
    head, empty = await served.get(slot.get_url, "HEAD")
    assert head.status == 200 and empty == b"" and head.headers["Content-Length"] == str(len(body))
    assert head.headers["ETag"] == got.headers["ETag"]


async def test_tampered_and_expired_urls_are_forbidden(served: Served) -> None:
    body = b"0123456789"
    slot = served.slot("a.txt", len(body), "text/plain")
    base, _, query = slot.put_url.partition("?")
    token_at = len(served.url) + 1
    other = "0" if base[token_at] != "0" else "1"
    cases = [
        base,  # no query at all
        base[:token_at] + other + base[token_at + 1 :] + "?" + query,  # another token
        base[: -len("a.txt")] + "b.txt?" + query,  # another name
        base + "?" + query.replace("size=10", "size=11"),
        base + "?" + query.replace("type=text%2Fplain", "type=text%2Fhtml"),
        base + "?" + query[:-2] + ("AA" if not query.endswith("AA") else "BB"),
    ]
    for url in cases:
        async with served.http.put(url, data=body, headers={"Content-Type": "text/plain"}) as response:
            assert response.status == 403, url
    expired = served.slot("a.txt", len(body), "text/plain", now=1_000_000)
    assert (await served.put(expired, body, "text/plain")).status == 403
    assert not served.stored() and not served.leftovers()


async def test_the_length_must_be_the_slot_size(served: Served) -> None:
    slot = served.slot("a.bin", 10)
    assert (await served.put(slot, b"x" * 11)).status == 413
    assert (await served.put(slot, b"x" * 9)).status == 400
    assert (await served.get(slot.get_url))[0].status == 404
    # the slot is still good for the right length
    assert (await served.put(slot, b"x" * 10)).status == 201


async def test_the_declared_type_must_be_sent(served: Served) -> None:
    slot = served.slot("a.png", 3, "image/png")
    assert (await served.put(slot, b"png", "image/jpeg")).status == 400
    assert (await served.put(slot, b"png", "")).status == 400
    assert (await served.put(slot, b"png", "image/png")).status == 201


async def test_an_empty_content_type_counts_as_none(served: Served) -> None:
    # Converse declares content-type="" and sends an empty Content-Type
    slot = served.slot("a.dat", 3, None)
    assert (await served.put(slot, b"abc", "")).status == 201
    got, data = await served.get(slot.get_url)
    assert data == b"abc" and got.headers["Content-Type"] == "application/octet-stream"
    assert got.headers["Content-Disposition"] == 'attachment; filename="a.dat"'


async def test_an_undeclared_type_is_kept_from_the_put(served: Served) -> None:
    slot = served.slot("a.png", 3, None)
    assert (await served.put(slot, b"abc", "image/png")).status == 201
    assert (await served.get(slot.get_url))[0].headers["Content-Type"] == "image/png"


async def test_chunked_and_lengthless_bodies_are_refused(served: Served) -> None:
    slot = served.slot("a.bin", 5)
    chunked = head("PUT", slot.put_url, "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n"
    assert status_of(await raw_request(served.port, chunked)) == 411
    lengthless = await raw_request(served.port, head("PUT", slot.put_url))
    assert status_of(lengthless) == 411
    assert (await served.get(slot.get_url))[0].status == 404
    assert not served.leftovers()


async def test_a_second_put_conflicts(served: Served) -> None:
    slot = await served.upload(b"first", "a.txt", "text/plain")
    assert (await served.put(slot, b"other", "text/plain")).status == 409
    assert (await served.get(slot.get_url))[1] == b"first"


async def test_two_puts_at_once_store_one_file(served: Served) -> None:
    slot = served.slot("a.bin", 200_000)
    bodies = [b"a" * 200_000, b"b" * 200_000]
    statuses = sorted([(await served.put(slot, body)).status for body in bodies])
    concurrent = await asyncio.gather(*(served.put(served.slot("c.bin", 5), b"hello") for _ in range(3)))
    assert statuses == [201, 409]
    assert all(response.status == 201 for response in concurrent)
    assert (await served.get(slot.get_url))[1] in bodies
    assert not served.leftovers()


async def test_expect_100_continue_is_answered_after_the_checks(served: Served) -> None:
    slot = served.slot("a.bin", 5)
    expect = ("Content-Length: 5", "Expect: 100-continue", "Connection: close")
    refused = await raw_request(served.port, head("PUT", slot.put_url + "x", *expect))
    assert refused.startswith(b"HTTP/1.1 403 "), refused[:40]
    reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
    writer.write(head("PUT", slot.put_url, *expect))
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 100 ")
    await reader.readline()
    writer.write(b"hello")
    assert (await asyncio.wait_for(reader.read(), 10)).startswith(b"HTTP/1.1 201 ")
    writer.close()


# ------------------------------------------------------------------------- GET and HEAD


@pytest.mark.parametrize("size", [1000, 300_000], ids=["small", "large"])
async def test_ranges_and_conditions(served: Served, size: int) -> None:
    body = secrets.token_bytes(size)
    slot = await served.upload(body, "r.bin")
    whole, _ = await served.get(slot.get_url)
    etag = whole.headers["ETag"]
    assert whole.headers["Accept-Ranges"] == "bytes"

    part, data = await served.get(slot.get_url, Range="bytes=10-19")
    assert part.status == 206 and data == body[10:20]
    assert part.headers["Content-Range"] == f"bytes 10-19/{size}" and part.headers["Content-Length"] == "10"
    tail, data = await served.get(slot.get_url, Range="bytes=-7")
    assert tail.status == 206 and data == body[-7:]
    rest, data = await served.get(slot.get_url, Range=f"bytes={size - 3}-")
    assert rest.status == 206 and data == body[-3:]
    beyond, data = await served.get(slot.get_url, Range=f"bytes={size}-")
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{size}"
    several, data = await served.get(slot.get_url, Range="bytes=0-1,5-6")
    assert several.status == 200 and data == body
    stale, data = await served.get(slot.get_url, Range="bytes=0-1", **{"If-Range": '"other"'})
    assert stale.status == 200 and data == body
    fresh, data = await served.get(slot.get_url, Range="bytes=0-1", **{"If-Range": etag})
    assert fresh.status == 206 and data == body[:2]

    cached, data = await served.get(slot.get_url, **{"If-None-Match": etag})
    assert cached.status == 304 and data == b"" and cached.headers["ETag"] == etag
    changed, data = await served.get(slot.get_url, **{"If-None-Match": '"something-else"'})
    assert changed.status == 200 and data == body


async def test_a_zero_length_suffix_range_is_unsatisfiable(served: Served) -> None:
    """RFC 9110 §14.1.1: a suffix range is satisfiable only with a non-zero length."""
    slot = await served.upload(b"0123456789", "r.bin")
    empty, data = await served.get(slot.get_url, Range="bytes=-0")
    assert empty.status == 416 and empty.headers["Content-Range"] == "bytes */10" and data == b""


async def test_a_file_that_expires_is_not_cached_beyond_its_expiry(tmp_path: Path) -> None:
    """A year of ``immutable`` would keep an expired (deleted) file in every browser's cache."""
    lifetimes: dict[str, float] = {}
    async with serving(tmp_path, expiry=lifetimes.get) as served:
        short = await served.upload(b"short-lived", "s.txt")
        lifetimes[short.key] = time.time() + 120
        kept = await served.upload(b"kept", "k.txt")
        for method in ("GET", "HEAD"):
            got, _ = await served.get(short.get_url, method)
            max_age = int(got.headers["Cache-Control"].partition("max-age=")[2].partition(",")[0])
            assert got.status == 200 and 60 < max_age <= 120, got.headers["Cache-Control"]
        got, _ = await served.get(kept.get_url)
        assert got.headers["Cache-Control"] == "public, max-age=31536000, immutable"


@pytest.mark.parametrize(
    "content_type, disposition",
    [
        ("image/png", "inline"),
        ("video/mp4", "inline"),
        ("audio/ogg", "inline"),
        ("text/plain", "inline"),
        ("text/html", "attachment"),
        ("image/svg+xml", "inline"),
        ("application/pdf", "attachment"),
        ("text/plain; charset=utf-8", "inline"),
        ("Image/PNG", "inline"),
        ("text/plainhtml", "attachment"),
    ],
)
async def test_download_headers(served: Served, content_type: str, disposition: str) -> None:
    slot = await served.upload(b"content", 'résumé "v2".x', content_type)
    for method in ("GET", "HEAD"):
        got, _ = await served.get(slot.get_url, method)
        assert got.status == 200
        assert got.headers["Content-Type"] == content_type
        assert got.headers["X-Content-Type-Options"] == "nosniff"
        assert got.headers["Content-Security-Policy"] == CSP
        assert got.headers["Cache-Control"] == "public, max-age=31536000, immutable"
        assert got.headers["Content-Disposition"] == (
            f"""{disposition}; filename="r_sum_ _v2_.x"; filename*=UTF-8''{quote('résumé "v2".x', safe='')}"""
        )
        assert got.headers["Last-Modified"].endswith(" GMT") and got.headers["ETag"].startswith('"')


@pytest.mark.parametrize("content_type", ["image/png, text/html", "text/plain,text/html", "image/gif;a=b, text/html"])
async def test_a_list_of_types_is_served_as_plain_bytes(served: Served, content_type: str) -> None:
    """Browsers read a Content-Type list as its last type (Fetch, "extract a MIME type"):
    ``image/png, text/html`` sent back as it was declared would be HTML shown inline."""
    declared = await served.upload(b"<h1>hi</h1>", "a.png", content_type)
    undeclared = served.slot("b.png", 11)
    assert (await served.put(undeclared, b"<h1>hi</h1>", content_type)).status == 201
    for slot in (declared, undeclared):
        got, _ = await served.get(slot.get_url)
        assert got.headers["Content-Type"] == "application/octet-stream"
        assert got.headers["Content-Disposition"].startswith("attachment;")


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/etc/passwd",
        "/../../../../etc/passwd",
        "/%2e%2e/%2e%2e/etc/passwd",
        "/{token}/..%2F..%2F..%2Fetc%2Fpasswd",
        "/{token}/..%5C..%5Cetc%5Cpasswd",
        "/{token}/a%2Fb",
        "/{token}/a%5Cb",
        "/{token}/a%00b",
        "/{token}/%2e%2e",
        "/{token}/%ff.txt",
        "/{token}/file.txt/more",
        "//etc/passwd",
        "/{token}//etc/passwd",
        "/{TOKEN}/file.txt",
        "/.url-key",
        "/.tmp/x/data",
        "/{token}/data",
        "/{token}/meta",
    ],
)
async def test_paths_outside_the_root_are_not_found(served: Served, path: str) -> None:
    slot = await served.upload(b"stored", "file.txt")
    token = urlsplit(slot.get_url).path.split("/")[1]
    target = path.format(token=token, TOKEN=token.upper())
    for method in ("GET", "PUT"):
        answer = await raw_request(served.port, head(method, target, "Content-Length: 0", "Connection: close"))
        assert status_of(answer) in (403, 404), (method, target, answer[:60])
        assert b"root:" not in answer and b"stored" not in answer.partition(b"\r\n\r\n")[2]


async def test_a_malformed_request_logs_neither_its_url_nor_an_error(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp's parser quotes the offending request line in its exception: a client that sends a
    name unencoded (raw UTF-8) would have its signed PUT URL written to the log, as an ERROR
    with a traceback, by anyone on the network at will."""
    caplog.set_level(logging.DEBUG)
    slot = served.slot("q.bin", 3)
    signature = slot.put_url.rsplit("sig=", 1)[1]
    targets = [slot.put_url.replace("q.bin", "qé.bin"), slot.put_url + "\x01", slot.put_url + " x"]
    for target in targets:
        answer = await raw_request(served.port, head("PUT", target, "Content-Length: 3") + b"abc")
        assert status_of(answer) == 400
    assert (await served.put(slot, b"abc")).status == 201  # the server goes on
    assert caplog.text.count("malformed request") == len(targets) and signature not in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR or record.exc_info]


async def test_symlinks_planted_in_the_root_are_not_followed(served: Served, tmp_path: Path) -> None:
    slot = await served.upload(b"real", "file.txt", "text/plain")
    token = urlsplit(slot.get_url).path.split("/")[1]
    outside = tmp_path / "outside"
    shutil.copytree(served.root / token, outside)  # a valid upload, but outside the root
    (outside / "data").write_bytes(b"secret outside")

    planted = "ab" * 32
    (served.root / planted).symlink_to(outside)
    assert (await served.get(f"{served.url}/{planted}/file.txt"))[0].status == 404

    second = await served.upload(b"real too", "file.txt", "text/plain")
    second_token = urlsplit(second.get_url).path.split("/")[1]
    (served.root / second_token / "data").unlink()
    (served.root / second_token / "data").symlink_to(outside / "data")
    assert (await served.get(second.get_url))[0].status == 404

    third = await served.upload(b"and again", "file.txt", "text/plain")
    third_token = urlsplit(third.get_url).path.split("/")[1]
    (served.root / third_token / "meta").rename(tmp_path / "meta")
    (served.root / third_token / "meta").symlink_to(tmp_path / "meta")
    assert (await served.get(third.get_url))[0].status == 404
    assert (await served.get(slot.get_url))[1] == b"real"


async def test_unknown_and_unfinished_files_are_not_found(served: Served) -> None:
    slot = served.slot("never.txt", 5)
    assert (await served.get(slot.get_url))[0].status == 404
    assert (await served.get(slot.put_url))[0].status == 404
    # an upload in progress is not served
    reader, writer = await begin_put(served, slot.put_url, 5, b"hel")
    got, data = await served.get(slot.get_url)
    assert got.status == 404 and got.headers["X-Content-Type-Options"] == "nosniff"
    writer.write(b"lo")
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 201 ")
    writer.close()
    assert (await served.get(slot.get_url))[1] == b"hello"


# ---------------------------------------------------------------------------------- CORS


async def test_preflight_for_any_origin(served: Served) -> None:
    slot = served.slot("a.txt", 3, "text/plain")
    for url in (slot.put_url, slot.get_url):
        async with served.http.options(
            url,
            headers={
                "Origin": "https://chat.example",
                "Access-Control-Request-Method": "PUT",
                "Access-Control-Request-Headers": "content-type",
            },
        ) as response:
            assert response.status == 204
            assert response.headers["Access-Control-Allow-Origin"] == "*"
            methods = {method.strip() for method in response.headers["Access-Control-Allow-Methods"].split(",")}
            assert {"PUT", "GET", "HEAD"} <= methods
            allowed = {h.strip().lower() for h in response.headers["Access-Control-Allow-Headers"].split(",")}
            assert {"content-type", "authorization"} <= allowed


async def test_cors_origins_limit_who_may(tmp_path: Path) -> None:
    async with serving(tmp_path, http={"cors_origins": ["https://chat.example"]}) as served:
        slot = served.slot("a.txt", 3)
        preflight = {"Access-Control-Request-Method": "PUT"}
        async with served.http.options(slot.put_url, headers={"Origin": "https://chat.example", **preflight}) as ok:
            assert ok.status == 204 and ok.headers["Access-Control-Allow-Origin"] == "https://chat.example"
        async with served.http.options(slot.put_url, headers={"Origin": "https://evil.example", **preflight}) as no:
            assert no.status == 403 and "Access-Control-Allow-Origin" not in no.headers
        put = await served.put(slot, b"abc", Origin="https://chat.example")
        assert put.status == 201 and put.headers["Access-Control-Allow-Origin"] == "https://chat.example"
        assert "Origin" in put.headers.getall("Vary")
        got, _ = await served.get(slot.get_url, Origin="https://evil.example")
        assert got.status == 200 and "Access-Control-Allow-Origin" not in got.headers


async def test_error_answers_carry_cors_too(served: Served) -> None:
    slot = served.slot("a.txt", 3)
    refused = await served.put(served.slot("a.txt", 3, now=1_000_000), b"abc", Origin="https://chat.example")
    assert refused.status == 403 and refused.headers["Access-Control-Allow-Origin"] == "*"
    missing, _ = await served.get(slot.get_url, Origin="https://chat.example")
    assert missing.status == 404 and missing.headers["Access-Control-Allow-Origin"] == "*"


# ---------------------------------------------------- clients that go away, limits, full disk


async def test_a_client_that_disconnects_early_leaves_nothing(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="slixmpp_http_upload")
    slot = served.slot("gone.bin", 1_000_000)
    _, writer = await begin_put(served, slot.put_url, 1_000_000, b"x" * 300_000)
    writer.transport.abort()
    await wait_until(lambda: not served.leftovers(), "cleaned up")
    assert not served.stored()
    assert (await served.get(slot.get_url))[0].status == 404
    assert (await served.put(slot, b"y" * 1_000_000)).status == 201  # the slot still works
    assert "the client went away after" in caplog.text
    assert not [record for record in caplog.records if record.levelname == "ERROR"]


async def test_stopping_the_server_drops_an_unfinished_upload(tmp_path: Path) -> None:
    async with serving(tmp_path) as served:
        slot = served.slot("cut.bin", 100)
        _, writer = await begin_put(served, slot.put_url, 100, b"abc")
        await served.server.stop()
        writer.close()
        assert not served.leftovers() and not served.stored()


async def test_a_silent_client_is_dropped(tmp_path: Path) -> None:
    async with serving(tmp_path, idle_timeout=0.5) as served:
        slot = served.slot("slow.bin", 100)
        # 40 bytes, then nothing: raw_request waits for the answer
        answer = await raw_request(served.port, head("PUT", slot.put_url, "Content-Length: 100") + b"x" * 40)
        assert status_of(answer) == 408
        assert not served.leftovers() and not served.stored()
        assert (await served.put(slot, b"x" * 100)).status == 201


# A client that never completes its request head (slowloris) is closed HEAD_TIMEOUT after the
# connection opened or after its last response; a body and a download are not timed by it.

HEAD_TIMEOUT = 1.0


async def until_closed(reader: asyncio.StreamReader) -> bytes:
    """What the server sends until it closes the connection, which must be within 10 deadlines."""
    try:
        return await asyncio.wait_for(reader.read(), 10 * HEAD_TIMEOUT)
    except ConnectionResetError:  # closed with our unread bytes in its buffer
        return b""


async def test_a_connection_that_sends_nothing_is_closed(tmp_path: Path) -> None:
    async with serving(tmp_path, head_timeout=HEAD_TIMEOUT) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        assert await until_closed(reader) == b""
        writer.close()
        assert status_of(await raw_request(served.port, head("GET", "/no/file"))) == 404  # the server goes on


async def test_a_request_head_trickled_byte_by_byte_is_closed(tmp_path: Path) -> None:
    async with serving(tmp_path, head_timeout=HEAD_TIMEOUT) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        endless = head("GET", "/no/file", "X-Slow: " + "a" * 200)[:-4]  # 5 bytes a second: 50 s at least

        async def trickle() -> None:
            for byte in endless:
                writer.write(bytes([byte]))
                await asyncio.sleep(0.2)

        sending = asyncio.create_task(trickle())
        try:
            assert await until_closed(reader) == b""
        finally:
            sending.cancel()
            writer.close()


async def test_a_kept_alive_connection_has_the_deadline_again_after_each_response(tmp_path: Path) -> None:
    async with serving(tmp_path, head_timeout=HEAD_TIMEOUT) as served:
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        for _ in range(2):
            writer.write(head("GET", "/no/file"))
            assert status_of(await asyncio.wait_for(read_answer(reader), 10)) == 404
        writer.write(head("GET", "/no/file")[:-2])  # all but the blank line that ends the head
        assert await until_closed(reader) == b""
        writer.close()


async def test_a_slow_body_is_not_cut_by_the_head_deadline(tmp_path: Path) -> None:
    """The body takes three deadlines (within ``idle_timeout`` between bytes) and is stored; the
    deadline starts again after the 201: a GET right after it on the connection is answered, and
    then, with nothing more, the connection is closed."""
    async with serving(tmp_path, head_timeout=HEAD_TIMEOUT, idle_timeout=60) as served:
        slot = served.slot("slow.bin", 10)
        reader, writer = await asyncio.open_connection("127.0.0.1", served.port)
        writer.write(head("PUT", slot.put_url, "Content-Length: 10"))
        for byte in b"0123456789":
            await asyncio.sleep(3 * HEAD_TIMEOUT / 10)
            writer.write(bytes([byte]))
        assert status_of(await asyncio.wait_for(read_answer(reader), 10)) == 201
        writer.write(head("GET", slot.get_url))
        answer = await asyncio.wait_for(read_answer(reader), 10)
        assert status_of(answer) == 200 and answer.endswith(b"\r\n\r\n0123456789")
        assert await until_closed(reader) == b""
        writer.close()


async def test_a_slow_reader_gets_the_whole_download(tmp_path: Path) -> None:
    """The client reads 2.5 MB/s through a small receive window: the server is still sending
    (4 MB at most fit in its socket's buffer) seconds after the deadline; the file arrives whole,
    then the connection is closed."""
    async with serving(tmp_path, head_timeout=HEAD_TIMEOUT) as served:
        body = secrets.token_bytes(10 * 1024 * 1024)
        slot = await served.upload(body, "big.bin", "application/octet-stream")
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        client.setblocking(False)
        await asyncio.get_running_loop().sock_connect(client, ("127.0.0.1", served.port))
        reader, writer = await asyncio.open_connection(sock=client)
        writer.write(head("GET", slot.get_url))
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert status_of(answer) == 200
        received = bytearray()
        while len(received) < len(body):
            chunk = await asyncio.wait_for(reader.read(256 * 1024), 10)
            assert chunk, f"cut after {len(received)} bytes"
            received += chunk
            await asyncio.sleep(0.1)
        assert hashlib.sha256(received).digest() == hashlib.sha256(body).digest()
        assert await until_closed(reader) == b""
        writer.close()


async def test_a_second_server_on_the_same_root_leaves_uploads_in_progress_alone(served: Served) -> None:
    """A second ``serve`` started by mistake on the same root (here in the same process, with its
    own open root: the kernel sees two servers) must not remove what the first is receiving, not
    even on its way to finding the port taken."""
    slot = served.slot("busy.bin", 10)
    reader, writer = await begin_put(served, slot.put_url, 10, b"12345")
    with pytest.raises(ConfigError, match="cannot listen"):
        async with serving(served.root.parent, http={"port": served.port}):
            pass
    async with serving(served.root.parent):  # another port: it runs beside the first
        assert served.leftovers()
    writer.write(b"67890")
    assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 201 ")
    writer.close()
    assert (await served.get(slot.get_url))[1] == b"1234567890"


async def test_a_file_that_expires_during_its_upload_is_not_stored(served: Served) -> None:
    """The PUT began before the file's expiry; the sweeper deletes the token meanwhile: the end
    of the body must not bring the file back (its record is gone: it would be kept for ever)."""
    slot = served.slot("late.bin", 10)
    reader, writer = await begin_put(served, slot.put_url, 10, b"12345")
    assert await served.backend.delete([slot.key]) == [slot.key]
    writer.write(b"67890")
    assert status_of(await asyncio.wait_for(read_answer(reader), 10)) == 410
    writer.close()
    assert not served.leftovers() and not served.stored()
    assert (await served.get(slot.get_url))[0].status == 404


async def test_a_storage_failure_is_500_and_logs_no_token(served: Served, caplog: pytest.LogCaptureFixture) -> None:
    """The error names the upload by its token's prefix only, as every other upload log line:
    the whole token is the file's download URL."""
    slot = served.slot("lost.bin", 3)
    token = urlsplit(slot.get_url).path.split("/")[1]
    shutil.rmtree(served.root / TEMPORARY)  # an operator's mistake: no folder for uploads
    response = await served.put(slot, b"abc")
    assert response.status == 500
    assert f"upload {token[:8]}…: failed: No such file or directory" in caplog.text
    assert token not in caplog.text


async def test_too_many_uploads_at_once_are_told_to_retry(tmp_path: Path) -> None:
    async with serving(tmp_path, http={"max_uploads": 1}) as served:
        first = served.slot("one.bin", 10)
        reader, writer = await begin_put(served, first.put_url, 10, b"12345")
        busy = await served.put(served.slot("two.bin", 3), b"abc")
        assert busy.status == 503 and int(busy.headers["Retry-After"]) > 0
        writer.write(b"67890")
        assert (await asyncio.wait_for(reader.readline(), 10)).startswith(b"HTTP/1.1 201 ")
        writer.close()
        assert (await served.put(served.slot("two.bin", 3), b"abc")).status == 201


@pytest.fixture
def small_disk(tmp_path: Path) -> Any:
    """A 2 MiB tmpfs."""
    with tmpfs(tmp_path / "disk", "size=2m") as mount:
        yield mount


async def test_a_full_disk_is_507_and_the_service_goes_on(small_disk: Path) -> None:
    async with serving(small_disk) as served:
        too_big = served.slot("big.bin", 3 * 1024 * 1024)
        early = await raw_request(served.port, head("PUT", too_big.put_url, f"Content-Length: {3 * 1024 * 1024}"))
        assert status_of(early) == 507  # refused before a byte: the disk cannot hold it

        # a body that fits when it starts, but the disk fills up while it comes in
        slot = served.slot("fits.bin", 1024 * 1024)
        reader, writer = await begin_put(served, slot.put_url, 1024 * 1024, b"a" * 1000)
        filler = small_disk / "filler"
        with contextlib.suppress(OSError), open(filler, "wb") as file:
            file.write(b"f" * (2 * 1024 * 1024))
        writer.write(b"a" * (1024 * 1024 - 1000))
        with contextlib.suppress(ConnectionError):
            await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        assert status_of(answer) == 507
        assert not served.leftovers() and not served.stored()

        filler.unlink()
        body = secrets.token_bytes(100_000)
        after = await served.upload(body, "after.bin")
        assert (await served.get(after.get_url))[1] == body


async def test_metrics_are_served_when_on(tmp_path: Path) -> None:
    async with serving(tmp_path, metrics=True) as served:
        got, data = await served.get(f"{served.url}/metrics")
        assert got.status == 200 and b'xmpp_http_upload_create_slot_total{host="upload.example.org"} 0.0' in data
    (tmp_path / "off").mkdir()
    async with serving(tmp_path / "off") as served:
        assert (await served.get(f"{served.url}/metrics"))[0].status == 404


async def test_the_server_speaks_https_itself(tmp_path: Path) -> None:
    (tmp_path / "tls").mkdir()
    certificates = make_test_certificates(tmp_path / "tls")
    http = {"tls_cert": str(certificates.cert_path), "tls_key": str(certificates.key_path)}
    async with serving(tmp_path, http=http) as served:
        slot = served.slot("secure.txt", 6, "text/plain")
        assert slot.put_url.startswith(f"https://127.0.0.1:{served.port}/")
        trusted = ssl.create_default_context(cafile=str(certificates.ca_path))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trusted)) as session:
            async with session.put(slot.put_url, data=b"secret", headers={"Content-Type": "text/plain"}) as put:
                assert put.status == 201
            async with session.get(slot.get_url) as got:
                assert await got.read() == b"secret"
            big = served.slot("big.bin", 500_000)  # beyond the small-file read, through TLS
            body = secrets.token_bytes(500_000)
            async with session.put(big.put_url, data=body) as put:
                assert put.status == 201
            async with session.get(big.get_url) as got:
                assert await got.read() == body


async def test_a_public_url_path_is_served_with_or_without_it(tmp_path: Path) -> None:
    # behind a reverse proxy that keeps the prefix, or strips it
    port = free_port()
    async with serving(tmp_path, http={"port": port, "public_url": f"http://127.0.0.1:{port}/files"}) as served:
        slot = served.slot("a.txt", 3)
        assert urlsplit(slot.put_url).path.startswith("/files/")
        assert (await served.put(slot, b"abc")).status == 201
        stripped = slot.get_url.replace("/files/", "/", 1)
        for url in (slot.get_url, stripped):
            assert (await served.get(url))[1] == b"abc"
        assert (await served.get(slot.get_url.replace("/files/", "/other/", 1)))[0].status == 404
