"""A real browser on the ``local`` backend, the way Converse.js uploads: headless Chromium on a
page of another origin ``fetch``-PUTs a file to a slot's PUT URL (with the slot's Content-Type,
or an empty one for an unknown type), then ``fetch``-GETs the GET URL and reads the bytes. Both
requests are cross-origin, so the browser sends a CORS preflight before the PUT and refuses any
answer without the right ``Access-Control-Allow-Origin``; with ``cors_origins`` restricted, a
page of another origin is blocked.

``serve`` runs as a subprocess with nothing listening on its component port: the HTTP server
serves while the XMPP side keeps trying to connect. Slots come from ``slixmpp-http-upload urls``."""

from __future__ import annotations

import secrets
from typing import Any

import pytest

from browser import Chromium, StaticSite, put_then_get
from helpers import HttpService, unconnected_component
from servers import anonymous_request, free_ports

NAME = "très cool #1 ü;&=+.bin"


def local_service(start_serve: Any, xmpp_down: int, **http: Any) -> HttpService:
    """``serve`` with the local backend and ``http`` options, its HTTP server on a free port."""
    (http_port,) = free_ports(1)
    document = {
        "component": unconnected_component(xmpp_down),
        "http": {"port": http_port, **http},
        "http_upload": {"expiration_time": 300, "local": {"root": f"uploads-{http_port}"}},
    }
    return HttpService(start_serve, document)


@pytest.fixture(scope="module")
def open_service(start_serve: Any, xmpp_down: int) -> HttpService:
    """The default ``cors_origins``: any origin."""
    return local_service(start_serve, xmpp_down)


@pytest.fixture(scope="module")
def restricted_service(start_serve: Any, xmpp_down: int, web_origins: tuple[StaticSite, StaticSite]) -> HttpService:
    """``cors_origins`` = the first site only."""
    return local_service(start_serve, xmpp_down, cors_origins=[web_origins[0].origin])


@pytest.mark.parametrize("content_type", ["image/png", ""], ids=["typed", "empty-type"])
@pytest.mark.parametrize(
    ("service_name", "site_index"), [("open_service", 1), ("restricted_service", 0)], ids=["any-origin", "allowed-origin"]
)
async def test_cross_origin_put_then_get(
    content_type: str,
    service_name: str,
    site_index: int,
    web_origins: tuple[StaticSite, StaticSite],
    chromium: Chromium,
    request: pytest.FixtureRequest,
) -> None:
    service: HttpService = request.getfixturevalue(service_name)
    body = secrets.token_bytes(200_000) + bytes(range(256))
    put_url, get_url = service.slot(NAME, len(body), content_type)
    assert put_url.startswith(f"http://127.0.0.1:{service.port}/")

    async with chromium.page(web_origins[site_index].url) as page:
        seen = await put_then_get(page, put_url, get_url, body, content_type)
    assert seen.error is None, f"{seen.error}\n{page.console}"
    assert (seen.put_status, seen.get_status) == (201, 200)
    assert seen.body == body
    assert seen.content_type == (content_type or "application/octet-stream")
    assert anonymous_request("GET", get_url) == (200, body)  # and outside the browser


async def test_another_origin_is_blocked_by_the_browser(
    restricted_service: HttpService, web_origins: tuple[StaticSite, StaticSite], chromium: Chromium
) -> None:
    body = b"from another origin\n"
    put_url, get_url = restricted_service.slot(NAME, len(body), "text/plain")
    async with chromium.page(web_origins[1].url) as page:
        seen = await put_then_get(page, put_url, get_url, body, "text/plain")
        assert seen.error == "TypeError: Failed to fetch" and seen.put_status is None, seen
        assert put_url.partition("?")[0] in await page.console_line("blocked by CORS policy")
        # The preflight failed, so the PUT itself never left the browser: nothing was stored.
        assert anonymous_request("GET", get_url)[0] == 404

        # A file uploaded from elsewhere exists, but the page may not read it.
        assert anonymous_request("PUT", put_url, body, {"Content-Type": "text/plain"})[0] == 201
        page.console.clear()
        seen = await put_then_get(page, None, get_url)
        assert seen.error == "TypeError: Failed to fetch" and seen.get_status is None, seen
        assert get_url in await page.console_line("blocked by CORS policy")
