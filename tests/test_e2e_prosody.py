"""End to end: ``serve`` (a subprocess) behind a real Prosody, slots on a real SeaweedFS, and
slixmpp's own XEP-0363 client uploading through them, then an anonymous GET of the file."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

import pytest
from slixmpp import ClientXMPP
from slixmpp.exceptions import IqError, IqTimeout
from slixmpp.plugins.xep_0363.http_upload import FileTooBig

from helpers import UPLOAD_JID, serve_config, upload_and_fetch
from servers import Prosody, SeaweedFS

NS = "urn:xmpp:http:upload:0"
MAX_FILE_SIZE = 64 * 1024


@pytest.fixture(scope="module")
def service(prosody: Prosody, seaweedfs: SeaweedFS, start_serve: Any) -> Any:
    """``serve`` for the shared Prosody; tests wait for it with ``wait_for_service``."""
    return start_serve(serve_config(prosody, seaweedfs, max_file_size=MAX_FILE_SIZE))


async def alice(prosody: Prosody, xmpp_clients: Any) -> ClientXMPP:
    """Alice, logged in once the upload component answers disco#info."""
    xmpp = await xmpp_clients.connect(prosody, "alice")
    await xmpp_clients.wait_for_service(xmpp, UPLOAD_JID)
    return xmpp


def forms(info: Any) -> list[str]:
    """The FORM_TYPE of each data form in a disco#info answer."""
    return sorted(
        field.findtext("{jabber:x:data}value", "")
        for field in info.xml.iter("{jabber:x:data}field")
        if field.get("var") == "FORM_TYPE"
    )


@pytest.mark.parametrize("name", ["photo.jpg", "très cool ünïcode.txt"])
async def test_upload_then_anonymous_get(
    name: str, service: Any, prosody: Prosody, xmpp_clients: Any, tmp_path: Path
) -> None:
    xmpp = await alice(prosody, xmpp_clients)
    path = tmp_path / name
    path.write_bytes(secrets.token_bytes(MAX_FILE_SIZE))  # the limit itself is allowed
    url = await upload_and_fetch(xmpp, path)
    if name.isascii():
        assert url.endswith("/photo.jpg")
    else:
        assert url.endswith("/tr%C3%A8s%20cool%20%C3%BCn%C3%AFcode.txt")
    assert service.running


async def test_too_large_is_refused(service: Any, prosody: Prosody, xmpp_clients: Any, tmp_path: Path) -> None:
    xmpp = await alice(prosody, xmpp_clients)
    path = tmp_path / "big.bin"
    path.write_bytes(b"\0" * (MAX_FILE_SIZE + 1))
    with pytest.raises(FileTooBig), path.open("rb") as file:  # the client's own check, from disco
        await xmpp.plugin["xep_0363"].upload_file(path, input_file=file, domain="localhost", timeout=10)

    with pytest.raises(IqError) as refused:  # and the service's, when a client asks anyway
        await xmpp.plugin["xep_0363"].request_slot(UPLOAD_JID, "big.bin", 10**9, "text/plain", timeout=5)
    error = refused.value.iq["error"]
    assert (error["type"], error["condition"]) == ("modify", "not-acceptable")
    too_large = error.xml.find(f"{{{NS}}}file-too-large")
    assert too_large is not None, ET.tostring(error.xml)
    assert too_large.findtext(f"{{{NS}}}max-file-size") == str(MAX_FILE_SIZE)


async def test_component_serves_again_after_prosody_restart(
    seaweedfs: SeaweedFS, start_serve: Any, xmpp_clients: Any, tmp_path: Path
) -> None:
    server = Prosody({UPLOAD_JID: secrets.token_hex(16)})  # private: this test restarts it
    try:
        server.start()
        server.register("alice", "alice-password")
        process = start_serve(serve_config(server, seaweedfs, max_file_size=MAX_FILE_SIZE))
        xmpp = await alice(server, xmpp_clients)
        path = tmp_path / "before.txt"
        path.write_bytes(b"before the restart\n")
        await upload_and_fetch(xmpp, path)
        forms_before = forms(await xmpp.plugin["xep_0030"].get_info(UPLOAD_JID, timeout=5))

        started = time.monotonic()
        await asyncio.to_thread(server.restart)
        xmpp = await xmpp_clients.connect(server, "alice")
        while True:
            try:
                await xmpp.plugin["xep_0363"].request_slot(UPLOAD_JID, "probe.txt", 5, "text/plain", timeout=2)
                break
            except (IqError, IqTimeout):  # the component is not back yet
                assert time.monotonic() - started < 15, process.stderr
                await asyncio.sleep(0.2)
        elapsed = time.monotonic() - started
        assert elapsed < 15

        path = tmp_path / "after.txt"
        path.write_bytes(b"after the restart\n")
        await upload_and_fetch(xmpp, path)
        forms_after = forms(await xmpp.plugin["xep_0030"].get_info(UPLOAD_JID, timeout=5))
        assert forms_after == forms_before == sorted(set(forms_before))  # nothing added twice
        assert process.running
        assert "the session ended; connecting again" in process.stderr
    finally:
        server.stop()
