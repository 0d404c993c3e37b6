"""Helpers shared by several test modules: configurations, running the CLI, file name
strategies and XMPP clients.  Plain code, no fixtures (those are in ``conftest.py``)."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import logging
import os
import string
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, redirect_stderr, redirect_stdout
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Self
from xml.etree import ElementTree as ET

import pytest
from hypothesis import strategies as st
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout

from servers import Ejabberd, Prosody, SeaweedFS, _port_open, anonymous_request
from slixmpp_http_upload import cli
from slixmpp_http_upload.dispatch import QueueDispatcher
from slixmpp_http_upload.slot import BadRequest, check_filename

DOMAIN = "localhost"  # the test servers' host, and the domain the configurations serve
UPLOAD_JID = "upload.localhost"  # the test servers' external component
XmppServer = Prosody | Ejabberd

# --------------------------------------------------------------- configurations

OFFLINE_S3 = {  # never contacted: presigning does no I/O
    "bucket_url": "http://127.0.0.1:9/bucket",
    "region": "us-east-1",
    "access_key_id": "AK",
    "secret_access_key": "SK",
}
"""An ``[http_upload.s3]`` table for ``serve`` processes whose slots are never used."""


def write_toml(path: Path, document: Mapping[str, Any]) -> Path:
    """Write ``document`` (tables of strings, integers, booleans and lists of them) as TOML."""
    lines: list[str] = []

    def table(name: str, values: Mapping[str, Any]) -> None:
        if name:
            lines.append(f"[{name}]")
        # JSON and TOML write these scalars and arrays alike.
        lines.extend(f"{json.dumps(k)} = {json.dumps(v)}" for k, v in values.items() if not isinstance(v, Mapping))
        for key, value in values.items():
            if isinstance(value, Mapping):
                table(f"{name}.{key}" if name else key, value)

    table("", document)
    path.write_text("\n".join(lines) + "\n")
    return path


def seaweedfs_s3(seaweedfs: SeaweedFS) -> dict[str, str]:
    """The ``[http_upload.s3]`` table for ``seaweedfs``'s bucket and test credentials."""
    return {
        "bucket_url": seaweedfs.bucket_url,
        "region": seaweedfs.region,
        "access_key_id": seaweedfs.access_key,
        "secret_access_key": seaweedfs.secret_key,
    }


def write_s3_config(
    directory: Path, seaweedfs: SeaweedFS, *, http_upload: Mapping[str, Any] | None = None, **s3: Any
) -> str:
    """Write ``config.toml`` in ``directory`` for the CLI: domain ``localhost``, the options
    ``http_upload`` and the S3 table of ``seaweedfs``, where ``s3`` overrides or adds options
    (``bucket_url=...``, ``add_acl=True``) or leaves them out (``secret_access_key=None``);
    return its path."""
    table = {key: value for key, value in {**seaweedfs_s3(seaweedfs), **s3}.items() if value is not None}
    document = {"component": {"domains": [DOMAIN]}, "http_upload": {**(http_upload or {}), "s3": table}}
    return str(write_toml(directory / "config.toml", document))


def serve_config(
    prosody: XmppServer, s3: Mapping[str, str] | None, *, max_file_size: int, **tables: Any
) -> dict[str, Any]:
    """A ``serve`` configuration: the component of ``prosody``, slots from the ``[http_upload.s3]``
    table ``s3`` (such as :func:`seaweedfs_s3`'s) or, with ``s3=None``, from the default ``local``
    backend, and further top-level ``tables`` (such as ``http={"port": ...}``)."""
    return {
        "component": {
            "server": "127.0.0.1",
            "port": prosody.component_port,
            "secret": prosody.component_secret,
            "domains": [DOMAIN],
        },
        "http_upload": {
            "max_file_size": max_file_size,
            "expiration_time": 300,
            **({"s3": s3} if s3 is not None else {}),
        },
        **tables,
    }


def unconnected_component(port: int) -> dict[str, Any]:
    """A ``[component]`` table for domain ``localhost`` whose server never answers (``port`` is
    one nothing listens on, such as the ``xmpp_down`` fixture's): ``serve`` keeps trying to
    connect, and its HTTP server serves all the same."""
    return {"server": "127.0.0.1", "port": port, "secret": "unused", "domains": [DOMAIN]}


