"""``slixmpp-http-upload check`` against a real S3 server (SeaweedFS): it passes on a good
configuration, leaves nothing behind, and names the cause on a bad one, never printing a secret."""

from __future__ import annotations

import io
import re
import secrets
import socket
from pathlib import Path

import pytest

from helpers import run_cli, write_s3_config
from servers import SeaweedFS
from slixmpp_http_upload import check
from slixmpp_http_upload.check import HttpAnswer
from slixmpp_http_upload.s3 import S3Backend, parse_bucket_url
from slixmpp_http_upload.sigv4 import Credentials

PROBE_PREFIX = "slixmpp-http-upload-check"


def write_config(directory: Path, seaweedfs: SeaweedFS, **s3: str) -> str:
    """The configuration for ``seaweedfs``, ``s3`` overriding its options; URLs signed for 120 s."""
    return write_s3_config(directory, seaweedfs, http_upload={"expiration_time": 120}, **s3)


def run_check(config: str, *secret_values: str) -> tuple[int, list[str]]:
    """Run ``check``; return its exit status and stdout lines. No secret may be printed."""
    status, out, err = run_cli("check", "-c", config)
    for secret in secret_values:
        assert secret not in out and secret not in err, "a secret was printed"
    assert err == ""
    return status, out.splitlines()


def step(lines: list[str], name: str) -> str:
    """The one line reporting step ``name``."""
    found = [line for line in lines if re.match(rf"^(ok|FAIL|skip)\s+{name}\b", line)]
    assert len(found) == 1, lines
    return found[0]


def keys(seaweedfs: SeaweedFS, bucket: str) -> list[str]:
    listing = seaweedfs.client().list_objects_v2(Bucket=bucket)
    return [item["Key"] for item in listing.get("Contents", [])]


def test_check_passes_and_cleans_up(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    config = write_config(tmp_path, seaweedfs)
    status, lines = run_check(config, seaweedfs.secret_key)

    assert status == 0, lines
    assert step(lines, "slot").startswith(f"ok    slot    {seaweedfs.bucket_url}/")
    assert "(PUT URL signed for 120 s)" in step(lines, "slot")
    assert step(lines, "put").startswith("ok    put ")
    assert step(lines, "get").startswith("ok    get ")
    assert step(lines, "delete").startswith("ok    delete ")
    assert lines[-1] == "all checks passed"
    assert not any(line.startswith(("FAIL", "skip")) for line in lines)
    # SeaweedFS here speaks plain http: said, but not a failure.
    assert "warn  https   the URLs are not https: Gajim and other clients refuse such slots" in lines
    # Only the GET URL is shown: no query string, so no credential or signature.
    assert "X-Amz-" not in "\n".join(lines)
    assert not [key for key in keys(seaweedfs, seaweedfs.bucket) if PROBE_PREFIX in key]


def test_check_names_a_wrong_secret(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    wrong = "wrong-" + secrets.token_urlsafe(24)
    config = write_config(tmp_path, seaweedfs, secret_access_key=wrong)
    status, lines = run_check(config, wrong, seaweedfs.secret_key)

    assert status == 1, lines
    put = step(lines, "put")
    assert put.startswith("FAIL  put ")
    assert "HTTP 403 SignatureDoesNotMatch" in put
    assert "check secret_access_key, region and bucket_url" in put
    assert step(lines, "get").startswith("skip  get ")
    assert step(lines, "delete").startswith("skip  delete ")
    assert lines[-1] == "the check failed"


def test_check_names_an_unknown_access_key(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    config = write_config(tmp_path, seaweedfs, access_key_id="AKUNKNOWN" + secrets.token_hex(6).upper())
    status, lines = run_check(config, seaweedfs.secret_key)

    assert status == 1, lines
    put = step(lines, "put")
    assert put.startswith("FAIL  put ")
    assert "HTTP 403 InvalidAccessKeyId" in put
    assert "the server does not know access_key_id" in put


def test_check_names_a_missing_bucket(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    bucket = f"missing-{secrets.token_hex(4)}"
    config = write_config(tmp_path, seaweedfs, bucket_url=f"{seaweedfs.endpoint}/{bucket}")
    status, lines = run_check(config, seaweedfs.secret_key)

    assert status == 1, lines
    assert lines[-1] == "the check failed"
    put = step(lines, "put")
    assert put.startswith("FAIL  put ")
    assert "NoSuchBucket" in put
    assert "the bucket named in bucket_url does not exist" in put


def test_check_names_a_server_that_is_down(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    with socket.socket() as bound:  # held, never listening: nothing else can take the port
        bound.bind(("127.0.0.1", 0))
        port = bound.getsockname()[1]
        config = write_config(tmp_path, seaweedfs, bucket_url=f"http://127.0.0.1:{port}/upload")
        status, lines = run_check(config, seaweedfs.secret_key)

    assert status == 1, lines
    put = step(lines, "put")
    assert put.startswith("FAIL  put ")
    assert f"cannot reach http://127.0.0.1:{port}" in put
    assert "Connection refused" in put
    assert step(lines, "get").startswith("skip  get ")
    assert lines[-1] == "the check failed"


def test_check_names_a_bucket_without_anonymous_read(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    bucket = "private-check"
    assert bucket not in seaweedfs.public_buckets
    config = write_config(tmp_path, seaweedfs, bucket_url=seaweedfs.create_bucket(bucket))
    status, lines = run_check(config, seaweedfs.secret_key)

    assert status == 1, lines
    assert step(lines, "put").startswith("ok    put ")
    get = step(lines, "get")
    assert get.startswith("FAIL  get ")
    assert "HTTP 403 AccessDenied" in get
    assert "anonymous reads are refused: run setup-bucket (a read-only bucket policy)" in get
    # The probe is still deleted with the configured key.
    assert step(lines, "delete").startswith("ok    delete ")
    assert lines[-1] == "the check failed"
    assert not [key for key in keys(seaweedfs, bucket) if PROBE_PREFIX in key]


def test_https_urls_get_no_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    # (no https S3 server here: the HTTP exchanges are answered as a working bucket would)
    answers = {"PUT": HttpAnswer(200, b""), "GET": HttpAnswer(200, check.PROBE), "DELETE": HttpAnswer(204, b"")}
    monkeypatch.setattr(check, "http", lambda method, url, *args, **kwargs: answers[method])
    backend = S3Backend(parse_bucket_url("https://bucket.s3.example.com"), "us-east-1", Credentials("AK", "SK"))
    out = io.StringIO()
    assert check.run_check(backend, "example.com", out)
    assert "warn" not in out.getvalue()
    assert out.getvalue().endswith("all checks passed\n")
