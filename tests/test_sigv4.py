"""The SigV4 query signer against published vectors, and its building blocks."""

from __future__ import annotations

import hashlib
import hmac
import re
from calendar import timegm
from urllib.parse import parse_qsl, unquote

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from slixmpp_http_upload import sigv4

AWS_DOC = sigv4.Credentials("AKIAIOSFODNN7EXAMPLE", "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")
MONGOOSEIM = sigv4.Credentials("AKIAIAOAONIULXQGMOUA", "CG5fGqG0/n6NCPJ10FylpdgRnuV52j8IZvU7BSj8")
MIM_HOST = "s3-eu-west-1.amazonaws.com"


@pytest.mark.parametrize(
    "method, uri, headers, credentials, region, when, expires, expected",
    [
        pytest.param(
            "GET", "/test.txt", {"host": "examplebucket.s3.amazonaws.com"}, AWS_DOC, "us-east-1",
            (2013, 5, 24, 0, 0, 0), 86400,
            "aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404",
            id="aws-doc-get",
        ),
        pytest.param(
            "PUT", "/testbucket/test/key", {"host": MIM_HOST}, MONGOOSEIM, "eu-west-1",
            (2014, 1, 2, 0, 0, 0), 3600,
            "85bf825e9b67d7838f354b74d97253317584919d8a77b7b50675c2005f003f1f",
            id="mongooseim-put",
        ),
        pytest.param(
            "PUT", "/testbucket/test/key", {"host": MIM_HOST, "content-length": "12"}, MONGOOSEIM, "eu-west-1",
            (2014, 1, 2, 0, 0, 0), 3600,
            "0ac4c8569e7a9e50af1a34db59678b4f23b98ff9734719b2727fe2e971626d72",
            id="mongooseim-put-content-length",
        ),
        pytest.param(
            "PUT", "/%E2%99%A0%E2%99%A3%E2%99%A5%E2%99%A6/test/key", {"host": MIM_HOST}, MONGOOSEIM, "eu-west-1",
            (2017, 1, 3, 14, 47, 32), 900,
            "384a2f2a8f9f799abdd633971e48f9e100236d6be25a66513b59ea9dea43e76b",
            id="mongooseim-put-unicode-path",
        ),
    ],
)
def test_published_vectors(method, uri, headers, credentials, region, when, expires, expected):
    query = sigv4.presign_query(
        method=method, canonical_uri=uri, headers=headers, credentials=credentials,
        region=region, expires=expires, now=timegm(when),
    )
    params = parse_qsl(query, strict_parsing=True)
    assert params[-1] == ("X-Amz-Signature", expected)
    day = "%04d%02d%02d" % when[:3]
    assert dict(params) == {
        "X-Amz-Algorithm": "AWS4-HMAC-SHA256",
        "X-Amz-Credential": f"{credentials.access_key_id}/{day}/{region}/s3/aws4_request",
        "X-Amz-Date": "%sT%02d%02d%02dZ" % (day, *when[3:]),
        "X-Amz-Expires": str(expires),
        "X-Amz-SignedHeaders": ";".join(sorted(headers)),
        "X-Amz-Signature": expected,
    }


def test_unicode_vector_path_is_uri_encode_of_raw_path():
    encoded = sigv4.uri_encode("/♠♣♥♦/test/key", keep_slash=True)
    assert encoded == "/%E2%99%A0%E2%99%A3%E2%99%A5%E2%99%A6/test/key"


@pytest.mark.parametrize(
    "raw, keep_slash, encoded",
    [
        ("\n", False, "%0A"),
        ("\x00\x01\x0f", False, "%00%01%0F"),
        ("\x7f", False, "%7F"),
        ("ABCXYZabcxyz0189-._~", False, "ABCXYZabcxyz0189-._~"),
        (" +%#?&=;:@!$'\"*(),[]", False, "%20%2B%25%23%3F%26%3D%3B%3A%40%21%24%27%22%2A%28%29%2C%5B%5D"),
        ("a/b/c", False, "a%2Fb%2Fc"),
        ("a/b/c", True, "a/b/c"),
        ("/x y/", True, "/x%20y/"),
        ("é", False, "%C3%A9"),
        ("Grüße.txt", False, "Gr%C3%BC%C3%9Fe.txt"),
        ("日本", False, "%E6%97%A5%E6%9C%AC"),
        ("😀", False, "%F0%9F%98%80"),
        ("👍🏽", False, "%F0%9F%91%8D%F0%9F%8F%BD"),
    ],
)
def test_uri_encode(raw, keep_slash, encoded):
    assert sigv4.uri_encode(raw, keep_slash=keep_slash) == encoded


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(exclude_categories=["Cs"])), st.booleans())
def test_uri_encode_property(raw, keep_slash):
    encoded = sigv4.uri_encode(raw, keep_slash=keep_slash)
    unreserved = r"A-Za-z0-9\-._~/" if keep_slash else r"A-Za-z0-9\-._~"
    assert re.fullmatch(rf"([{unreserved}]|%[0-9A-F]{{2}})*", encoded)
    assert unquote(encoded, errors="strict") == raw


