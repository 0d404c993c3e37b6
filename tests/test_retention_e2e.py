"""Purposes, limits, expiry and purge end to end: ``serve`` as a subprocess behind a real
Prosody, slots on a real SeaweedFS, slixmpp's own XEP-0363 client, and the ``purge``/``usage``
commands on the ledger that ``serve`` writes. The tests run in file order and share one
``serve`` (restarted once in the middle: every record and every count must survive it)."""

from __future__ import annotations

import asyncio
import secrets
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from slixmpp.exceptions import IqError
from slixmpp.plugins.xep_0363.http_upload import PurposeNotSupported

from helpers import UPLOAD_JID, run_cli, seaweedfs_s3, serve_config, service_user, upload_and_fetch
from servers import Prosody, SeaweedFS, anonymous_request

NS = "urn:xmpp:http:upload:0"
USERS = {"carol": "carol-password", "dave": "dave-password", "erin": "erin-password"}
EXPIRE_AFTER = 6
"""Seconds a ``message`` file is kept (``profile`` files are kept for ever)."""
SWEEP_DEADLINE = 75.0
"""A file must be gone within a minute of its expiry (plus the test's own polling)."""


@pytest.fixture(scope="module")
def users(prosody: Prosody) -> dict[str, str]:
    for user, password in USERS.items():
        prosody.register(user, password)
    return USERS


class Service:
    """The module's ``serve``; ``restart()`` stops it and starts it again on the same files."""

    def __init__(self, start_serve: Any, document: dict[str, Any]) -> None:
        self.start_serve = start_serve
        self.document = document
        self.process = start_serve(document)

    @property
    def config(self) -> Path:
        return self.process.config

    def restart(self) -> None:
        self.process.stop()
        self.process = self.start_serve(self.document)


@pytest.fixture(scope="module")
def service(prosody: Prosody, seaweedfs: SeaweedFS, start_serve: Any, users: dict[str, str]) -> Service:
    document = serve_config(prosody, seaweedfs_s3(seaweedfs), max_file_size=1 << 20)
    document["http_upload"].update(
        {
            "expiration_time": 60,
            "purposes": ["message", "profile"],
            "expire_after": EXPIRE_AFTER,
            "rate_limit": {"slots": 5, "seconds": 300},
            "purpose": {"profile": {"expire_after": "infinity", "max_file_size": 4096}},
        }
    )
    return Service(start_serve, document)


def status(url: str) -> int:
    return anonymous_request("GET", url)[0]


async def cli(*args: str) -> tuple[int, str, str]:
    return await asyncio.to_thread(run_cli, *args)


def a_file(tmp_path: Path, name: str, size: int = 100) -> Path:
    path = tmp_path / name
    path.write_bytes(secrets.token_bytes(size))
    return path


async def test_profile_accepted_and_kept_unserved_purpose_refused(
    service: Service, prosody: Prosody, xmpp_clients: Any, tmp_path: Path
) -> None:
    carol = await service_user(xmpp_clients, prosody, "carol")
    avatar = await upload_and_fetch(carol, a_file(tmp_path, "avatar.png"), purpose="profile")
    with pytest.raises(PurposeNotSupported):
        await upload_and_fetch(carol, a_file(tmp_path, "post.txt"), purpose="permanent")
    await asyncio.sleep(EXPIRE_AFTER + 1)
    assert await asyncio.to_thread(status, avatar) == 200
    code, out, _ = await cli("usage", "-c", str(service.config), "carol@localhost")
    assert (code, out) == (0, "carol@localhost: 1 files, 100 bytes\n  profile: 1 files, 100 bytes\n")


async def test_sixth_slot_in_five_minutes(service: Service, prosody: Prosody, xmpp_clients: Any, tmp_path: Path) -> None:
    dave = await service_user(xmpp_clients, prosody, "dave")
    first = time.time()
    await upload_and_fetch(dave, a_file(tmp_path, "kept.png"), purpose="profile")
    for n in range(4):
        await dave.plugin["xep_0363"].request_slot(UPLOAD_JID, f"f{n}.txt", 10, timeout=10)
    with pytest.raises(IqError) as refused:
        await dave.plugin["xep_0363"].request_slot(UPLOAD_JID, "f5.txt", 10, timeout=10)
    error = refused.value.iq["error"]
    assert (error["type"], error["condition"]) == ("wait", "resource-constraint")
    assert error["text"] == "Rate limit reached: at most 5 files in 5 minutes."
    stamp = error.xml.find(f"{{{NS}}}retry").get("stamp")
    retry = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S%z").timestamp()
    assert first + 300 - 1 <= retry <= first + 300 + 5, (stamp, first)


async def test_expired_message_file_is_deleted_from_s3(
    service: Service, prosody: Prosody, xmpp_clients: Any, tmp_path: Path
) -> None:
    erin = await service_user(xmpp_clients, prosody, "erin")
    url = await upload_and_fetch(erin, a_file(tmp_path, "photo.jpg"))
    deadline = time.monotonic() + SWEEP_DEADLINE
    while await asyncio.to_thread(status, url) == 200:
        assert time.monotonic() < deadline, "the expired file is still served"
        await asyncio.sleep(1)
    assert await asyncio.to_thread(status, url) == 404
    await asyncio.sleep(0.5)  # serve's ledger writer: the deleted file's record is written as gone
    code, out, _ = await cli("usage", "-c", str(service.config), "erin@localhost")
    assert (code, out) == (0, "erin@localhost: 0 files, 0 bytes\n")


async def test_restart_keeps_records_and_counts(
    service: Service, prosody: Prosody, xmpp_clients: Any, tmp_path: Path
) -> None:
    before = await cli("usage", "-c", str(service.config), "dave@localhost")
    await asyncio.to_thread(service.restart)
    dave = await service_user(xmpp_clients, prosody, "dave")
    with pytest.raises(IqError) as refused:  # the rate limit still counts the slots of before
        await dave.plugin["xep_0363"].request_slot(UPLOAD_JID, "again.txt", 10, timeout=10)
    assert refused.value.iq["error"]["condition"] == "resource-constraint"
    assert await cli("usage", "-c", str(service.config), "dave@localhost") == before
    assert "profile: 1 files, 100 bytes" in before[1]


async def test_purge_removes_exactly_one_users_files(
    service: Service, prosody: Prosody, xmpp_clients: Any, tmp_path: Path
) -> None:
    carol = await service_user(xmpp_clients, prosody, "carol")
    erin = await service_user(xmpp_clients, prosody, "erin")
    carols = [await upload_and_fetch(carol, a_file(tmp_path, f"c{n}.png"), purpose="profile") for n in range(2)]
    erins = await upload_and_fetch(erin, a_file(tmp_path, "e.png"), purpose="profile")
    await asyncio.sleep(0.5)  # the ledger's writer thread in serve
    code, out, err = await cli("purge", "-c", str(service.config), "carol@localhost")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[-1] == "3 files of carol@localhost deleted (300 bytes)"
    assert len(lines) == 4 and all(line.startswith("deleted /") and "carol@localhost" in line for line in lines[:3])
    for url in carols:
        assert await asyncio.to_thread(status, url) == 404
    assert await asyncio.to_thread(status, erins) == 200
    code, out, _ = await cli("usage", "-c", str(service.config), "carol@localhost")
    assert out == "carol@localhost: 0 files, 0 bytes\n"


def test_serve_says_where_the_ledger_is(service: Service) -> None:
    assert f"ledger {service.config.parent / 'slixmpp-http-upload-ledger.sqlite'}: " in service.process.stderr
