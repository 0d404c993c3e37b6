"""The ``urls`` command's slots against a real S3 server (SeaweedFS).

Every slot comes from the real CLI (``slixmpp-http-upload urls -c CONFIG ...``) and its URLs
are taken from the output the way the README's shell recipe does (``awk '/PutURL:/ {print $2}'``).
The uploads use ``http.client`` directly, so exactly the headers a test names are sent: a
standard XEP-0363 client sends Content-Type (when it declared one) and Content-Length, nothing
else.

SeaweedFS checks the signature, the expiry and the signed headers, but it also accepts SigV2
and paths signed double-encoded (see docs/s3-sigv4.md): a successful upload here proves the
slot works, the encoding itself is proven against botocore in test_botocore_agreement.py.
"""

from __future__ import annotations

import http.client
import secrets
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from helpers import DOMAIN, accepted_filenames, awk_field, run_cli, write_s3_config
from servers import SeaweedFS
from slixmpp_http_upload.s3 import object_name


# ------------------------------------------------------------------ helpers


def slot_urls(config: str, filename: str, size: int, content_type: str, expiration: int = 300) -> tuple[str, str]:
    """Run ``urls`` and return (PutURL, GetURL)."""
    positionals = [DOMAIN, filename, str(size), content_type, str(expiration)]
    # argparse would take a positional starting with "-" for an option: end the options first.
    separator = ["--"] if any(value.startswith("-") for value in positionals) else []
    status, out, err = run_cli("urls", "-c", config, *separator, *positionals)
    assert status == 0, err
    assert err == ""
    [put_url], [get_url] = awk_field(out, "PutURL:"), awk_field(out, "GetURL:")
    return put_url, get_url