class HttpService:
    """``serve`` from ``document`` (started by conftest's ``start_serve``), ready once its HTTP
    server takes connections on ``[http] port``; ``slot()`` signs URLs with ``urls``."""

    def __init__(self, start_serve: Any, document: Mapping[str, Any], timeout: float = 15) -> None:
        self.port: int = document["http"]["port"]
        self.process = start_serve(document)
        self.config = str(self.process.config)
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            assert self.process.running and time.monotonic() < deadline, self.process.stderr
            time.sleep(0.05)

    def slot(self, name: str, size: int, content_type: str) -> tuple[str, str]:
        """The PUT and GET URLs of a new slot for ``localhost``, valid for 300 s, from the
        ``urls`` command (a process of its own: the tests' event loop may be running)."""
        command = [sys.executable, "-m", "slixmpp_http_upload", "urls", "-c", self.config]
        command += [DOMAIN, name, str(size), content_type, "300"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        urls = dict(line.split(": ", 1) for line in done.stdout.splitlines())
        return urls["PutURL"], urls["GetURL"]


def offline_serve_config(port: int) -> dict[str, Any]:
    """``serve`` for ``localhost`` against a stand-in server on 127.0.0.1:``port`` (any secret
    will do), slots up to 1000 bytes from :data:`OFFLINE_S3`."""
    return {
        "component": {"server": "127.0.0.1", "port": port, "secret": "any", "domains": [DOMAIN]},
        "http_upload": {"max_file_size": 1000, "s3": OFFLINE_S3},
    }


@contextmanager
def tmpfs(mount: Path, options: str) -> Iterator[Path]:
    """A tmpfs mounted with ``options`` on ``mount`` (made here), unmounted at the end. We are
    root in the test machines; elsewhere the test is skipped (in CI it fails)."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        why = f"cannot mount a tmpfs: {done.stderr.decode().strip()}"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def run_cli(*args: str) -> tuple[int, str, str]:
    """``slixmpp-http-upload ARGS`` in this process: its exit status, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        status = cli.main(list(args))
    return status, out.getvalue(), err.getvalue()


def awk_field(output: str, pattern: str) -> list[str]:
    """``awk '/<pattern>/ {print $2}'``, the README's recipe: the second whitespace-separated
    field of each line containing ``pattern``."""
    return [line.split()[1] for line in output.splitlines() if pattern in line]


def key_on_another_queue(key: str, workers: int) -> str:
    """A local bare JID that a ``queues`` dispatcher of ``workers`` puts on another queue than ``key``."""
    dispatcher = QueueDispatcher(workers, limit=1)
    candidates = (f"user{n}@localhost" for n in range(1000))
    return next(c for c in candidates if dispatcher.queue_index(c) != dispatcher.queue_index(key))


# --------------------------------------------------------------- file names


def valid_filename(name: str) -> bool:
    try:
        check_filename(name)
    except BadRequest:
        return False
    return True


FILENAME_PUNCTUATION = " +%#?&=;'\"<>[]{}|^`!$*(),:@~-._"


def accepted_filenames(
    *extra_parts: st.SearchStrategy[str], punctuation: str = FILENAME_PUNCTUATION, max_parts: int
) -> st.SearchStrategy[str]:
    """File names that ``check_filename`` accepts, joined from 1 to ``max_parts`` parts: single
    ``punctuation`` characters, accented and non-Latin letters, emoji (with a skin tone, a ZWJ
    sequence, a flag), ASCII words, any character but surrogates and controls, or ``extra_parts``."""
    parts = st.one_of(
        st.sampled_from(list(punctuation)),
        *extra_parts,
        st.sampled_from(list("éèßøÅñçжЯΩ日本語한국عربي")),
        st.sampled_from(["😀", "🎉", "👍🏽", "🏳️\u200d🌈", "🇫🇷"]),
        st.text(string.ascii_letters + string.digits, min_size=1, max_size=8),
        st.characters(exclude_categories=["Cs", "Cc"]),
    )
    return st.lists(parts, min_size=1, max_size=max_parts).map("".join).filter(valid_filename)


# --------------------------------------------------------------- XMPP clients


class ClientPool:
    """The slixmpp clients of one test, with the XEP-0363 client plugin and the plugins it uses;
    ``async with`` (or ``close()``) disconnects them all."""

    PLUGINS = ("xep_0030", "xep_0004", "xep_0128", "xep_0363")

    def __init__(self) -> None:
        self._clients: list[ClientXMPP] = []

    def _new_client(self, server: XmppServer, user: str) -> ClientXMPP:
        """A client for ``user`` of ``server`` (not connected yet) that ``close()`` will end."""
        xmpp = ClientXMPP(server.jid(user), server.users[user])
        xmpp.enable_direct_tls = False  # Prosody's c2s port speaks plaintext, or STARTTLS
        for plugin in self.PLUGINS:
            xmpp.register_plugin(plugin)
        self._clients.append(xmpp)
        return xmpp

    @staticmethod
    async def wait_for_service(xmpp: ClientXMPP, jid: str, timeout: float = 15) -> Any:
        """Ask ``jid`` for disco#info until it answers (a component that is not connected yet
        gets an error from the server); return the answer."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            try:
                return await xmpp.plugin["xep_0030"].get_info(jid, timeout=2)
            except (IqError, IqTimeout):
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def close(self) -> None:
        for xmpp in self._clients:
            xmpp.cancel_connection_attempt()  # a failed client must not retry in the background
            await asyncio.wait_for(xmpp.disconnect(wait=1), 5)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()


class XmppClients(ClientPool):
    """Logged-in slixmpp clients (plaintext loopback) with the XEP-0363 client plugin."""

    async def connect(self, server: Prosody, user: str = "alice", timeout: float = 15) -> ClientXMPP:
        return await self.login(self._new_client(server, user), server, timeout)

    async def login(self, xmpp: ClientXMPP, server: Prosody, timeout: float = 15) -> ClientXMPP:
        """Log in ``xmpp``, a client made elsewhere (such as a bot); disconnected with the others."""
        if xmpp not in self._clients:
            self._clients.append(xmpp)
        xmpp.enable_direct_tls = False
        xmpp.plugin["feature_mechanisms"].unencrypted_scram = True
        outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        xmpp.add_event_handler("session_start", lambda _: outcome.done() or outcome.set_result(True))
        xmpp.add_event_handler("failed_all_auth", lambda _: outcome.done() or outcome.set_result(False))
        xmpp.connect("127.0.0.1", server.c2s_port)
        if not await asyncio.wait_for(outcome, timeout):
            raise AssertionError(f"{xmpp.boundjid.bare} could not log in")
        return xmpp


async def service_user(clients: XmppClients, server: XmppServer, user: str) -> ClientXMPP:
    """``user`` logged in with ``clients`` (the ``xmpp_clients`` fixture) once the upload
    component answers disco#info."""
    xmpp = await clients.connect(server, user)
    await clients.wait_for_service(xmpp, UPLOAD_JID, timeout=30)
    return xmpp


def request_slot(client: ClientXMPP, to: str, filename: str, size: int = 1000) -> Any:
    """Send an XEP-0363 (``:0``) slot request for ``filename`` to ``to``; the future of the answer."""
    iq = client.make_iq_get(ito=to)
    fields = {"filename": filename, "size": str(size), "content-type": "image/jpeg"}
    ET.SubElement(iq.xml, "{urn:xmpp:http:upload:0}request", fields)
    return iq.send(timeout=15)


async def upload_and_fetch(xmpp: ClientXMPP, path: Path, purpose: str | None = None) -> str:
    """Upload ``path`` like a user would (discovery through the server's disco#items; for
    ``purpose``, when given), check that the GET URL serves the same bytes without credentials,
    and return that URL."""
    with path.open("rb") as file:  # given, else slixmpp opens the file and never closes it
        url = await xmpp.plugin["xep_0363"].upload_file(
            path, input_file=file, domain=DOMAIN, purpose=purpose, timeout=10
        )
    assert xmpp.plugin["xep_0363"].upload_service == UPLOAD_JID
    status, body = await asyncio.to_thread(anonymous_request, "GET", url)
    assert (status, body) == (200, path.read_bytes())
    return url


# --------------------------------------------------------------- AWS credentials


AWS_CHAIN_VARIABLES = (
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_DEFAULT_PROFILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "AWS_CONTAINER_AUTHORIZATION_TOKEN", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_ROLE_ARN",
)


def empty_aws_chain(directory: Path) -> dict[str, str | None]:
    """Environment changes (None: unset) that leave the standard AWS credential chain nothing to
    find: no keys, profile, container or web identity, shared files that do not exist, no
    instance metadata."""
    return {
        **dict.fromkeys(AWS_CHAIN_VARIABLES),
        "AWS_CONFIG_FILE": str(directory / "no-aws-config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(directory / "no-aws-credentials"),
        "AWS_EC2_METADATA_DISABLED": "true",
    }


class CredentialsEndpoint:
    """A container-credentials endpoint (what ECS serves at ``AWS_CONTAINER_CREDENTIALS_FULL_URI``)
    on loopback: each GET with the right ``Authorization`` answers the next of ``answers`` (the
    last one again when they run out): a ``(key id, secret, token, seconds to expiry)`` tuple, or
    an HTTP status for a failure, each after ``delay`` seconds. ``fetches`` counts the GETs;
    ``environment`` points botocore here."""

    TOKEN = "container-authorization-token"

    def __init__(self, *answers: tuple[str, str, str, float] | int, delay: float = 0) -> None:
        self.answers = list(answers)
        self.delay = delay
        self.fetches = 0
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
                endpoint.fetches += 1
                time.sleep(endpoint.delay)
                answer = endpoint.answers.pop(0) if len(endpoint.answers) > 1 else endpoint.answers[0]
                if self.headers.get("Authorization") != CredentialsEndpoint.TOKEN:
                    answer = 401
                if isinstance(answer, int):
                    self.send_response(answer)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                key_id, secret, token, expires_in = answer
                expiration = datetime.now(timezone.utc) + timedelta(seconds=expires_in)
                body = json.dumps({
                    "AccessKeyId": key_id, "SecretAccessKey": secret, "Token": token,
                    "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
                }).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def environment(self) -> dict[str, str]:
        return {
            "AWS_CONTAINER_CREDENTIALS_FULL_URI": f"http://127.0.0.1:{self.server.server_port}/credentials",
            "AWS_CONTAINER_AUTHORIZATION_TOKEN": self.TOKEN,
        }

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


# --------------------------------------------------------------- asyncio errors


class AsyncioErrors(logging.Handler):
    """Collects what asyncio logs at ERROR: "Task was destroyed but it is pending!",
    "Task exception was never retrieved", exceptions in callbacks."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())
