"""The browser test of the ``local`` backend (``test_browser_cors.py``) against SeaweedFS buckets
set up by ``setup-bucket``: headless Chromium on a page of another origin ``fetch``-PUTs a file
to the presigned S3 URL (a CORS preflight first), then ``fetch``-GETs it back — from the bucket
itself with ``direct`` downloads (its read-only policy), or through the service's redirect with
``redirect`` (the bucket stays private; after the cross-origin redirect the browser sends
``Origin: null``, which the GET rule allows)."""

from __future__ import annotations

import secrets
import subprocess
import sys
from typing import Any

import pytest

from browser import Chromium, StaticSite, put_then_get
from helpers import DOMAIN, HttpService, run_cli, seaweedfs_s3, unconnected_component, write_toml
from servers import SeaweedFS, anonymous_request, free_ports

NAME = "très cool #1 ü;&=+.bin"


def slot(config: str, name: str, size: int, content_type: str) -> tuple[str, str]:
    """A slot's PUT and GET URLs from the ``urls`` command (a process of its own)."""
    command = [sys.executable, "-m", "slixmpp_http_upload", "urls", "-c", config, DOMAIN, name, str(size)]
    done = subprocess.run([*command, content_type, "300"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    urls = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    return urls["PutURL"], urls["GetURL"]


def s3_document(seaweedfs: SeaweedFS, xmpp_down: int, downloads: str) -> dict[str, Any]:
    """``serve``'s configuration for a fresh bucket (no anonymous read, no CORS rules)."""
    bucket_url = seaweedfs.create_bucket(f"browser-{downloads}-{secrets.token_hex(3)}")
    (port,) = free_ports(1)
    return {
        "component": unconnected_component(xmpp_down),
        "http": {"port": port},
        "http_upload": {
            "expiration_time": 300,
            "s3": {**seaweedfs_s3(seaweedfs), "bucket_url": bucket_url, "downloads": downloads},
        },
    }


def set_up(document: dict[str, Any], directory: Any, origin: str) -> str:
    """Write the configuration and run ``setup-bucket --origin ORIGIN`` on it; its path."""
    config = str(write_toml(directory / f"{document['http']['port']}.toml", document))
    status, out, err = run_cli("setup-bucket", "-c", config, "--origin", origin)
    assert status == 0 and out.startswith("cors    set: "), (out, err)
    return config


@pytest.mark.parametrize("content_type", ["image/png", ""], ids=["typed", "empty-type"])
async def test_direct_bucket_set_up_for_the_page(
    content_type: str,
    seaweedfs: SeaweedFS,
    xmpp_down: int,
    web_origins: tuple[StaticSite, StaticSite],
    chromium: Chromium,
    tmp_path: Any,
) -> None:
    site = web_origins[0]
    config = set_up(s3_document(seaweedfs, xmpp_down, "direct"), tmp_path, site.origin)
    body = secrets.token_bytes(100_000)
    put_url, get_url = slot(config, NAME, len(body), content_type)
    async with chromium.page(site.url) as page:
        seen = await put_then_get(page, put_url, get_url, body, content_type)
    assert seen.error is None, f"{seen.error}\n{page.console}"
    assert (seen.put_status, seen.get_status, seen.body) == (200, 200, body)
    assert anonymous_request("GET", get_url) == (200, body)


async def test_private_bucket_read_through_the_redirect(
    seaweedfs: SeaweedFS,
    xmpp_down: int,
    start_serve: Any,
    web_origins: tuple[StaticSite, StaticSite],
    chromium: Chromium,
    tmp_path: Any,
) -> None:
    site = web_origins[0]
    document = s3_document(seaweedfs, xmpp_down, "redirect")
    set_up(document, tmp_path, site.origin)
    service = HttpService(start_serve, document)
    body = secrets.token_bytes(100_000)
    put_url, get_url = service.slot(NAME, len(body), "image/png")
    assert get_url.startswith(f"http://127.0.0.1:{service.port}/")
    async with chromium.page(site.url) as page:
        seen = await put_then_get(page, put_url, get_url, body, "image/png")
    assert seen.error is None, f"{seen.error}\n{page.console}"
    assert (seen.put_status, seen.get_status, seen.body) == (200, 200, body)
    assert anonymous_request("GET", put_url.partition("?")[0])[0] == 403  # the bucket stays private

    # A page of an origin setup-bucket was not told about may not PUT.
    put_url, _ = service.slot(NAME, len(body), "image/png")
    async with chromium.page(web_origins[1].url) as page:
        seen = await put_then_get(page, put_url, get_url, body, "image/png")
        assert seen.error == "TypeError: Failed to fetch" and seen.put_status is None, seen
