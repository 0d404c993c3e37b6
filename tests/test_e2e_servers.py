"""End to end behind each real XMPP server the README says hosts the component — Prosody 0.12
and ejabberd 23.01 (an ``ejabberd_service`` listener shaped like the README's snippet):
``serve`` as a subprocess, slots on a real SeaweedFS or from the ``local`` backend (the service's
own files and HTTP server), and slixmpp's own XEP-0363 client finding the service through the
server's disco#items, uploading, then an anonymous GET of the file."""

from __future__ import annotations

import asyncio
import re
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit
from xml.etree import ElementTree as ET

import pytest
from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0363.http_upload import FileTooBig

from helpers import DOMAIN, UPLOAD_JID, XmppServer, seaweedfs_s3, serve_config, upload_and_fetch
from servers import SeaweedFS, free_ports

NS = "urn:xmpp:http:upload:0"
MAX_FILE_SIZE = 64 * 1024


@pytest.fixture(scope="module", params=["prosody", "ejabberd"])
def server(request: pytest.FixtureRequest) -> XmppServer:
    """The shared server of each kind, with ``upload.localhost`` and users alice and bob."""
    return request.getfixturevalue(request.param)


@dataclass
class Service:
    process: Any  # conftest's ServeProcess
    url_prefix: str  # where GET URLs point


@pytest.fixture(scope="module", params=["s3", "local"])
def service(request: pytest.FixtureRequest, server: XmppServer, start_serve: Any) -> Iterator[Service]:
    """``serve`` for ``server``, with slots on SeaweedFS or from the ``local`` backend (files in
    ``uploads`` beside the config, served by its own HTTP server); tests wait for it with
    ``wait_for_service``. Stopped before the next one starts: they share the component JID."""
    if request.param == "s3":
        seaweedfs: SeaweedFS = request.getfixturevalue("seaweedfs")
        config = serve_config(server, seaweedfs_s3(seaweedfs), max_file_size=MAX_FILE_SIZE)
        url_prefix = seaweedfs.bucket_url + "/"
    else:
        (port,) = free_ports(1)
        config = serve_config(server, None, max_file_size=MAX_FILE_SIZE, http={"port": port})
        url_prefix = f"http://127.0.0.1:{port}/"
    process = start_serve(config)
    yield Service(process, url_prefix)
    process.stop()


async def alice(server: XmppServer, xmpp_clients: Any) -> ClientXMPP:
    """Alice, logged in once the upload component answers disco#info."""
    xmpp = await xmpp_clients.connect(server, "alice")
    await xmpp_clients.wait_for_service(xmpp, UPLOAD_JID)
    return xmpp


def forms(info: Any) -> list[str]:
    """The FORM_TYPE of each data form in a disco#info answer."""
    return sorted(
        field.findtext("{jabber:x:data}value", "")
        for field in info.xml.iter("{jabber:x:data}field")
        if field.get("var") == "FORM_TYPE"
    )


async def test_the_server_lists_the_service(service: Service, server: XmppServer, xmpp_clients: Any) -> None:
    xmpp = await alice(server, xmpp_clients)
    items = await xmpp.plugin["xep_0030"].get_items(JID(DOMAIN), timeout=5)
    assert UPLOAD_JID in {jid for jid, _node, _name in items["disco_items"]["items"]}
    info = await xmpp.plugin["xep_0030"].get_info(UPLOAD_JID, timeout=5)
    assert NS in info["disco_info"]["features"]


@pytest.mark.parametrize("name", ["photo.jpg", "très cool ünïcode.txt", "50% off #1? a&b+c;d=e.txt"])
async def test_upload_then_anonymous_get(
    name: str, service: Service, server: XmppServer, xmpp_clients: Any, tmp_path: Path
) -> None:
    xmpp = await alice(server, xmpp_clients)
    path = tmp_path / name
    path.write_bytes(secrets.token_bytes(MAX_FILE_SIZE))  # the limit itself is allowed
    url = await upload_and_fetch(xmpp, path)  # discovery through the server's disco#items
    assert url.startswith(service.url_prefix)
    _token, last = urlsplit(url).path.rsplit("/", 2)[-2:]
    assert unquote(last) == name and not set(last) & set(" #?")  # one segment, encoded
    if name == "très cool ünïcode.txt":
        assert last == "tr%C3%A8s%20cool%20%C3%BCn%C3%AFcode.txt"  # as in XEP-0363's example
    assert service.process.running


