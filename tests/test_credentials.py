"""Where the S3 backend's keys come from, against a real S3 server (SeaweedFS).

Keys in the file or in their own environment variables are static. With none, the standard AWS
chain through botocore: here a container-credentials endpoint on loopback (the format ECS
serves) whose temporary credentials come close to their expiry during the test and are
replaced, while slots keep working. SeaweedFS checks a session token as one of its own STS
tokens, so these temporary credentials carry an empty token (it travels in the PUT URL
otherwise: see test_config.py and test_botocore_agreement.py).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from helpers import DOMAIN, CredentialsEndpoint, awk_field, empty_aws_chain, run_cli, write_s3_config
from servers import SeaweedFS, anonymous_request
from slixmpp_http_upload.backends import create_backend
from slixmpp_http_upload.config import parse_upload_settings
from slixmpp_http_upload.credentials import AwsChainCredentials, CredentialsUnavailable, StaticCredentials
from slixmpp_http_upload.s3 import S3Backend
from slixmpp_http_upload.slot import Slot, SlotRequest

REFRESH_WINDOW = 15 * 60
"""botocore refreshes temporary credentials when they expire within this many seconds."""
MARGIN = 4
"""Seconds until the first credentials enter that window."""
BODY = b"temporary credentials\n"
REQUEST = SlotRequest("creds.txt", len(BODY), "text/plain", DOMAIN)


@pytest.fixture
def aws_chain(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing for the AWS chain to find, until a test points it somewhere."""
    for name, value in empty_aws_chain(tmp_path).items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name, raising=False)


def chain_backend(seaweedfs: SeaweedFS) -> S3Backend:
    """The S3 backend of a configuration that names no key."""
    settings = parse_upload_settings({"s3": {"bucket_url": seaweedfs.bucket_url, "region": seaweedfs.region}})
    backend = create_backend(settings)
    assert isinstance(backend, S3Backend) and isinstance(backend.credentials, AwsChainCredentials)
    return backend


def key_id(slot: Slot) -> str:
    return parse_qs(urlsplit(slot.put_url).query)["X-Amz-Credential"][0].split("/")[0]


def upload(slot: Slot) -> int:
    headers = {"Content-Type": REQUEST.content_type, "Content-Length": str(len(BODY))}
    status, _ = anonymous_request("PUT", slot.put_url, BODY, headers)
    return status


async def test_temporary_credentials_are_replaced_and_slots_keep_working(
    aws_chain: None, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch
) -> None:
    (first_key, first_secret), (second_key, second_secret) = seaweedfs.spare_keys
    answers = [(first_key, first_secret, "", REFRESH_WINDOW + MARGIN), (second_key, second_secret, "", 3600)]
    with CredentialsEndpoint(*answers) as endpoint:
        for name, value in endpoint.environment.items():
            monkeypatch.setenv(name, value)
        backend = chain_backend(seaweedfs)
        assert endpoint.fetches == 0  # the factory does no I/O

        slot = await backend.create_slot(REQUEST)
        assert (key_id(slot), endpoint.fetches) == (first_key, 1)
        assert upload(slot) == 200

        await asyncio.sleep(MARGIN + 1)  # the first credentials are now due for replacement
        slot = await backend.create_slot(REQUEST)
        assert (key_id(slot), endpoint.fetches) == (second_key, 2)
        assert upload(slot) == 200
        assert anonymous_request("GET", slot.get_url) == (200, BODY)

        slots = await asyncio.gather(*(backend.create_slot(REQUEST) for _ in range(5)))
        assert {key_id(slot) for slot in slots} == {second_key}
        assert endpoint.fetches == 2  # fresh credentials are not fetched again


