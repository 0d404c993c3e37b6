"""``setup-bucket`` and ``check --origin`` against a real SeaweedFS: fresh buckets that nobody
may read anonymously, set up for web clients, twice (the second run changes nothing), then
checked; and a stand-in server without the bucket APIs, which the command names."""

from __future__ import annotations

import http.server
import json
import re
import secrets
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import run_cli, write_s3_config
from servers import SeaweedFS, anonymous_request
from slixmpp_http_upload.bucket_setup import POLICY_SID

ORIGIN = "https://chat.example.org"
OTHER = "https://elsewhere.example.net"


def fresh_bucket(seaweedfs: SeaweedFS) -> str:
    """A new bucket: no CORS rules, no policy, no anonymous read."""
    return seaweedfs.create_bucket(f"fresh-{secrets.token_hex(4)}")


def cli(*args: str, secret: str) -> tuple[int, list[str], str]:
    status, out, err = run_cli(*args)
    assert secret not in out and secret not in err, "a secret was printed"
    return status, out.splitlines(), err


def step(lines: list[str], name: str) -> str:
    found = [line for line in lines if re.match(rf"^(ok|FAIL|skip|warn)\s+{re.escape(name)}(\s|$)", line)]
    assert len(found) == 1, lines
    return found[0]


def test_setup_twice_then_check_passes(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    bucket_url = fresh_bucket(seaweedfs)
    bucket = bucket_url.rsplit("/", 1)[1]
    config = write_s3_config(tmp_path, seaweedfs, bucket_url=bucket_url)
    secret = seaweedfs.secret_key

    # Before: no anonymous read, so direct downloads fail, naming the fix.
    status, lines, _ = cli("check", "-c", config, "--origin", ORIGIN, secret=secret)
    assert status == 1
    assert step(lines, "get").startswith("FAIL  get     HTTP 403 AccessDenied")
    assert "run setup-bucket" in step(lines, "get")

    status, lines, err = cli("setup-bucket", "-c", config, "--origin", ORIGIN, secret=secret)
    assert (status, err) == (0, "")
    assert lines == [
        f"cors    set: PUT from {ORIGIN}; GET and HEAD from any origin",
        f"policy  set: anonymous GetObject on arn:aws:s3:::{bucket}/* (no listing)",
    ]
    status, lines, err = cli("setup-bucket", "-c", config, "--origin", ORIGIN, secret=secret)
    assert (status, err, lines) == (0, "", ["cors    unchanged", "policy  unchanged"])

    status, lines, _ = cli("check", "-c", config, "--origin", ORIGIN, secret=secret)
    assert status == 0, lines
    assert step(lines, f"preflight {ORIGIN}").startswith("ok    preflight")
    assert step(lines, "put").endswith(f"from {ORIGIN}")
    assert lines[-1] == "all checks passed"
    assert anonymous_request("GET", bucket_url)[0] == 403  # reading, not listing

    # An origin the rules do not name: the preflight fails, naming the fix.
    status, lines, _ = cli("check", "-c", config, "--origin", OTHER, secret=secret)
    assert status == 1
    preflight = step(lines, f"preflight {OTHER}")
    assert preflight.startswith("FAIL  preflight")
    assert "Allow-Methods ''" in preflight  # SeaweedFS answers 200, but allows no PUT
    assert f"run setup-bucket --origin {OTHER}" in preflight

    # Switching to redirect downloads: the policy setup-bucket set goes.
    config = write_s3_config(tmp_path, seaweedfs, bucket_url=bucket_url, downloads="redirect")
    status, lines, _ = cli("setup-bucket", "-c", config, "--origin", ORIGIN, secret=secret)
    assert lines == [
        "cors    unchanged",
        'policy  deleted: anonymous read is not needed with downloads = "redirect"',
    ]
    client = seaweedfs.client()
    with pytest.raises(client.exceptions.ClientError, match="NoSuchBucketPolicy"):
        client.get_bucket_policy(Bucket=bucket)


def test_dry_run_prints_the_documents_and_changes_nothing(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    bucket_url = fresh_bucket(seaweedfs)
    bucket = bucket_url.rsplit("/", 1)[1]
    config = write_s3_config(tmp_path, seaweedfs, bucket_url=bucket_url + "/prefix")
    status, out, err = run_cli("setup-bucket", "-c", config, "--origin", ORIGIN, "--origin", OTHER, "--dry-run")
    assert (status, err) == (0, "")
    cors, _, policy = out.partition("PutBucketPolicy:\n")
    assert cors.startswith("PutBucketCors:\n<?xml")
    assert f"<AllowedOrigin>{ORIGIN}</AllowedOrigin><AllowedOrigin>{OTHER}</AllowedOrigin>" in cors
    assert json.loads(policy)["Statement"] == [
        {"Sid": POLICY_SID, "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject",
         "Resource": f"arn:aws:s3:::{bucket}/prefix/*"}
    ]
    client = seaweedfs.client()
    with pytest.raises(client.exceptions.ClientError, match="NoSuchCORSConfiguration"):
        client.get_bucket_cors(Bucket=bucket)


def test_a_missing_bucket_is_named(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    config = write_s3_config(tmp_path, seaweedfs, bucket_url=f"{seaweedfs.endpoint}/no-such-{secrets.token_hex(3)}")
    status, out, err = run_cli("setup-bucket", "-c", config)
    assert (status, err) == (1, "")
    cors, policy = out.splitlines()
    assert cors.startswith("cors    FAIL: GetBucketCors: HTTP 404 NoSuchBucket")
    assert policy.startswith("policy  FAIL: GetBucketPolicy: HTTP 404 NoSuchBucket")


@pytest.fixture
def no_bucket_apis() -> Iterator[str]:
    """An S3 endpoint that answers every bucket API call ``501 NotImplemented`` (as servers
    without CORS or policy support do)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            body = b"<Error><Code>NotImplemented</Code><Message>not here</Message></Error>"
            self.send_response(501)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_DELETE = answer  # noqa: N815 - the names http.server calls

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/bucket"
    server.shutdown()
    server.server_close()


def test_a_server_without_the_api_is_said_so(tmp_path: Path, seaweedfs: SeaweedFS, no_bucket_apis: str) -> None:
    config = write_s3_config(tmp_path, seaweedfs, bucket_url=no_bucket_apis)
    status, out, err = run_cli("setup-bucket", "-c", config)
    assert (status, err) == (1, "")
    hint = " — set it by hand, see the README's S3 compatibility notes"
    assert out.splitlines() == [
        f"cors    FAIL: this S3 server does not support GetBucketCors (HTTP 501 NotImplemented){hint}",
        f"policy  FAIL: this S3 server does not support GetBucketPolicy (HTTP 501 NotImplemented){hint}",
    ]


def test_origin_must_be_an_origin(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    config = write_s3_config(tmp_path, seaweedfs)
    status, out, err = run_cli("setup-bucket", "-c", config, "--origin", "https://chat.example.org/app", "--dry-run")
    assert (status, out) == (1, "")
    assert err.startswith("slixmpp-http-upload: --origin: 'https://chat.example.org/app' is not an origin")
