"""``slixmpp-http-upload setup-bucket``: make the S3 bucket right for the configuration.

Two settings of the bucket matter to XMPP clients:

- **CORS rules**, so that web clients (Converse.js, JSXC, Movim) may PUT from their origins:
  one rule allows ``PUT`` from the given origins with any request header, another ``GET`` and
  ``HEAD`` from any origin (a browser following the service's redirect sends ``Origin: null``,
  and with ``direct`` downloads the objects are public anyway).
- With ``downloads = "direct"``, a **bucket policy** that lets anyone ``s3:GetObject`` under
  the bucket URL's path — never ``ListBucket``. With ``redirect`` no policy is needed, and a
  policy this command once set is removed.

Each setting is read first (``GetBucketCors``, ``GetBucketPolicy``) and written only when it
differs, so a second run changes nothing. The calls are signed in the ``Authorization`` header
(:func:`~slixmpp_http_upload.sigv4.authorization_headers`). A server that lacks one of these
APIs answers ``NotImplemented`` (or 501/405): the command says which API, still tries the other
setting, and exits non-zero.
"""

from __future__ import annotations

import base64
import hashlib
import json
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from .s3 import S3Backend
from .sigv4 import authorization_headers

S3_XMLNS = "http://s3.amazonaws.com/doc/2006-03-01/"
POLICY_SID = "slixmpp-http-upload-anonymous-read"
PREFLIGHT_MAX_AGE = 86400
TIMEOUT = 15.0
UNSUPPORTED_CODES = frozenset({"NotImplemented", "MethodNotAllowed"})


class SetupFailed(Exception):
    """An S3 call failed or the server lacks an API; ``str()`` says which and what to do."""


@dataclass(frozen=True)
class CorsRule:
    origins: tuple[str, ...]
    methods: tuple[str, ...]
    headers: tuple[str, ...] = ()
    expose: tuple[str, ...] = ()
    max_age: int | None = None

    def normalized(self) -> CorsRule:
        """The same rule with each list sorted (servers may answer in another order)."""
        origins, methods, headers, expose = (
            tuple(sorted(values)) for values in (self.origins, self.methods, self.headers, self.expose)
        )
        return CorsRule(origins, methods, headers, expose, self.max_age)


def wanted_cors(origins: Sequence[str]) -> list[CorsRule]:
    """The rules for web clients of ``origins`` (``["*"]`` for any)."""
    return [
        CorsRule(tuple(origins), ("PUT",), ("*",), ("ETag",), PREFLIGHT_MAX_AGE),
        CorsRule(("*",), ("GET", "HEAD"), ("*",), ("Content-Length", "Content-Type", "ETag"), PREFLIGHT_MAX_AGE),
    ]


def cors_xml(rules: Sequence[CorsRule]) -> bytes:
    """The ``PutBucketCors`` document."""
    root = ET.Element("CORSConfiguration", xmlns=S3_XMLNS)
    for rule in rules:
        element = ET.SubElement(root, "CORSRule")
        for tag, values in (
            ("AllowedOrigin", rule.origins),
            ("AllowedMethod", rule.methods),
            ("AllowedHeader", rule.headers),
            ("ExposeHeader", rule.expose),
        ):
            for value in values:
                ET.SubElement(element, tag).text = value
        if rule.max_age is not None:
            ET.SubElement(element, "MaxAgeSeconds").text = str(rule.max_age)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def parse_cors_xml(document: bytes) -> list[CorsRule]:
    """The rules of a ``GetBucketCors`` answer (namespaced or not)."""
    rules = []
    for element in ET.fromstring(document).iter():
        if _local(element.tag) != "CORSRule":
            continue
        values: dict[str, list[str]] = {}
        for child in element:
            values.setdefault(_local(child.tag), []).append((child.text or "").strip())
        max_age = values.get("MaxAgeSeconds")
        rules.append(
            CorsRule(
                tuple(values.get("AllowedOrigin", ())),
                tuple(values.get("AllowedMethod", ())),
                tuple(values.get("AllowedHeader", ())),
                tuple(values.get("ExposeHeader", ())),
                int(max_age[0]) if max_age and max_age[0].isdigit() else None,
            )
        )
    return rules


def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def same_cors(current: Sequence[CorsRule], wanted: Sequence[CorsRule]) -> bool:
    return sorted(map(repr, (rule.normalized() for rule in current))) == sorted(
        map(repr, (rule.normalized() for rule in wanted))
    )


def bucket_name_and_prefix(backend: S3Backend) -> tuple[str, str]:
    """The bucket's name and the key prefix of the bucket URL: from the path for path-style
    URLs (``https://s3.example.org/bucket[/prefix]``), else the host's first label
    (``https://bucket.s3.example.org``)."""
    parts = [part for part in backend.bucket.path.split("/") if part]
    if parts:
        return parts[0], "/".join(parts[1:])
    return backend.bucket.host.split(".")[0].split(":")[0], ""


def wanted_policy(backend: S3Backend) -> dict[str, Any]:
    """Anonymous ``s3:GetObject`` on the objects under the bucket URL, nothing else."""
    name, prefix = bucket_name_and_prefix(backend)
    resource = f"arn:aws:s3:::{name}/{prefix + '/' if prefix else ''}*"
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": POLICY_SID, "Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": resource}
        ],
    }


