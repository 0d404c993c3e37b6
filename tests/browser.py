"""A real browser for the tests: Debian's headless Chromium driven over the DevTools protocol.

Why the DevTools protocol and not Playwright: it needs nothing beyond aiohttp (already a test
dependency) and the browser itself, and its ``Target``/``Page``/``Runtime`` commands are stable
across Chromium releases, so Debian's security updates of ``chromium`` cannot outrun the test
driver the way they can outrun a Playwright release pinned to its own browser build.

Use::

    async with Chromium() as browser, StaticSite() as site, browser.page(site.url) as page:
        result = await page.evaluate("fetch(...).then(r => r.status)")
        page.console  # what the browser logged (CORS refusals land here)
        seen = await put_then_get(page, put_url, get_url, body, content_type)  # as Converse.js

Everything listens on 127.0.0.1 only; the browser runs in its own process group with a fresh
profile in a temporary directory, and both are gone after ``close()``.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
from aiohttp import web

from servers import LOOPBACK, ServerError, _stop_process_group

__all__ = ["Chromium", "BrowserPage", "StaticSite", "FetchResult", "put_then_get", "find_chromium", "CHROMIUM_FLAGS"]

# Headless, as root, without any network activity of the browser's own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def find_chromium() -> str | None:
    """Debian's ``chromium`` (``/usr/bin/chromium``), or None."""
    return shutil.which("chromium", path="/usr/bin") or shutil.which("chromium")


