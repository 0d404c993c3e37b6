"""Our presigned PUT URLs must equal what botocore's S3 SigV4 query signer computes.

botocore is the independent oracle: it applies the canonicalisation S3 checks. We build the
expected object URL from the generated parts (scheme, host, port, bucket path, token, filename
encoded once as one path segment), hand it to botocore with the same headers, credentials,
region, expiry and a frozen clock, and compare with the slot that ``S3Backend.make_slot`` made.
"""

from __future__ import annotations

import datetime
import string
from collections import Counter
from urllib.parse import parse_qsl, urlsplit

import botocore.auth
import pytest
from botocore.auth import S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials as BotoCredentials
from botocore.utils import percent_encode
from hypothesis import assume, event, given, settings
from hypothesis import strategies as st

from helpers import FILENAME_PUNCTUATION, accepted_filenames
from slixmpp_http_upload import s3
from slixmpp_http_upload.s3 import S3Backend, object_name, parse_bucket_url
from slixmpp_http_upload.sigv4 import Credentials
from slixmpp_http_upload.slot import MAX_SIZE, make_request

# botocore's SigV4QueryAuth drops this one content type, which botocore itself sets on form
# bodies; we (rightly) sign whatever the client declared, so it is no case for the oracle.
BOTOCORE_DROPPED_CONTENT_TYPE = "application/x-www-form-urlencoded; charset=utf-8"

T_2000, T_2100 = 946684800, 4102444800
DEFAULT_PORTS = {"http": 80, "https": 443}


filenames = accepted_filenames(punctuation=FILENAME_PUNCTUATION + "/\\", max_parts=16)
content_types = st.one_of(
    st.none(),
    st.just(""),
    st.sampled_from(["image/png", "text/plain; charset=utf-8", "application/octet-stream", " a/b;   c=d  "]),
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=40),
)
bucket_names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
regions = st.sampled_from(["us-east-1", "eu-west-1", "ap-southeast-2", "garage", "us-west-000"])


@st.composite
def buckets(draw) -> tuple[str, str, str]:
    """A bucket_url as a user may write it, its expected origin and its expected path prefix."""
    scheme = draw(st.sampled_from(["http", "https", "HTTPS", "Http"]))
    bucket = draw(bucket_names)
    if draw(st.booleans()):  # virtual-host style
        host, path = f"{bucket}.s3.{draw(regions)}.amazonaws.com", ""
    else:  # path style, maybe with a key prefix
        host = draw(st.sampled_from(
            ["s3.eu-west-1.amazonaws.com", "s3.amazonaws.com", "127.0.0.1", "localhost", "minio.example.org",
             "[::1]", "[2001:db8::5]"]
        ))
        prefix = draw(st.sampled_from(["", "/uploads", "/a.b/c_d~e-f"]))
        path = f"/{bucket}{prefix}"
    default = DEFAULT_PORTS[scheme.lower()]
    port = draw(st.one_of(st.none(), st.just(default), st.integers(1, 65535)))
    netloc = host if port is None else f"{host}:{port}"
    trailing = draw(st.sampled_from(["", "/"]))
    expected_netloc = host if port in (None, default) else f"{host}:{port}"
    return f"{scheme}://{netloc}{path}{trailing}", f"{scheme.lower()}://{expected_netloc}", path


@st.composite
def credentials(draw) -> Credentials:
    key_id = draw(st.from_regex(r"[A-Z0-9]{16,24}", fullmatch=True))
    secret = draw(st.text(string.ascii_letters + string.digits + "/+", min_size=20, max_size=40))
    token = draw(st.one_of(st.none(), st.text(string.ascii_letters + string.digits + "/+=", min_size=1, max_size=300)))
    return Credentials(key_id, secret, token)


def botocore_presign(url: str, headers: dict[str, str], creds: Credentials, region: str, expires: int, now: int) -> str:
    """The URL botocore presigns for a PUT of ``url`` at ``now``."""
    frozen = datetime.datetime.fromtimestamp(now, datetime.timezone.utc).replace(tzinfo=None)
    request = AWSRequest(method="PUT", url=url, headers=headers)
    signer = S3SigV4QueryAuth(
        BotoCredentials(creds.access_key_id, creds.secret_access_key, creds.session_token), "s3", region,
        expires=expires,
    )
    with pytest.MonkeyPatch.context() as patch:
        # botocore.auth reads the clock through get_current_datetime (botocore.compat)
        patch.setattr(botocore.auth, "get_current_datetime", lambda remove_tzinfo=True: frozen)
        signer.add_auth(request)
    return request.prepare().url