def test_amz_date_is_utc_whole_seconds():
    assert sigv4.amz_date(timegm((2024, 2, 29, 23, 59, 59)) + 0.999) == "20240229T235959Z"
    assert sigv4.amz_date(0) == "19700101T000000Z"


def test_signing_key_matches_the_aws_example():
    # AWS's worked example of deriving a signing key (the IAM service, 2012-02-15).
    key = sigv4.signing_key("wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "20120215", "us-east-1", "iam")
    assert key.hex() == "f4780e2d9f65fa895f9c67b32ce1baf0b0d8a43505a000a1a9e090d414db404d"


@given(key=st.binary(min_size=0, max_size=200), message=st.binary(max_size=300))
@example(key=b"k" * 65, message=b"a key longer than SHA-256's block is hashed first (RFC 2104)")
def test_hmac_sha256_is_hmac_sha256(key: bytes, message: bytes) -> None:
    signer = sigv4.HmacSha256(key)
    assert signer.digest(message) == hmac.digest(key, message, "sha256")
    assert signer.digest(message) == signer.digest(message)  # the key's state is copied, never used up


def test_presigner_derives_the_signing_key_once_a_day(monkeypatch: pytest.MonkeyPatch) -> None:
    days: list[str] = []
    derive = sigv4.signing_key
    monkeypatch.setattr(sigv4, "signing_key", lambda secret, day, *rest: days.append(day) or derive(secret, day, *rest))
    presigner = sigv4.Presigner(AWS_DOC, "us-east-1")
    midnight = timegm((2024, 1, 1, 0, 0, 0))
    for now in (midnight, midnight + 1, midnight + 86399, midnight + 86400, midnight + 86401):
        presigner.presign("PUT", "/key", "host:h\n", "host", 60, now=now)
    assert days == ["20240101", "20240102"]


@pytest.mark.parametrize(
    "headers, block, signed",
    [
        ({"Host": "h"}, "host:h\n", "host"),
        (
            {"Content-Type": "  text/plain;   charset=utf-8 \t", "HOST": " h ", "content-length": "12"},
            "content-length:12\ncontent-type:text/plain; charset=utf-8\nhost:h\n",
            "content-length;content-type;host",
        ),
        ({"x-amz-meta-a": "a \t\t b    c", "host": "h"}, "host:h\nx-amz-meta-a:a b c\n", "host;x-amz-meta-a"),
    ],
)
def test_canonical_headers_fold_whitespace(headers, block, signed):
    assert sigv4.canonical_headers(headers) == (block, signed)


def test_folded_header_value_signs_the_same():
    def sign(content_type):
        return sigv4.presign_query(
            method="PUT", canonical_uri="/b/k", headers={"host": "h", "content-type": content_type},
            credentials=MONGOOSEIM, region="eu-west-1", expires=60, now=0,
        )

    assert sign("  text/plain;   charset=utf-8 ") == sign("text/plain; charset=utf-8")
    assert sign("text/plain") != sign("text/html")


def test_canonical_query_string_sorts_by_encoded_name():
    params = [("b", "1"), ("a b", "x/y"), ("A", "3"), ("a", "2"), ("a", "1")]
    assert sigv4.canonical_query_string(params) == "A=3&a=1&a=2&a%20b=x%2Fy&b=1"


def test_session_token_and_extra_params_are_signed():
    def query(**kwargs):
        return sigv4.presign_query(
            method="PUT", canonical_uri="/b/k", headers={"host": "h"}, region="eu-west-1",
            expires=60, now=0, **kwargs,
        )

    plain = dict(parse_qsl(query(credentials=MONGOOSEIM)))
    with_token = dict(parse_qsl(query(credentials=sigv4.Credentials("AK", MONGOOSEIM.secret_access_key, "to/k+en="))))
    with_acl = dict(parse_qsl(query(credentials=MONGOOSEIM, extra_params=[("x-amz-acl", "public-read")])))
    assert with_token["X-Amz-Security-Token"] == "to/k+en="
    assert with_acl["x-amz-acl"] == "public-read"
    assert "x-amz-acl" not in with_acl["X-Amz-SignedHeaders"]
    signatures = {plain["X-Amz-Signature"], with_token["X-Amz-Signature"], with_acl["X-Amz-Signature"]}
    assert len(signatures) == 3


def test_credentials_repr_hides_secrets():
    text = repr(sigv4.Credentials("AKID", "very-secret-key", "very-secret-token"))
    assert "AKID" in text and "very-secret" not in text