class BrowserPage:
    """One tab, attached in flat mode: ``evaluate`` runs JavaScript in the page."""

    def __init__(self, browser: Chromium, session_id: str) -> None:
        self._browser = browser
        self.session_id = session_id
        self.console: list[str] = []  # Log.entryAdded and console messages, in order

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        return await self._browser.send(method, session_id=self.session_id, **params)

    async def navigate(self, url: str, timeout: float = 15) -> None:
        """Load ``url`` and wait for its load event."""
        loaded = self._browser.wait_event("Page.loadEventFired", self.session_id)
        answer = await self.send("Page.navigate", url=url)
        if "errorText" in answer:
            loaded.cancel()
            raise ServerError(f"Chromium could not load {url}: {answer['errorText']}")
        await asyncio.wait_for(loaded, timeout)

    async def evaluate(self, expression: str, timeout: float = 30) -> Any:
        """The value of ``expression`` (awaited when it is a promise), as JSON data; a thrown
        exception raises ``AssertionError`` with its description."""
        answer = await asyncio.wait_for(
            self.send("Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True), timeout
        )
        if "exceptionDetails" in answer:
            details = answer["exceptionDetails"]
            raise AssertionError(details.get("exception", {}).get("description") or details["text"])
        return answer["result"].get("value")

    async def console_line(self, text: str, timeout: float = 5) -> str:
        """The first console line containing ``text``, waiting for it (the browser logs a CORS
        refusal around the time the script sees the rejection, not always before)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not (lines := [line for line in self.console if text in line]):
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"no console line with {text!r} within {timeout} s: {self.console}")
            await asyncio.sleep(0.05)
        return lines[0]

    def _event(self, method: str, params: dict[str, Any]) -> None:
        if method == "Log.entryAdded":
            self.console.append(params["entry"]["text"])
        elif method == "Runtime.consoleAPICalled":
            self.console.append(" ".join(str(arg.get("value", arg.get("description", ""))) for arg in params["args"]))


@dataclass
class FetchResult:
    """What a page's script saw of a PUT then a GET (``error`` is the rejection's text when a
    ``fetch`` failed, as when the browser blocks it by CORS; then the later fields are unset)."""

    put_status: int | None = None
    get_status: int | None = None
    content_type: str | None = None
    body: bytes | None = None
    error: str | None = None


# A Converse.js upload: PUT the bytes with the slot's Content-Type (an empty header when the
# type is unknown), then GET them back; both cross-origin, so CORS applies to each.
_PUT_THEN_GET = """(async (putUrl, getUrl, data, contentType, doPut) => {
    const result = {};
    try {
        if (doPut) {
            const bytes = Uint8Array.from(atob(data), c => c.charCodeAt(0));
            const put = await fetch(putUrl, {method: "PUT", body: bytes, headers: {"Content-Type": contentType}});
            result.put_status = put.status;
        }
        const get = await fetch(getUrl);
        result.get_status = get.status;
        result.content_type = get.headers.get("Content-Type");
        const blob = await get.blob();
        const url = await new Promise(done => {
            const reader = new FileReader();
            reader.onload = () => done(reader.result);
            reader.readAsDataURL(blob);
        });
        result.body = url.slice(url.indexOf(",") + 1);
    } catch (error) {
        result.error = String(error);
    }
    return result;
})"""


async def put_then_get(
    page: BrowserPage, put_url: str | None, get_url: str, body: bytes = b"", content_type: str = ""
) -> FetchResult:
    """In ``page``, ``fetch`` PUT ``body`` to ``put_url`` with ``Content-Type: content_type``
    (``""``: an empty header, as Converse.js sends for an unknown type), then ``fetch`` GET
    ``get_url`` and read the bytes back; ``put_url=None`` only GETs."""
    arguments = [put_url or "", get_url, base64.b64encode(body).decode(), content_type, put_url is not None]
    seen = await page.evaluate(f"{_PUT_THEN_GET}(...{json.dumps(arguments)})")
    if seen.get("body") is not None:
        seen["body"] = base64.b64decode(seen["body"])
    return FetchResult(**seen)


class Chromium:
    """Headless Chromium with a fresh profile, reached over its DevTools WebSocket."""

    def __init__(self, executable: str | None = None) -> None:
        self.executable = executable or find_chromium()
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._waiters: list[tuple[str, str | None, asyncio.Future[dict[str, Any]]]] = []
        self._pages: dict[str, BrowserPage] = {}

    @property
    def log(self) -> str:
        """What the browser process wrote to stdout/stderr."""
        assert self._tmp is not None
        return (Path(self._tmp.name) / "chromium.log").read_text(errors="replace")

    async def start(self, timeout: float = 30) -> None:
        if self.executable is None:
            raise ServerError("chromium not found (apt-get install chromium)")
        self._tmp = tempfile.TemporaryDirectory(prefix="chromium-")
        profile = Path(self._tmp.name) / "profile"
        with open(Path(self._tmp.name) / "chromium.log", "wb") as out:
            self._proc = subprocess.Popen(
                [
                    self.executable,
                    *CHROMIUM_FLAGS,
                    f"--user-data-dir={profile}",
                    f"--remote-debugging-address={LOOPBACK}",
                    "--remote-debugging-port=0",
                    "about:blank",
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        # Chromium writes the port it chose and the browser target's path into the profile.
        active_port = profile / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not (active_port.exists() and len(active_port.read_text().split()) == 2):
            if self._proc.poll() is not None:
                raise ServerError(f"chromium exited with status {self._proc.returncode}\n{self.log}")
            if loop.time() > deadline:
                raise ServerError(f"chromium did not open its DevTools port within {timeout} s\n{self.log}")
            await asyncio.sleep(0.05)
        port, path = active_port.read_text().split()
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(f"ws://{LOOPBACK}:{port}{path}", max_msg_size=0)
        self._reader = asyncio.create_task(self._read())

    @asynccontextmanager
    async def page(self, url: str) -> AsyncIterator[BrowserPage]:
        """A new tab showing ``url`` (loaded), its console collected from the start; closed
        on leaving the ``async with``."""
        target = await self.send("Target.createTarget", url="about:blank")
        attached = await self.send("Target.attachToTarget", targetId=target["targetId"], flatten=True)
        page = self._pages[attached["sessionId"]] = BrowserPage(self, attached["sessionId"])
        try:
            for domain in ("Page", "Runtime", "Log"):
                await page.send(f"{domain}.enable")
            await page.navigate(url)
            yield page
        finally:
            del self._pages[page.session_id]
            await self.send("Target.closeTarget", targetId=target["targetId"])

    async def send(self, method: str, *, session_id: str | None = None, **params: Any) -> dict[str, Any]:
        """Send one DevTools command and return its result; a protocol error raises ``ServerError``."""
        assert self._ws is not None, "start() first"
        message: dict[str, Any] = {"id": next(self._ids), "method": method, "params": params}
        if session_id is not None:
            message["sessionId"] = session_id
        answer = self._answers[message["id"]] = asyncio.get_running_loop().create_future()
        await self._ws.send_str(json.dumps(message))
        return await answer

    def wait_event(self, method: str, session_id: str | None = None) -> asyncio.Future[dict[str, Any]]:
        """A future for the next event ``method`` (of ``session_id``'s page, if given)."""
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.append((method, session_id, future))
        return future

    async def _read(self) -> None:
        assert self._ws is not None
        async for message in self._ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data = json.loads(message.data)
            if "id" in data:
                answer = self._answers.pop(data["id"])
                if "error" in data:
                    answer.set_exception(ServerError(f"DevTools error: {data['error']}"))
                else:
                    answer.set_result(data.get("result", {}))
                continue
            method, params, session_id = data["method"], data.get("params", {}), data.get("sessionId")
            if session_id in self._pages:
                self._pages[session_id]._event(method, params)
            for waiter in [w for w in self._waiters if w[0] == method and w[1] in (None, session_id)]:
                self._waiters.remove(waiter)
                if not waiter[2].done():
                    waiter[2].set_result(params)
        closed = ServerError(f"the DevTools connection closed\n{self.log}")
        for future in [*self._answers.values(), *(w[2] for w in self._waiters)]:
            if not future.done():
                future.set_exception(closed)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await self._reader
        if self._http is not None:
            await self._http.close()
        if self._proc is not None:
            await asyncio.to_thread(_stop_process_group, self._proc, 5)
        if self._tmp is not None:
            self._tmp.cleanup()

    async def __aenter__(self) -> Self:
        try:
            await self.start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()


class StaticSite:
    """A tiny web site on its own loopback port — another origin than the upload server — whose
    one page (``url``) is an empty HTML document, for scripts that a browser page runs."""

    PAGE = b"<!doctype html><meta charset=utf-8><title>another origin</title>"

    def __init__(self) -> None:
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def origin(self) -> str:
        return self.url.rstrip("/")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._page)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, LOOPBACK, 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://{LOOPBACK}:{port}/"

    async def _page(self, _request: web.Request) -> web.Response:
        return web.Response(body=self.PAGE, content_type="text/html")

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