async def test_the_chain_failing_is_a_clear_error(aws_chain: None, seaweedfs: SeaweedFS, monkeypatch) -> None:
    with CredentialsEndpoint(500) as endpoint:
        for name, value in endpoint.environment.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(CredentialsUnavailable, match="^the AWS credential chain failed: .*500"):
            await chain_backend(seaweedfs).create_slot(REQUEST)
    monkeypatch.delenv("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    with pytest.raises(CredentialsUnavailable, match="^no AWS credentials: "):
        await chain_backend(seaweedfs).create_slot(REQUEST)


def test_urls_without_any_credentials(aws_chain: None, seaweedfs: SeaweedFS, tmp_path: Path) -> None:
    config = write_s3_config(tmp_path, seaweedfs, access_key_id=None, secret_access_key=None)
    status, out, err = run_cli("urls", "-c", config, DOMAIN, "a.txt", "1", "", "60")
    assert (status, out) == (1, "")
    assert err.startswith("slixmpp-http-upload: no AWS credentials: ") and err.count("\n") == 1


def test_without_botocore_no_key_is_a_configuration_error(
    aws_chain: None, seaweedfs: SeaweedFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "botocore.session", None)  # as if botocore were not installed
    config = write_s3_config(tmp_path, seaweedfs, access_key_id=None, secret_access_key=None)
    status, _, err = run_cli("urls", "-c", config, DOMAIN, "a.txt", "1", "", "60")
    assert status == 2
    assert "http_upload.s3.access_key_id: is required (or set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, " in err


def urls(config: str) -> Slot:
    status, out, err = run_cli("urls", "-c", config, DOMAIN, REQUEST.filename, str(len(BODY)), "text/plain", "60")
    assert (status, err) == (0, "")
    [put_url], [get_url] = awk_field(out, "PutURL:"), awk_field(out, "GetURL:")
    return Slot(put_url, get_url)


def test_each_key_falls_back_to_its_own_variable(
    aws_chain: None, seaweedfs: SeaweedFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKID-NOT-THIS-ONE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    key_id_only = write_s3_config(tmp_path, seaweedfs, secret_access_key=None)
    slot = urls(key_id_only)
    assert key_id(slot) == seaweedfs.access_key and "X-Amz-Security-Token" not in slot.put_url
    assert upload(slot) == 200  # signed with the secret from the environment

    monkeypatch.setenv("AWS_SESSION_TOKEN", "a-token")
    assert "X-Amz-Security-Token=a-token" in urls(key_id_only).put_url  # the token goes with its secret
    slot = urls(write_s3_config(tmp_path, seaweedfs))  # both keys in the file: not with theirs
    assert "X-Amz-Security-Token" not in slot.put_url
    assert upload(slot) == 200


def test_static_keys_are_static(aws_chain: None, seaweedfs: SeaweedFS, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweedfs.secret_key)
    settings = parse_upload_settings({"s3": {"bucket_url": seaweedfs.bucket_url, "region": seaweedfs.region}})
    backend = create_backend(settings)
    assert isinstance(backend, S3Backend) and isinstance(backend.credentials, StaticCredentials)
    assert upload(asyncio.run(backend.create_slot(REQUEST))) == 200


async def test_a_failing_refresh_is_not_tried_for_every_slot(aws_chain: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """In the 15 minutes before the keys expire, botocore tries to replace them on each use and
    goes on with the old ones when that fails. With the endpoint down, that must not be a
    fetch (in a thread, one at a time, each slot waiting its turn) for every slot."""
    answers = [("AKIDFIRST", "first-secret", "", REFRESH_WINDOW + 2), 500]
    with CredentialsEndpoint(*answers) as endpoint:
        for name, value in endpoint.environment.items():
            monkeypatch.setenv(name, value)
        settings = parse_upload_settings({"s3": {"bucket_url": "http://127.0.0.1:9/bucket", "region": "us-east-1"}})
        backend = create_backend(settings)
        assert key_id(await backend.create_slot(REQUEST)) == "AKIDFIRST"
        await asyncio.sleep(3)  # now inside botocore's refresh window; the endpoint answers 500
        slots = [await backend.create_slot(REQUEST) for _ in range(20)]
        assert {key_id(slot) for slot in slots} == {"AKIDFIRST"}  # still valid: used meanwhile
        tried = endpoint.fetches - 1
        assert 1 <= tried <= 3, f"{tried} fetches for 20 slots"  # one refresh (botocore may retry)