async def test_too_large_is_refused(service: Service, server: XmppServer, xmpp_clients: Any, tmp_path: Path) -> None:
    xmpp = await alice(server, xmpp_clients)
    path = tmp_path / "big.bin"
    path.write_bytes(b"\0" * (MAX_FILE_SIZE + 1))
    with pytest.raises(FileTooBig), path.open("rb") as file:  # the client's own check, from disco
        await xmpp.plugin["xep_0363"].upload_file(path, input_file=file, domain=JID(DOMAIN), timeout=10)

    with pytest.raises(IqError) as refused:  # and the service's, when a client asks anyway
        await xmpp.plugin["xep_0363"].request_slot(JID(UPLOAD_JID), "big.bin", 10**9, "text/plain", timeout=5)
    error = refused.value.iq["error"]
    assert (error["type"], error["condition"]) == ("modify", "not-acceptable")
    too_large = error.xml.find(f"{{{NS}}}file-too-large")
    assert too_large is not None, ET.tostring(error.xml)
    assert too_large.findtext(f"{{{NS}}}max-file-size") == str(MAX_FILE_SIZE)


def test_wrong_secret_exits_1_with_a_clear_message(
    server: XmppServer, seaweedfs: SeaweedFS, start_serve: Any
) -> None:
    # Both servers answer a bad handshake with the stream error <not-authorized/>.
    config = serve_config(server, seaweedfs_s3(seaweedfs), max_file_size=MAX_FILE_SIZE)
    wrong = config["component"]["secret"] = "wrong-" + server.component_secret
    process = start_serve(config)
    assert process.wait(timeout=10) == 1
    assert f"component {UPLOAD_JID}: the server refused the component secret" in process.stderr
    output = process.stdout + process.stderr
    assert wrong not in output
    assert server.component_secret not in output


async def test_component_serves_again_after_a_server_restart(
    server: XmppServer, seaweedfs: SeaweedFS, start_serve: Any, xmpp_clients: Any, tmp_path: Path
) -> None:
    private = type(server)({UPLOAD_JID: secrets.token_hex(16)})  # this test restarts it
    private.start()
    process = start_serve(serve_config(private, seaweedfs_s3(seaweedfs), max_file_size=MAX_FILE_SIZE))
    try:
        private.register("alice", "alice-password")
        xmpp = await alice(private, xmpp_clients)
        path = tmp_path / "before.txt"
        path.write_bytes(b"before the restart\n")
        await upload_and_fetch(xmpp, path)
        forms_before = forms(await xmpp.plugin["xep_0030"].get_info(UPLOAD_JID, timeout=5))

        await asyncio.to_thread(private.restart)
        restarted = time.monotonic()
        xmpp = await xmpp_clients.connect(private, "alice")
        while True:
            try:
                await xmpp.plugin["xep_0363"].request_slot(UPLOAD_JID, "probe.txt", 5, "text/plain", timeout=2)
                break
            except (IqError, IqTimeout):  # the component is not back yet
                # the back-off doubles from 1 s while the server is down: give it one more round
                assert time.monotonic() - restarted < 30, process.stderr
                await asyncio.sleep(0.2)

        path = tmp_path / "after.txt"
        path.write_bytes(b"after the restart\n")
        await upload_and_fetch(xmpp, path)
        forms_after = forms(await xmpp.plugin["xep_0030"].get_info(UPLOAD_JID, timeout=5))
        assert forms_after == forms_before == sorted(set(forms_before))  # nothing added twice
        assert process.running
        # Whatever the reason logged (a server may close with <system-shutdown/> or just drop the
        # connection): one session, the end of it, one more session.
        log = process.stderr
        assert re.search(r": connected to .*; connecting again in .*: connected to ", log, re.S), log
        assert log.count(f"component {UPLOAD_JID}: connected to") == 2, log
    finally:
        process.stop()
        private.stop()
