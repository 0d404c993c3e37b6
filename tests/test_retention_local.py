"""Expiry and purge with the ``local`` backend, end to end: ``serve`` (its own HTTP server)
behind a real Prosody, slixmpp's own XEP-0363 client uploading. An expired file is refused at
once and its folder leaves the root; ``purge`` removes one user's files and nobody else's."""

from __future__ import annotations

import asyncio
import secrets
import time
from pathlib import Path
from typing import Any

import pytest
from slixmpp import ClientXMPP

from helpers import run_cli, serve_config, service_user, upload_and_fetch
from servers import Prosody, anonymous_request, free_ports

USERS = {"frank": "frank-password", "grace": "grace-password", "heidi": "heidi-password"}
EXPIRE_AFTER = 4
DEADLINE = 75.0


@pytest.fixture(scope="module")
def service(prosody: Prosody, start_serve: Any) -> Any:
    for user, password in USERS.items():
        prosody.register(user, password)
    (http_port,) = free_ports(1)
    document = serve_config(prosody, None, max_file_size=1 << 20, http={"port": http_port})
    document["http_upload"].update(
        {
            "expiration_time": 2,
            "purposes": ["message", "profile"],
            "expire_after": EXPIRE_AFTER,
            "purpose": {"profile": {"expire_after": "infinity"}},
        }
    )
    return start_serve(document)


async def upload(xmpp: ClientXMPP, tmp_path: Path, name: str, purpose: str | None = None) -> str:
    path = tmp_path / name
    path.write_bytes(secrets.token_bytes(100))
    return await upload_and_fetch(xmpp, path, purpose)


def stored(service: Any, url: str) -> bool:
    """Whether the token's folder is still in the root."""
    token = url.split("/")[-2]
    return (service.config.parent / "uploads" / token).exists()


async def test_expired_file_refused_then_deleted(service: Any, prosody: Prosody, xmpp_clients: Any, tmp_path: Path) -> None:
    frank = await service_user(xmpp_clients, prosody, "frank")
    url = await upload(frank, tmp_path, "photo.jpg")
    kept = await upload(frank, tmp_path, "avatar.png", purpose="profile")
    deadline = time.monotonic() + DEADLINE
    while stored(service, url) or (await asyncio.to_thread(anonymous_request, "GET", url))[0] != 404:
        assert time.monotonic() < deadline, "the expired file is still there"
        await asyncio.sleep(0.5)
    assert (await asyncio.to_thread(anonymous_request, "GET", kept))[0] == 200
    assert stored(service, kept)


async def test_purge_removes_exactly_one_users_files(
    service: Any, prosody: Prosody, xmpp_clients: Any, tmp_path: Path
) -> None:
    grace = await service_user(xmpp_clients, prosody, "grace")
    heidi = await service_user(xmpp_clients, prosody, "heidi")
    graces = [await upload(grace, tmp_path, f"g{n}.png", purpose="profile") for n in range(2)]
    heidis = await upload(heidi, tmp_path, "h.png", purpose="profile")
    await asyncio.sleep(0.5)  # the ledger's writer thread in serve
    code, out, err = await asyncio.to_thread(run_cli, "purge", "-c", str(service.config), "grace@localhost")
    assert code == 0, err
    assert out.splitlines()[-1] == "2 files of grace@localhost deleted (200 bytes)"
    for url in graces:
        assert (await asyncio.to_thread(anonymous_request, "GET", url))[0] == 404
        assert not stored(service, url)
    assert (await asyncio.to_thread(anonymous_request, "GET", heidis))[0] == 200