def query_pairs(url: str) -> Counter[str]:
    return Counter(urlsplit(url).query.split("&"))


@settings(max_examples=250, deadline=None)
@given(
    bucket=buckets(),
    filename=filenames,
    size=st.integers(1, MAX_SIZE),
    content_type=content_types,
    region=regions,
    creds=credentials(),
    add_acl=st.booleans(),
    expires=st.integers(1, 604800),
    token=st.integers(16, 64).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    now=st.integers(T_2000, T_2100),
)
def test_put_url_equals_botocore(bucket, filename, size, content_type, region, creds, add_acl, expires, token, now):
    assume(content_type != BOTOCORE_DROPPED_CONTENT_TYPE)
    bucket_url, origin, prefix = bucket
    event("IPv6 host" if "[" in origin else "virtual-host style" if not prefix else "path style")
    event(f"port in bucket_url: {urlsplit(bucket_url).port is not None}")
    event(f"session token: {creds.session_token is not None}, add_acl: {add_acl}, content type: {bool(content_type)}")
    backend = S3Backend(
        parse_bucket_url(bucket_url), region, creds, add_acl=add_acl, expiration_time=expires, token_bytes=len(token)
    )
    request = make_request(filename, size, content_type, domain="example.org", max_file_size=None)

    def token_hex(nbytes):
        assert nbytes == len(token)
        return token.hex()

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(s3, "token_hex", token_hex)
        slot = backend.make_slot(request, now=now)

    object_url = f"{origin}{prefix}/{token.hex()}/{percent_encode(object_name(filename), safe='')}"
    headers = {"Content-Length": str(size)}
    if content_type:
        headers["Content-Type"] = content_type
    expected = botocore_presign(
        object_url + ("?x-amz-acl=public-read" if add_acl else ""), headers, creds, region, expires, now
    )

    ours, theirs = urlsplit(slot.put_url), urlsplit(expected)
    assert (ours.scheme, ours.netloc, ours.path) == (theirs.scheme, theirs.netloc, theirs.path)
    assert slot.get_url == object_url
    assert query_pairs(slot.put_url) == query_pairs(expected)
    params = dict(parse_qsl(ours.query, strict_parsing=True))
    assert params["X-Amz-Signature"] == dict(parse_qsl(theirs.query))["X-Amz-Signature"]
    assert params["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    assert params["X-Amz-Expires"] == str(expires)
    signed = "content-length;content-type;host" if content_type else "content-length;host"
    assert params["X-Amz-SignedHeaders"] == signed
    assert params.get("x-amz-acl") == ("public-read" if add_acl else None)
    assert params.get("X-Amz-Security-Token") == creds.session_token
    assert slot.put_headers == ()


def make_backend(token_bytes: int = 32) -> S3Backend:
    return S3Backend(
        parse_bucket_url("http://[::1]:8333/bucket"), "us-east-1", Credentials("AKID", "secret"),
        token_bytes=token_bytes,
    )


def test_get_url_is_put_url_without_query():
    request = make_request("a b/ü😀.txt", 5, "text/plain", domain="example.org", max_file_size=None)
    slot = make_backend().make_slot(request, now=T_2000)
    put, _, query = slot.put_url.partition("?")
    assert slot.get_url == put
    assert query and "?" not in slot.get_url and "#" not in slot.get_url
    assert slot.get_url.startswith("http://[::1]:8333/bucket/")
    assert slot.get_url.endswith("/a%20b_%C3%BC%F0%9F%98%80.txt")


@pytest.mark.parametrize("token_bytes", [16, 32, 40])
def test_token_is_fresh_lowercase_hex(token_bytes):
    request = make_request("f.txt", 1, None, domain="example.org", max_file_size=None)
    backend = make_backend(token_bytes)
    tokens = [urlsplit(backend.make_slot(request).get_url).path.split("/")[2] for _ in range(20)]
    assert all(len(token) == 2 * token_bytes and set(token) <= set("0123456789abcdef") for token in tokens)
    assert len(set(tokens)) == len(tokens)
