"""``downloads = "redirect"``: the S3 backend's GET URLs point at the built-in HTTP server, which
answers GET and HEAD with a 302 to a presigned S3 URL for that method — for the files the ledger
records, until they expire or are purged (404 without asking S3). Against a real SeaweedFS
bucket that nobody may read anonymously, through a real Prosody and slixmpp's own XEP-0363
client; the redirect's headers are read without following it."""

from __future__ import annotations

import asyncio
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from helpers import DOMAIN, run_cli, seaweedfs_s3, serve_config, upload_and_fetch
from servers import SeaweedFS, anonymous_request, free_ports
from slixmpp_http_upload.config import parse_config, parse_http_settings
from slixmpp_http_upload.credentials import CredentialsUnavailable
from slixmpp_http_upload.http import make_app
from slixmpp_http_upload.ledger import IN_MEMORY, Ledger, SlotRecord
from slixmpp_http_upload.options import ConfigError
from slixmpp_http_upload.s3 import S3Backend
from slixmpp_http_upload.served import ServedFiles
from slixmpp_http_upload.slot import SlotRequest

EXPIRE_AFTER = 4
"""Seconds a ``message`` file is served (``profile`` files are kept)."""
S3_TABLE = {
    "bucket_url": "https://s3.example.org/bucket",
    "region": "eu-west-1",
    "access_key_id": "AK",
    "secret_access_key": "SK",
}


def backend_of(s3: dict[str, Any], http: dict[str, Any] | None = None) -> S3Backend:
    config = parse_config({"http_upload": {"s3": s3}, "http": http or {}})
    backend = S3Backend.from_settings(config.http_upload, config.http_upload.backend_options, "http_upload.s3")
    return backend


def test_redirect_get_urls_are_the_services_put_urls_go_to_s3() -> None:
    backend = backend_of({**S3_TABLE, "downloads": "redirect"}, {"public_url": "https://upload.example.org/files"})
    slot = backend.make_slot(SlotRequest("ça va.png", 10, "image/png", DOMAIN))
    token, name = urlsplit(slot.get_url).path.split("/")[2:]
    assert slot.get_url == f"https://upload.example.org/files/{token}/{name}"
    assert unquote(name) == "ça va.png"
    assert slot.put_url.startswith(f"https://s3.example.org/bucket/{token}/{name}?X-Amz-")
    assert backend.redirect_expiration == 300


def test_direct_is_the_default_and_region_auto_is_accepted() -> None:
    backend = backend_of({**S3_TABLE, "region": "auto"})
    slot = backend.make_slot(SlotRequest("a.txt", 1, None, DOMAIN))
    assert slot.get_url == slot.put_url.partition("?")[0]
    assert "%2Fauto%2Fs3%2Faws4_request" in slot.put_url
    assert backend.redirect_from is None


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("downloads", "proxy", "http_upload.s3.downloads: must be one of 'direct', 'redirect', got 'proxy'"),
        ("redirect_expiration", 0, "http_upload.s3.redirect_expiration: must be an integer from 1 to 604800, got 0"),
        ("redirect_expiration", 604801, "http_upload.s3.redirect_expiration: must be an integer from 1 to 604800"),
    ],
)
def test_bad_redirect_options(option: str, value: Any, message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        backend_of({**S3_TABLE, option: value})
    assert str(raised.value).startswith(message)


def record(key: str, issued: float, expires: float | None, content_type: str | None = "image/png") -> SlotRecord:
    return SlotRecord(key, "alice@localhost", DOMAIN, 10, content_type, "message", issued, expires)


def test_served_files_from_memory_only() -> None:
    ledger = Ledger(IN_MEMORY)
    served = ServedFiles(ledger, clock=lambda: 1000.0)
    ledger.add(record("/b/t1/a.png", 900.0, None))
    ledger.add(record("/b/t2/a.bin", 900.0, 1000.0, None))
    ledger.add(record("/b/t3/a.png", 900.0, 1000.5))
    assert served("/b/t1/a.png") == "image/png"
    assert served("/b/t2/a.bin") is None  # expired at this very second
    assert served("/b/t3/a.png") == "image/png"
    assert served("/b/t9/a.png") is None  # never recorded
    ledger.close()


def test_served_files_the_file_decides(tmp_path: Path) -> None:
    now = [1000.0]
    ledger = Ledger(tmp_path / "ledger.sqlite")
    served = ServedFiles(ledger, clock=lambda: now[0])
    ledger.add(record("/b/old/a.png", 900.0, None))
    ledger.add(record("/b/new/a.png", 999.5, None, None))
    ledger.flush()
    other = Ledger(tmp_path / "ledger.sqlite")  # another process: purge
    other.remove(["/b/old/a.png"], forget=True)
    other.add(record("/b/probe/a.txt", 999.0, 1100.0, "text/plain"))  # another process: check
    other.close()
    assert served("/b/old/a.png") is None  # still in this process's memory, but purged
    assert served("/b/probe/a.txt") == "text/plain"
    assert served("/b/t9/a.png") is None  # never recorded anywhere
    other = Ledger(tmp_path / "ledger.sqlite")  # another process: purge again
    other.remove(["/b/probe/a.txt"], forget=True)
    other.close()
    assert served("/b/probe/a.txt") is None
    ledger.remove(["/b/new/a.png"], forget=True)
    ledger.flush()
    ledger.records["/b/new/a.png"] = record("/b/new/a.png", 999.5, None, None)  # not written yet
    assert served("/b/new/a.png") == ""  # a slot of the last second: memory vouches
    now[0] = 1001.0
    assert served("/b/new/a.png") is None
    served.close()
    ledger.close()


# ------------------------------------------------------------------------ live


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any) -> None:
        return None


