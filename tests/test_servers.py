"""Tests of the test infrastructure itself: the real SeaweedFS and Prosody."""

from __future__ import annotations

import asyncio
import secrets
import urllib.parse

import slixmpp

from servers import Prosody, SeaweedFS, _port_open, anonymous_request


# ----------------------------------------------------------------- SeaweedFS


def test_seaweedfs_presigned_put_then_anonymous_get(seaweedfs: SeaweedFS) -> None:
    key = f"infra/{secrets.token_hex(8)}.bin"
    body = secrets.token_bytes(1000)
    url = seaweedfs.client().generate_presigned_url(
        "put_object",
        Params={"Bucket": seaweedfs.bucket, "Key": key, "ContentType": "application/octet-stream"},
        ExpiresIn=300,
    )
    query = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)
    assert query["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert url.startswith(seaweedfs.bucket_url + "/")

    status, _ = anonymous_request("PUT", url, body, {"Content-Type": "application/octet-stream"})
    assert status == 200

    status, got = anonymous_request("GET", f"{seaweedfs.bucket_url}/{key}")
    assert (status, got) == (200, body)


def test_seaweedfs_refuses_anonymous_put(seaweedfs: SeaweedFS) -> None:
    url = f"{seaweedfs.bucket_url}/infra/{secrets.token_hex(8)}"
    status, _ = anonymous_request("PUT", url, b"nope", {"Content-Type": "text/plain"})
    assert status == 403
    assert anonymous_request("GET", url)[0] == 404


def test_seaweedfs_rejects_tampered_signature(seaweedfs: SeaweedFS) -> None:
    url = seaweedfs.client().generate_presigned_url(
        "put_object", Params={"Bucket": seaweedfs.bucket, "Key": "infra/tampered"}, ExpiresIn=300
    )
    tampered = url.replace("infra/tampered", "infra/other")
    assert anonymous_request("PUT", tampered, b"x")[0] == 403


# ------------------------------------------------------------------- Prosody


async def _login(prosody: Prosody, user: str, password: str) -> bool:
    """Log in over plaintext loopback; True on session start, False on auth failure."""
    xmpp = slixmpp.ClientXMPP(prosody.jid(user), password)
    xmpp.enable_direct_tls = False
    xmpp.plugin["feature_mechanisms"].unencrypted_scram = True
    outcome: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    def finish(result: bool) -> None:
        if not outcome.done():
            outcome.set_result(result)

    xmpp.add_event_handler("session_start", lambda _: finish(True))
    xmpp.add_event_handler("failed_all_auth", lambda _: finish(False))
    xmpp.connect("127.0.0.1", prosody.c2s_port)
    try:
        return await asyncio.wait_for(outcome, 15)
    finally:
        xmpp.disconnect()
        await asyncio.wait_for(xmpp.disconnected, 5)


async def test_prosody_client_login(prosody: Prosody) -> None:
    assert await _login(prosody, "alice", prosody.users["alice"])


async def test_prosody_wrong_password_fails(prosody: Prosody) -> None:
    assert not await _login(prosody, "bob", "not-" + prosody.users["bob"])


async def test_prosody_component_connects(prosody: Prosody) -> None:
    component = slixmpp.ComponentXMPP(
        prosody.component_jid, prosody.component_secret, "127.0.0.1", prosody.component_port
    )
    started = asyncio.get_running_loop().create_future()
    component.add_event_handler("session_start", lambda _: started.done() or started.set_result(True))
    component.connect("127.0.0.1", prosody.component_port)
    try:
        assert await asyncio.wait_for(started, 15)
    finally:
        component.disconnect()
        await asyncio.wait_for(component.disconnected, 5)


async def test_prosody_restart_keeps_ports_and_accounts() -> None:
    server = Prosody(http_file_share=True)
    try:
        server.start()
        server.register("carol", "carol-password")
        server.restart()
        assert _port_open(server.http_port)  # the HTTP module came back on its port too
        assert await _login(server, "carol", "carol-password")
    finally:
        server.stop()
    assert not _port_open(server.c2s_port)  # really stopped, not just forgotten