def request(
    method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> tuple[int, bytes]:
    """One plain HTTP request sending only Host and ``headers`` (no default Content-Type,
    no Accept-Encoding); the path and query go on the wire exactly as in ``url``."""
    parts = urlsplit(url)
    assert parts.scheme == "http"
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.putrequest(method, target, skip_accept_encoding=True)
        for name, value in (headers or {}).items():
            connection.putheader(name, value)
        connection.endheaders(body)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def client_headers(content_type: str, length: int) -> dict[str, str]:
    """What a standard XEP-0363 client sends with its PUT."""
    headers = {"Content-Length": str(length)}
    if content_type:
        headers["Content-Type"] = content_type
    return headers


def query(url: str) -> dict[str, list[str]]:
    return parse_qs(urlsplit(url).query, keep_blank_values=True)


def assert_not_stored(*urls: str) -> None:
    for url in urls:
        status, body = request("GET", url)
        assert status in (403, 404), (url, status, body[:300])


def assert_refused(status: int, body: bytes, code: str) -> None:
    """S3 (and SeaweedFS) refuse with 403 and an XML error naming ``code``."""
    assert status == 403, (status, body[:300])
    assert f"<Code>{code}</Code>".encode() in body, body[:300]


@pytest.fixture
def config(tmp_path: Path, seaweedfs: SeaweedFS) -> str:
    return write_s3_config(tmp_path, seaweedfs)


# --------------------------------------------------------- the round trip


filenames = accepted_filenames(
    st.sampled_from(["%20", "%2F", "%25", "+", "a+b", "..", "~user", "#frag", "?q=1&x=2"]),
    st.sampled_from(["/", "\\", "a/b", "c\\d"]),
    max_parts=12,
)
content_types = st.one_of(
    st.just(""),
    st.sampled_from(
        [
            "text/plain",
            "text/plain; charset=utf-8",
            "image/png",
            "image/svg+xml",
            "application/octet-stream",
            "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
            'multipart/mixed; boundary="a b"',
            "text/plain;  charset=utf-8",
        ]
    ),
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=30),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(filename=filenames, body=st.binary(min_size=1, max_size=3000), content_type=content_types)
def test_slot_round_trip(config: str, filename: str, body: bytes, content_type: str) -> None:
    # Python 3.11's argparse drops a positional that is exactly "--", even after a "--".
    assume("--" not in (filename, content_type))
    put_url, get_url = slot_urls(config, filename, len(body), content_type)

    assert query(put_url)["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert put_url.partition("?")[0] == get_url
    assert unquote(urlsplit(get_url).path.rsplit("/", 1)[1]) == object_name(filename)

    status, answer = request("PUT", put_url, body, client_headers(content_type, len(body)))
    assert status == 200, answer[:500]
    assert request("GET", get_url) == (200, body)


@pytest.mark.parametrize("content_type", ["application/pdf", ""])
def test_plain_upload_and_anonymous_download(config: str, content_type: str) -> None:
    body = secrets.token_bytes(1000)
    put_url, get_url = slot_urls(config, "Report 2024 (final).pdf", len(body), content_type)
    assert get_url.endswith("/Report%202024%20%28final%29.pdf")
    status, answer = request("PUT", put_url, body, client_headers(content_type, len(body)))
    assert status == 200, answer
    assert request("GET", get_url) == (200, body)


# S3 servers treat "/" (even as %2F) and SeaweedFS also "\\" as folder separators: both become
# "_" in the object key, and the upload must work.


@pytest.mark.parametrize("filename", ["a/b.txt", "dir/", "a//b", "a\\b.txt", "\\leading", "x\\\\y", "\\", "trailing\\"])
def test_filename_with_a_folder_separator(config: str, filename: str) -> None:
    body = b"separator"
    put_url, get_url = slot_urls(config, filename, len(body), "text/plain")
    assert unquote(urlsplit(get_url).path.rsplit("/", 1)[1]) == filename.replace("/", "_").replace("\\", "_")
    status, answer = request("PUT", put_url, body, client_headers("text/plain", len(body)))
    assert status == 200, answer[:300]
    assert request("GET", get_url) == (200, body)


# --------------------------------------------------------------- refusals


def test_refuses_another_content_type(config: str) -> None:
    body = b"<svg/>"
    put_url, get_url = slot_urls(config, "picture.png", len(body), "image/png")
    status, answer = request("PUT", put_url, body, client_headers("image/svg+xml", len(body)))
    assert_refused(status, answer, "SignatureDoesNotMatch")
    assert_not_stored(get_url)


def test_refuses_a_missing_content_type(config: str) -> None:
    body = b"no type"
    put_url, get_url = slot_urls(config, "typed.txt", len(body), "text/plain")
    status, answer = request("PUT", put_url, body, client_headers("", len(body)))
    assert_refused(status, answer, "SignatureDoesNotMatch")
    assert_not_stored(get_url)


@pytest.mark.parametrize("delta", [1, 1000, -1])
def test_refuses_a_body_of_another_size(config: str, delta: int) -> None:
    declared = 10
    body = secrets.token_bytes(declared + delta)
    put_url, get_url = slot_urls(config, "sized.bin", declared, "application/octet-stream")
    status, answer = request("PUT", put_url, body, client_headers("application/octet-stream", len(body)))
    assert_refused(status, answer, "SignatureDoesNotMatch")
    assert_not_stored(get_url)


def test_refuses_a_tampered_signature(config: str) -> None:
    body = b"tampered"
    put_url, get_url = slot_urls(config, "tampered.txt", len(body), "text/plain")
    head, _, signature = put_url.rpartition("&X-Amz-Signature=")
    assert head and len(signature) == 64
    flipped = signature[:10] + ("0" if signature[10] != "0" else "1") + signature[11:]
    tampered = f"{head}&X-Amz-Signature={flipped}"
    status, answer = request("PUT", tampered, body, client_headers("text/plain", len(body)))
    assert_refused(status, answer, "SignatureDoesNotMatch")
    assert_not_stored(get_url)
    # The untouched URL still works: the refusal was the flipped digit.
    assert request("PUT", put_url, body, client_headers("text/plain", len(body)))[0] == 200


def test_refuses_an_expired_url(config: str) -> None:
    body = b"late"
    put_url, get_url = slot_urls(config, "late.txt", len(body), "text/plain", expiration=1)
    assert query(put_url)["X-Amz-Expires"] == ["1"]
    time.sleep(2.5)
    status, answer = request("PUT", put_url, body, client_headers("text/plain", len(body)))
    assert_refused(status, answer, "AccessDenied")
    assert b"<Message>Request has expired</Message>" in answer, answer[:300]
    assert_not_stored(get_url)


def test_refuses_a_put_url_reused_for_another_key(config: str) -> None:
    body = b"elsewhere"
    put_url, get_url = slot_urls(config, "mine.txt", len(body), "text/plain")
    path, _, query_string = put_url.partition("?")
    prefix, token, _ = path.rsplit("/", 2)
    other_token = secrets.token_hex(len(token) // 2)
    others = [
        f"{prefix}/{token}/theirs.txt",  # same token, another file name
        f"{prefix}/{other_token}/mine.txt",  # same file name, another token
        f"{prefix}/mine.txt",  # the token dropped
    ]
    for other in others:
        status, answer = request("PUT", f"{other}?{query_string}", body, client_headers("text/plain", len(body)))
        assert_refused(status, answer, "SignatureDoesNotMatch")
    assert_not_stored(get_url, *others)


def test_refuses_another_method(config: str) -> None:
    body = b"x"
    put_url, get_url = slot_urls(config, "method.txt", len(body), "text/plain")
    assert request("PUT", put_url, body, client_headers("text/plain", len(body)))[0] == 200
    status, answer = request("DELETE", put_url)
    assert_refused(status, answer, "SignatureDoesNotMatch")
    assert request("GET", get_url) == (200, body)


# --------------------------------------------------------------- add_acl


def test_add_acl_needs_no_extra_header(tmp_path: Path, seaweedfs: SeaweedFS) -> None:
    config = write_s3_config(tmp_path, seaweedfs, add_acl=True)
    body = secrets.token_bytes(200)
    put_url, get_url = slot_urls(config, "public ünïcode.bin", len(body), "application/octet-stream")
    parameters = query(put_url)
    assert parameters["x-amz-acl"] == ["public-read"]
    assert parameters["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"]
    assert "x-amz-acl" not in parameters["X-Amz-SignedHeaders"][0].split(";")

    # Only what a standard client sends: no x-amz-acl header.
    plain = {"Content-Type": "application/octet-stream", "Content-Length": "200"}
    status, answer = request("PUT", put_url, body, plain)
    assert status == 200, answer
    assert request("GET", get_url) == (200, body)

    # The ACL value is signed: a URL that drops or changes it is refused.
    for tampered in (
        put_url.replace("&x-amz-acl=public-read", ""),
        put_url.replace("x-amz-acl=public-read", "x-amz-acl=public-read-write"),
    ):
        assert tampered != put_url
        status, answer = request("PUT", tampered, body, plain)
        assert_refused(status, answer, "SignatureDoesNotMatch")