def _is_ours(policy: dict[str, Any]) -> bool:
    statements = policy.get("Statement")
    return isinstance(statements, list) and [s.get("Sid") for s in statements if isinstance(s, dict)] == [POLICY_SID]


class BucketApi:
    """Header-signed S3 API calls on one bucket's subresources (``?cors``, ``?policy``)."""

    def __init__(self, backend: S3Backend) -> None:
        self.backend = backend
        self.credentials = backend.credentials.resolve()
        self.path = backend.bucket.path or "/"

    def call(self, method: str, subresource: str, body: bytes = b"") -> tuple[int, bytes]:
        """One call; returns ``(status, body)`` for 2xx and 404, raises :class:`SetupFailed` otherwise."""
        headers = {"host": self.backend.bucket.host}
        if body:
            headers["content-md5"] = base64.b64encode(hashlib.md5(body).digest()).decode()
            headers["content-type"] = "application/json" if subresource == "policy" else "application/xml"
        signed = authorization_headers(
            method=method,
            canonical_uri=self.path,
            params=[(subresource, "")],
            headers=headers,
            payload=body,
            credentials=self.credentials,
            region=self.backend.region,
        )
        signed.pop("host")
        url = f"{self.backend.bucket.origin}{self.path}?{subresource}"
        request = urllib.request.Request(url, data=body if method == "PUT" else None, method=method, headers=signed)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as error:
            answer = error.read()
            code = _code(answer)
            if error.code == 404 and code not in ("NoSuchBucket", None):
                return 404, answer
            api = _api_name(method, subresource)
            if code in UNSUPPORTED_CODES or error.code in (405, 501):
                raise SetupFailed(
                    f"this S3 server does not support {api} (HTTP {error.code} {code or ''}".rstrip()
                    + ") — set it by hand, see the README's S3 compatibility notes"
                ) from None
            raise SetupFailed(f"{api}: HTTP {error.code} {code or ''}".rstrip() + _message(answer)) from None
        except (urllib.error.URLError, OSError) as error:
            reason = getattr(error, "reason", error)
            raise SetupFailed(f"cannot reach {self.backend.bucket.origin}: {reason}") from None


def _code(body: bytes) -> str | None:
    try:
        element = ET.fromstring(body).find("Code")
    except ET.ParseError:
        return None
    return element.text if element is not None else None


def _message(body: bytes) -> str:
    try:
        element = ET.fromstring(body).find("Message")
    except ET.ParseError:
        return ""
    return f": {element.text}" if element is not None and element.text else ""


def _api_name(method: str, subresource: str) -> str:
    verb = {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}[method]
    return f"{verb}Bucket{'Cors' if subresource == 'cors' else 'Policy'}"


def setup_bucket(backend: S3Backend, origins: Sequence[str], out: TextIO, dry_run: bool = False) -> bool:
    """Bring the bucket's CORS rules and policy to what ``backend`` needs, printing each change
    (or, with ``dry_run``, the documents it would send, without a request). A setting that
    fails is printed as ``FAIL`` and the other one is still tried; returns whether both worked."""
    direct = backend.redirect_from is None
    rules = wanted_cors(origins)
    if dry_run:
        out.write("PutBucketCors:\n" + cors_xml(rules).decode() + "\n")
        if direct:
            out.write("PutBucketPolicy:\n" + json.dumps(wanted_policy(backend), indent=2) + "\n")
        else:
            out.write('no bucket policy (downloads = "redirect"); one set by setup-bucket would be deleted\n')
        return True
    api = BucketApi(backend)
    passed = True
    for name, step in (("cors", lambda: _set_cors(api, rules, origins)), ("policy", lambda: _set_policy(api, direct))):
        try:
            out.write(f"{name:<7} {step()}\n")
        except SetupFailed as failure:
            out.write(f"{name:<7} FAIL: {failure}\n")
            passed = False
    return passed


def _set_cors(api: BucketApi, rules: list[CorsRule], origins: Sequence[str]) -> str:
    status, current = api.call("GET", "cors")
    if status == 200 and same_cors(parse_cors_xml(current), rules):
        return "unchanged"
    api.call("PUT", "cors", cors_xml(rules))
    return f"set: PUT from {', '.join(origins)}; GET and HEAD from any origin"


def _set_policy(api: BucketApi, direct: bool) -> str:
    status, current = api.call("GET", "policy")
    policy = _json(current) if status == 200 else None
    if direct:
        wanted = wanted_policy(api.backend)
        if policy == wanted:
            return "unchanged"
        api.call("PUT", "policy", json.dumps(wanted).encode())
        return f"set: anonymous GetObject on {wanted['Statement'][0]['Resource']} (no listing)"
    if policy is not None and _is_ours(policy):
        api.call("DELETE", "policy")
        return 'deleted: anonymous read is not needed with downloads = "redirect"'
    if policy is not None:
        return "left as it is (not set by setup-bucket): check that it does not allow anonymous read"
    return 'none, as downloads = "redirect" needs'


def _json(body: bytes) -> dict[str, Any] | None:
    try:
        value = json.loads(body)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None