def unfollowed(method: str, url: str, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """``(status, headers)`` of ``url`` without following a redirect."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())
    try:
        with opener.open(urllib.request.Request(url, method=method, headers=headers or {}), timeout=10) as answer:
            return answer.status, answer.headers
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers


@pytest.fixture(scope="module")
def private_bucket(seaweedfs: SeaweedFS) -> str:
    """A bucket of its own, which anonymous clients may not read at all (no policy, no ACL)."""
    return seaweedfs.create_bucket(f"private-{secrets.token_hex(4)}")


@pytest.fixture(scope="module")
def redirect_service(
    start_serve: Any, prosody: Any, seaweedfs: SeaweedFS, private_bucket: str
) -> Iterator[tuple[Any, int]]:
    """``serve`` through Prosody with ``downloads = "redirect"`` on the private bucket."""
    (port,) = free_ports(1)
    s3 = {**seaweedfs_s3(seaweedfs), "bucket_url": private_bucket, "downloads": "redirect", "redirect_expiration": 120}
    document = serve_config(prosody, s3, max_file_size=1 << 20, http={"port": port})
    document["http_upload"].update(
        {
            "purposes": ["message", "profile"],
            "expire_after": EXPIRE_AFTER,
            "purpose": {"profile": {"expire_after": "infinity"}},
        }
    )
    process = start_serve(document)
    yield process, port
    process.stop()


async def test_upload_through_prosody_then_get_through_the_redirect(
    redirect_service: tuple[Any, int], prosody: Any, xmpp_clients: Any, tmp_path: Path, private_bucket: str
) -> None:
    _, port = redirect_service
    xmpp = await xmpp_clients.connect(prosody, "alice")
    await xmpp_clients.wait_for_service(xmpp, "upload.localhost")
    path = tmp_path / "photo été.png"
    path.write_bytes(secrets.token_bytes(70_000))
    url = await upload_and_fetch(xmpp, path, "profile")  # the anonymous GET follows the redirect
    assert url.startswith(f"http://127.0.0.1:{port}/")
    object_path = urlsplit(url).path

    # Nobody reads the object itself without a signature.
    assert anonymous_request("GET", private_bucket + object_path)[0] == 403

    status, headers = unfollowed("GET", url, {"Origin": "https://chat.example.org"})
    assert status == 302
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert headers["Cache-Control"] == "no-store"
    location = headers["Location"]
    assert location.startswith(private_bucket + object_path + "?")
    query = parse_qs(urlsplit(location).query)
    assert query["X-Amz-Expires"] == ["120"]
    assert query["response-content-type"] == ["image/png"]  # the declared type, from the ledger
    assert query["response-content-disposition"] == [
        "inline; filename=\"photo _t_.png\"; filename*=UTF-8''photo%20%C3%A9t%C3%A9.png"
    ]
    with urllib.request.urlopen(location) as answer:  # S3 answers with those headers
        assert answer.headers["Content-Type"] == "image/png"
        assert answer.headers["Content-Disposition"] == query["response-content-disposition"][0]
        assert answer.read() == path.read_bytes()

    # A HEAD is redirected to a HEAD-signed URL (a GET-signed one would be refused).
    status, headers = unfollowed("HEAD", url)
    assert status == 302
    head_location = headers["Location"]
    assert anonymous_request("HEAD", head_location)[0] == 200
    assert anonymous_request("HEAD", location)[0] == 403
    async with aiohttp.ClientSession() as session, session.head(url, allow_redirects=True) as followed:
        assert followed.status == 200  # aiohttp keeps HEAD across the redirect (urllib turns it into a GET)
        assert followed.content_length == path.stat().st_size


def test_a_path_that_names_no_slot_is_404_without_a_redirect(redirect_service: tuple[Any, int]) -> None:
    _, port = redirect_service
    for path in ("/nope", "/ABC/x.txt", f"/{'a' * 64}/..", f"/{'a' * 64}/x%2Fy.txt"):
        status, headers = unfollowed("GET", f"http://127.0.0.1:{port}{path}")
        assert status == 404 and "Location" not in headers, path


def test_the_service_takes_no_uploads_with_redirect(redirect_service: tuple[Any, int]) -> None:
    _, port = redirect_service
    status, _ = anonymous_request("PUT", f"http://127.0.0.1:{port}/{'a' * 64}/x.txt", b"x")
    assert status == 405


def test_check_passes_through_the_redirect(redirect_service: tuple[Any, int], private_bucket: str) -> None:
    process, _ = redirect_service
    status, out, err = run_cli("check", "-c", str(process.config), "--origin", "https://chat.example.org")
    lines = out.splitlines()
    assert (status, err) == (0, ""), lines
    assert [line.split()[:2] for line in lines if not line.startswith("warn")] == [
        ["ok", "slot"], ["ok", "preflight"], ["ok", "put"], ["ok", "get"], ["ok", "private"], ["ok", "delete"],
        ["all", "checks"],
    ]
    assert "through the service's redirect" in next(line for line in lines if line.startswith("ok    get"))
    assert "plain S3 URL answers HTTP 403" in next(line for line in lines if line.startswith("ok    private"))


def gone(url: str) -> bool:
    """The service answers 404 itself (no redirect: S3 is not asked)."""
    status, headers = unfollowed("GET", url)
    assert status in (302, 404), status
    return status == 404 and "Location" not in headers


async def test_purged_and_expired_files_are_404(
    redirect_service: tuple[Any, int], prosody: Any, xmpp_clients: Any, tmp_path: Path
) -> None:
    process, _ = redirect_service
    xmpp = await xmpp_clients.connect(prosody, "bob")
    await xmpp_clients.wait_for_service(xmpp, "upload.localhost")
    kept, expiring = tmp_path / "kept.txt", tmp_path / "expiring.txt"
    kept.write_bytes(b"kept until purged\n")
    expiring.write_bytes(b"served for a few seconds\n")
    kept_url = await upload_and_fetch(xmpp, kept, "profile")
    expiring_url = await upload_and_fetch(xmpp, expiring)  # a message: expires
    assert not gone(kept_url) and not gone(expiring_url)

    deadline = time.monotonic() + EXPIRE_AFTER + 30
    while not gone(expiring_url):
        assert time.monotonic() < deadline, "the expired file is still redirected"
        await asyncio.sleep(0.5)
    assert not gone(kept_url)

    status, out, err = await asyncio.to_thread(run_cli, "purge", "-c", str(process.config), "bob@localhost")
    assert status == 0, err
    assert gone(kept_url)  # purged by another process: the ledger file says so at once


async def test_no_credentials_is_503_not_a_crash(tmp_path: Path) -> None:
    class Failing:
        async def current(self) -> Any:
            raise CredentialsUnavailable("the AWS chain found no credentials")

        def resolve(self) -> Any:
            raise CredentialsUnavailable("the AWS chain found no credentials")

    backend = backend_of({**S3_TABLE, "downloads": "redirect"})
    backend.credentials = Failing()
    app = make_app(parse_http_settings({}, tmp_path), backend, lookup=lambda key: "text/plain")
    async with TestClient(TestServer(app)) as client:
        answer = await client.get(f"/{'a' * 64}/x.txt", allow_redirects=False)
        assert (answer.status, answer.headers["Retry-After"]) == (503, "5")
        assert "Location" not in answer.headers
