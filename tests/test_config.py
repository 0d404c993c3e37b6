"""Every configuration error: one line naming the key path and the problem, exit status 2.

Each case starts from a valid file (``BASE``) and changes some keys; the command is the real
entry point, ``slixmpp_http_upload.cli.main``.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

from helpers import run_cli
from slixmpp_http_upload.options import ConfigError, Option, integer, parse_table

PREFIX = "slixmpp-http-upload: configuration error: "
SECRET = "BASE-SECRET-wJalrXUtnFEMI-K7MDENG"
AWS_VARIABLES = (
    "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "SLIXMPP_HTTP_UPLOAD_CONFIG",
)
DELETE = object()

# table -> key -> raw TOML value
BASE = {
    "": {},
    "component": {"domains": '["example.org"]'},
    "http_upload": {"expiration_time": "60"},
    "http_upload.s3": {
        "bucket_url": '"https://s3.eu-west-1.amazonaws.com/bucket"',
        "region": '"eu-west-1"',
        "access_key_id": '"AKIDEXAMPLE"',
        "secret_access_key": f'"{SECRET}"',
    },
}


def render(changes: dict[str, object]) -> str:
    """BASE with ``changes`` applied: ``"table.key": raw value`` sets, ``DELETE`` removes a key or a table."""
    tables = {name: dict(keys) for name, keys in BASE.items()}
    for path, value in changes.items():
        if path in tables and value is DELETE:
            del tables[path]
            continue
        table, _, key = path.rpartition(".")
        if value is DELETE:
            del tables[table][key]
        else:
            tables.setdefault(table, {})[key] = value
    lines = []
    for name, keys in tables.items():  # the top-level table ("") comes first
        lines.extend([f"[{name}]"] if name else [])
        lines.extend(f"{key} = {value}" for key, value in keys.items())
    return "\n".join(lines) + "\n"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def urls(config: Path | None = None) -> list[str]:
    return ["urls", *(["-c", str(config)] if config else []), "example.org", "file.txt", "10", "", "60"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def assert_config_error(status: int, out: str, err: str, expected: str) -> None:
    assert status == 2
    assert out == ""
    assert err.startswith(PREFIX) and err.endswith("\n") and err.count("\n") == 1, err
    assert expected in err, err
    assert SECRET not in err and "hunter2" not in err


def bucket_url(value: str) -> dict[str, object]:
    return {"http_upload.s3.bucket_url": f'"{value}"'}


BU = "http_upload.s3.bucket_url: "
QUERY = "must not contain a query or a fragment"
EXP = "http_upload.expiration_time: must be an integer from 1 to 604800"
HOST_NAME = "http_upload.host: must be a domain name, where @HOST@ stands for each served domain"
MAX_SIZE = 'http_upload.max_file_size: must be a positive integer (bytes) or "infinity"'

LONG_DOMAIN = ("a" * 49 + ".") * 4 + "b" * 52
DOT_SEGMENTS = "http_upload.s3.bucket_url: path must not have empty, '.' or '..' segments"

CASES = {
    # wrong type
    "expiration-string": ({"http_upload.expiration_time": '"60"'}, f"{EXP}, got '60'"),
    "expiration-float": ({"http_upload.expiration_time": "60.0"}, f"{EXP}, got 60.0"),
    "expiration-bool": ({"http_upload.expiration_time": "true"}, f"{EXP}, got True"),
    "legacy-namespaces": ({"http_upload.legacy_namespaces": '"yes"'},
                          "http_upload.legacy_namespaces: must be true or false, got 'yes'"),
    "add-acl": ({"http_upload.s3.add_acl": "1"}, "http_upload.s3.add_acl: must be true or false, got 1"),
    "component-port": ({"component.port": '"5347"'}, "component.port: must be an integer from 1 to 65535"),
    "domains-not-list": ({"component.domains": '"example.org"'}, "component.domains: must be a list of domain names"),
    "region-empty": ({"http_upload.s3.region": '""'}, "http_upload.s3.region: must be an AWS region name such as 'eu-west-1'"),
    "allow-not-list": ({"http_upload.allow": '"alice@example.org"'},
                       "http_upload.allow: must be a list of bare JIDs or domains"),
    # out of range
    "expiration-0": ({"http_upload.expiration_time": "0"}, f"{EXP}, got 0"),
    "expiration-604801": ({"http_upload.expiration_time": "604801"}, f"{EXP}, got 604801"),
    "token-bytes-15": ({"http_upload.token_bytes": "15"},
                       "http_upload.token_bytes: must be an integer from 16 to 256, got 15"),
    "component-port-0": ({"component.port": "0"}, "component.port: must be an integer from 1 to 65535, got 0"),
    # required and unknown keys
    "bucket-url-missing": ({"http_upload.s3.bucket_url": DELETE}, f"{BU}is required"),
    "unknown-top": ({".colour": '"blue"'}, "colour: unknown option (known: component, http_upload, http, metrics)"),
    "unknown-http-upload": ({"http_upload.colour": '"blue"'}, "http_upload.colour: unknown option (known: host, "),
    "unknown-s3": ({"http_upload.s3.colour": '"blue"'}, "http_upload.s3.colour: unknown option (known: bucket_url, "),
    "unknown-component": ({"component.colour": '"blue"'}, "component.colour: unknown option"),
    # bucket_url
    "bucket-url-ftp": (bucket_url("ftp://example.org/bucket"), f"{BU}must be an http:// or https:// URL"),
    "bucket-url-no-scheme": (bucket_url("example.org/bucket"), f"{BU}must be an http:// or https:// URL"),
    "bucket-url-not-string": ({"http_upload.s3.bucket_url": "42"}, f"{BU}must be an http:// or https:// URL"),
    "bucket-url-no-host": (bucket_url("https:///bucket"), f"{BU}must name a host"),
    "bucket-url-query": (bucket_url("https://example.org/bucket?x=1"), f"{BU}{QUERY}"),
    "bucket-url-empty-query": (bucket_url("https://example.org/bucket?"), f"{BU}{QUERY}"),
    "bucket-url-fragment": (bucket_url("https://example.org/bucket#top"), f"{BU}{QUERY}"),
    "bucket-url-userinfo": (bucket_url("https://user:hunter2-pw@example.org/bucket"), f"{BU}must not contain user info"),
    "bucket-url-userinfo-ftp": (bucket_url("ftp://user:hunter2-pw@example.org/b"), f"{BU}must not contain user info"),
    "bucket-url-port-range": (bucket_url("https://example.org:99999/bucket"), f"{BU}has an invalid port"),
    "bucket-url-port-text": (bucket_url("https://example.org:abc/bucket"), f"{BU}has an invalid port"),
    "bucket-url-host-space": (bucket_url("https://exa mple.org/bucket"),
                              f"{BU}host may contain only letters, digits and '-._~'"),
    "bucket-url-ipv6-garbage": (bucket_url("http://[::1]x:8333/bucket"), f"{BU}has an invalid IPv6 host"),
    "bucket-url-ipv6-invalid": (bucket_url("http://[v1.x]/bucket"), f"{BU}has an invalid IPv6 host"),
    "bucket-url-path": (bucket_url("https://example.org/my bucket"), f"{BU}path may contain only"),
    # host template and domains
    "host-double-dot": ({"http_upload.host": '"upload..@HOST@"'}, f"{HOST_NAME}, got 'upload..@HOST@'"),
    "host-space": ({"http_upload.host": '"up load.@HOST@"'}, f"{HOST_NAME}, got 'up load.@HOST@'"),
    "host-twice": ({"http_upload.host": '"@HOST@.@HOST@"'}, "http_upload.host: must contain @HOST@ at most once"),
    "host-not-string": ({"http_upload.host": "5"}, "http_upload.host: must be a non-empty string"),
    "host-without-placeholder": (
        {"component.domains": '["example.org", "example.net"]', "http_upload.host": '"upload.example.org"'},
        "http_upload.host: must contain @HOST@ when component.domains lists several domains",
    ),
    "domain-invalid": ({"component.domains": '["exa mple.org"]'}, "component.domains: must be a domain name"),
    "domain-twice": ({"component.domains": '["example.org", "EXAMPLE.org"]'},
                     "component.domains: must not list a domain twice"),
    "domain-twice-unicode-and-punycode": ({"component.domains": '["münchen.example", "xn--mnchen-3ya.example"]'},
                                          "component.domains: must not list a domain twice"),
    "domain-trailing-newline": ({"component.domains": '["example.org\\n"]'},
                                "component.domains: must be a domain name"),
    "domain-trailing-dot": ({"component.domains": '["example.org."]'}, "component.domains: must be a domain name"),
    "domain-label-too-long": ({"component.domains": f'["{"a" * 64}.org"]'}, "component.domains: must be a domain name"),
    # 252 characters pass as a domain, but "upload." makes 259, more than slixmpp takes
    "service-jid-too-long": ({"component.domains": f'["{LONG_DOMAIN}"]'},
                             f"component.domains: '{LONG_DOMAIN}' makes the service JID 'upload.{LONG_DOMAIN}' "
                             "(http_upload.host): slixmpp refuses it"),
    # iqdisc
    "iqdisc-name": ({"http_upload.iqdisc": '"fast"'},
                    "http_upload.iqdisc.type: must be one of 'no_queue', 'one_queue', 'parallel', 'queues'"),
    "iqdisc-type": ({"http_upload.iqdisc": "3"},
                    "http_upload.iqdisc: must be one of no_queue, one_queue, parallel, queues"),
    "iqdisc-table-type": ({"http_upload.iqdisc": '{type = "fast"}'}, "http_upload.iqdisc.type: must be one of"),
    "iqdisc-queues-no-workers": ({"http_upload.iqdisc": '"queues"'},
                                 "http_upload.iqdisc.workers: is required when type is 'queues'"),
    "iqdisc-workers-not-queues": ({"http_upload.iqdisc": '{type = "one_queue", workers = 4}'},
                                  "http_upload.iqdisc.workers: is only for type 'queues'"),
    "iqdisc-workers-0": ({"http_upload.iqdisc": '{type = "queues", workers = 0}'},
                         "http_upload.iqdisc.workers: must be an integer from 1 to 1024, got 0"),
    "iqdisc-unknown-key": ({"http_upload.iqdisc": '{type = "queues", worker = 4}'},
                           "http_upload.iqdisc.worker: unknown option"),
    # max_file_size
    "max-file-size-big": ({"http_upload.max_file_size": '"big"'}, f"{MAX_SIZE}, got 'big'"),
    "max-file-size-0": ({"http_upload.max_file_size": "0"}, f"{MAX_SIZE}, got 0"),
    "max-file-size-negative": ({"http_upload.max_file_size": "-1"}, f"{MAX_SIZE}, got -1"),
    # allow/deny
    "allow-full-jid": ({"http_upload.allow": '["alice@example.org/phone"]'},
                       "http_upload.allow: 'alice@example.org/phone' is not a bare JID or a domain"),
    # backend
    "backend-unknown": ({"http_upload.backend": '"gcs"', "http_upload.s3": DELETE},
                        "http_upload.backend: unknown backend 'gcs' (known: "),
    # credentials: half given (none at all is the AWS chain: see test_credentials.py)
    "key-id-without-secret": ({"http_upload.s3.secret_access_key": DELETE},
                              "http_upload.s3.secret_access_key: is required when access_key_id is set"),
    "secret-without-key-id": ({"http_upload.s3.access_key_id": DELETE},
                              "http_upload.s3.access_key_id: is required when secret_access_key is set"),
    "token-without-keys": (
        {"http_upload.s3.access_key_id": DELETE, "http_upload.s3.secret_access_key": DELETE,
         "http_upload.s3.session_token": '"TOP-SECRET-TOKEN"'},
        "http_upload.s3.session_token: needs access_key_id and secret_access_key",
    ),
    "no-region": ({"http_upload.s3.region": DELETE}, "http_upload.s3.region: is required (or set AWS_REGION)"),
    "region-with-slash": ({"http_upload.s3.region": '"eu/west"'},
                          "http_upload.s3.region: must be an AWS region name such as 'eu-west-1'"),
    "key-id-with-space": ({"http_upload.s3.access_key_id": '"AKID EXAMPLE"'},
                          "http_upload.s3.access_key_id: must be an access key id (printable ASCII, no space or '/')"),
    "backend-named-like-an-option": ({"http_upload.backend": '"host"'},
                                     "http_upload.backend: cannot be 'host', the name of an option"),
    # bucket_url paths that HTTP clients would rewrite before sending (so the signature breaks)
    "bucket-url-dot-dot": (bucket_url("https://example.org/../bucket"), DOT_SEGMENTS),
    "bucket-url-dot": (bucket_url("https://example.org/a/./bucket"), DOT_SEGMENTS),
    "bucket-url-empty-segment": (bucket_url("https://example.org/a//bucket"), DOT_SEGMENTS),
    "bucket-url-port-0": (bucket_url("https://example.org:0/bucket"), "http_upload.s3.bucket_url: has an invalid port"),
    # [http]
    "http-unknown": ({"http.colour": '"blue"'},
                     "http.colour: unknown option (known: bind, port, public_url, tls_cert, tls_key, cors_origins, "),
    "http-port-0": ({"http.port": "0"}, "http.port: must be an integer from 1 to 65535, got 0"),
    "http-bind-empty": ({"http.bind": '""'}, "http.bind: must be a non-empty string"),
    "public-url-ftp": ({"http.public_url": '"ftp://up.example.org"'}, "http.public_url: must be an http:// or https:// URL"),
    "public-url-query": ({"http.public_url": '"https://up.example.org/x?y=1"'}, f"http.public_url: {QUERY}"),
    "public-url-userinfo": ({"http.public_url": '"https://u:hunter2@up.example.org"'},
                            "http.public_url: must not contain user info"),
    "public-url-dot-dot": ({"http.public_url": '"https://up.example.org/a/../b"'},
                           "http.public_url: path must not have empty, '.' or '..' segments"),
    "tls-cert-alone": ({"http.tls_cert": '"cert.pem"'},
                       "http.tls_key: is required when the other of tls_cert/tls_key is set"),
    "tls-key-alone": ({"http.tls_key": '"key.pem"'},
                      "http.tls_cert: is required when the other of tls_cert/tls_key is set"),
    "cors-empty": ({"http.cors_origins": "[]"}, "http.cors_origins: must be a non-empty list of origins"),
    "cors-not-list": ({"http.cors_origins": '"*"'}, "http.cors_origins: must be a non-empty list of origins"),
    "cors-star-and-more": ({"http.cors_origins": '["*", "https://a.example"]'},
                           'http.cors_origins: must be ["*"] alone or a list of origins'),
    "cors-path": ({"http.cors_origins": '["https://a.example/chat"]'},
                  "http.cors_origins: 'https://a.example/chat' is not an origin"),
    "cors-not-url": ({"http.cors_origins": '["a.example"]'}, "http.cors_origins: must be an http:// or https:// URL"),
    "max-uploads-0": ({"http.max_uploads": "0"}, "http.max_uploads: must be an integer from 1 to 100000, got 0"),
    "http-not-table": ({".http": "8080"}, "http: must be a table"),
    # [http_upload.local] (the default backend without an s3 table)
    "local-unknown": ({"http_upload.s3": DELETE, "http_upload.local.colour": '"blue"'},
                      "http_upload.local.colour: unknown option (known: root, url_key)"),
    "local-key-short": ({"http_upload.s3": DELETE, "http_upload.local.url_key": '"hunter2"'},
                        "http_upload.local.url_key: must be at least 16 bytes long"),
    "local-key-not-string": ({"http_upload.s3": DELETE, "http_upload.local.url_key": "42"},
                             "http_upload.local.url_key: must be a non-empty string"),
    "local-root-is-a-file": ({"http_upload.s3": DELETE, "http_upload.local.root": '"config.toml"'},
                             "http_upload.local.root: cannot use "),
    "local-root-under-a-file": ({"http_upload.s3": DELETE, "http_upload.local.root": '"config.toml/uploads"'},
                                "http_upload.local.root: cannot use "),
    "local-table-beside-s3": ({"http_upload.local.root": '"files"'}, "http_upload.local: unknown option"),
    "s3-table-with-local-backend": ({"http_upload.backend": '"local"'}, "http_upload.s3: unknown option"),
    # purposes, retention and limits
    "purposes-unknown": ({"http_upload.purposes": '["message", "selfie"]'},
                         "http_upload.purposes: 'selfie' is not a purpose (known: message, profile, ephemeral, permanent)"),
    "purposes-twice": ({"http_upload.purposes": '["message", "message"]'},
                       "http_upload.purposes: must not list a purpose twice"),
    "purposes-not-list": ({"http_upload.purposes": '"message"'}, "http_upload.purposes: must be a list of purposes"),
    "purpose-not-served": ({"http_upload.purpose.profile.max_file_size": "1000"},
                           "http_upload.purpose.profile: is not a served purpose (purposes: message)"),
    "purpose-bad-value": ({"http_upload.purposes": '["message", "profile"]',
                           "http_upload.purpose.profile.expire_after": "0"},
                          'http_upload.purpose.profile.expire_after: must be a positive integer (seconds) or "infinity", got 0'),
    "purpose-unknown-key": ({"http_upload.purposes": '["profile"]', "http_upload.purpose.profile.rate_limit": "1"},
                            "http_upload.purpose.profile.rate_limit: unknown option (known: max_file_size, "),
    "daily-quota-text": ({"http_upload.daily_quota": '"100 MB"'},
                         'http_upload.daily_quota: must be a positive integer (bytes) or "infinity", got \'100 MB\''),
    "rate-limit-scalar": ({"http_upload.rate_limit": "5"}, "http_upload.rate_limit: must be a table, not a int"),
    "rate-limit-no-seconds": ({"http_upload.rate_limit": "{slots = 5}"}, "http_upload.rate_limit.seconds: is required"),
    "rate-limit-long": ({"http_upload.rate_limit": "{slots = 5, seconds = 86401}"},
                        "http_upload.rate_limit.seconds: must be an integer from 1 to 86400, got 86401"),
    "ledger-empty": ({"http_upload.ledger": '""'}, "http_upload.ledger: must be a non-empty string"),
}


@pytest.mark.parametrize("changes, expected", CASES.values(), ids=CASES.keys())
def test_configuration_error(tmp_path, changes, expected):
    config = write(tmp_path, render(changes))
    assert_config_error(*run_cli(*urls(config)), expected)


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"http_upload.s3.secret_access_key": "987654321"}, "http_upload.s3.secret_access_key"),
        ({"http_upload.s3.secret_access_key": '"TOP-SECRET-\\u0007-VALUE"'}, "http_upload.s3.secret_access_key"),
        ({"http_upload.s3.session_token": "987654321"}, "http_upload.s3.session_token"),
        ({"http_upload.s3.session_token": '["TOP-SECRET-TOKEN"]'}, "http_upload.s3.session_token"),
        ({"component.secret": "987654321"}, "component.secret"),
        ({"component.secret": '"TOP-SECRET-\\n-VALUE"'}, "component.secret"),
        (bucket_url("https://AKID:TOP-SECRET-PW@example.org/bucket"), "http_upload.s3.bucket_url"),
        (bucket_url("ftp://AKID:TOP-SECRET-PW@example.org:99999/bucket"), "http_upload.s3.bucket_url"),
        (bucket_url("AKID:TOP-SECRET-PW@example.org/bucket"), "http_upload.s3.bucket_url"),
        # key id and secret swapped: the secret (it has a '/') lands in access_key_id
        ({"http_upload.s3.access_key_id": '"TOP-SECRET/K7MDENG/bPxRfiCY"', "http_upload.s3.secret_access_key": '"AKIDEXAMPLE"'},
         "http_upload.s3.access_key_id"),
    ],
)
def test_secret_values_stay_out_of_messages(tmp_path, changes, key):
    config = write(tmp_path, render(changes))
    status, out, err = run_cli(*urls(config))
    assert_config_error(status, out, err, f"{PREFIX}{key}: ")
    assert "987654321" not in err and "TOP-SECRET" not in err


def test_infinity_max_file_size_is_accepted(tmp_path):
    config = write(tmp_path, render({"http_upload.max_file_size": '"infinity"'}))
    status, out, err = run_cli(*["urls", "-c", str(config), "example.org", "big.iso", str(10**15), "", "60"])
    assert (status, err) == (0, "")
    assert "PutURL: " in out


@pytest.mark.parametrize(
    "configured, asked", [("münchen.example", "xn--mnchen-3ya.example"), ("xn--mnchen-3ya.example", "MÜNCHEN.example")]
)
def test_idn_domain_in_either_form(tmp_path, configured, asked):
    config = write(tmp_path, render({"component.domains": f'["{configured}"]'}))
    status, out, err = run_cli("urls", "-c", str(config), asked, "a.txt", "1", "", "60")
    assert (status, err) == (0, "")
    assert out.startswith("PutURL: https://s3.eu-west-1.amazonaws.com/bucket/")


def test_invalid_toml(tmp_path):
    config = write(tmp_path, "[http_upload\nexpiration_time = 60\n")
    assert_config_error(*run_cli(*urls(config)), "not valid TOML")


def test_a_credential_named_option_of_another_backend_is_not_echoed():
    options = (Option("api_key", None, integer(1)), Option("secret", None, integer(1)), Option("token_bytes", 1, integer(1)))
    for key in ("api_key", "secret"):
        with pytest.raises(ConfigError) as caught:
            parse_table({key: "TOP-SECRET"}, options, "http_upload.vault")
        assert str(caught.value) == f"http_upload.vault.{key}: must be an integer ≥ 1 (got a str, not shown)"
    with pytest.raises(ConfigError, match="token_bytes: must be an integer ≥ 1, got 'x'"):
        parse_table({"token_bytes": "x"}, options)


def test_not_utf8(tmp_path):
    config = tmp_path / "config.toml"
    config.write_bytes(render({"component.domains": '["caf\xe9.example"]'}).encode("utf-8").replace(b"\xc3\xa9", b"\xe9"))
    assert_config_error(*run_cli(*urls(config)), f"{config}: line 2 is not UTF-8 text")


def test_missing_file(tmp_path):
    missing = tmp_path / "nowhere.toml"
    assert_config_error(*run_cli(*urls(missing)), f"cannot read the configuration file '{missing}'")


def test_no_config_option_and_no_environment_variable():
    assert_config_error(
        *run_cli(*urls()), "no configuration file: pass -c PATH or set SLIXMPP_HTTP_UPLOAD_CONFIG"
    )


def test_environment_variable_names_the_file_when_no_option(tmp_path, monkeypatch):
    monkeypatch.setenv("SLIXMPP_HTTP_UPLOAD_CONFIG", str(write(tmp_path, render({}))))
    status, out, err = run_cli(*urls())
    assert (status, err) == (0, "")
    assert out.startswith("PutURL: https://s3.eu-west-1.amazonaws.com/bucket/")

    bad = tmp_path / "bad.toml"
    bad.write_text(render({"http_upload.token_bytes": "15"}), encoding="utf-8")
    monkeypatch.setenv("SLIXMPP_HTTP_UPLOAD_CONFIG", str(bad))
    assert_config_error(*run_cli(*urls()), "http_upload.token_bytes: must be an integer from 16 to 256")
    # -c wins over the environment variable
    assert run_cli(*urls(tmp_path / "config.toml"))[0] == 0


def test_unknown_backend_lists_s3(tmp_path):
    config = write(tmp_path, render({"http_upload.backend": '"nope"', "http_upload.s3": DELETE}))
    status, out, err = run_cli(*urls(config))
    assert_config_error(status, out, err, "unknown backend 'nope'")
    known = err.rpartition("(known: ")[2].rstrip(")\n").split(", ")
    assert "s3" in known


@pytest.mark.parametrize("region_variable", ["AWS_REGION", "AWS_DEFAULT_REGION"])
@pytest.mark.parametrize("token", [None, "ENV/SESSION+TOKEN="])
def test_region_and_credentials_from_environment(tmp_path, monkeypatch, region_variable, token):
    config = write(tmp_path, render({
        "http_upload.s3.region": DELETE, "http_upload.s3.access_key_id": DELETE,
        "http_upload.s3.secret_access_key": DELETE,
    }))
    monkeypatch.setenv(region_variable, "ap-south-2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    if token:
        monkeypatch.setenv("AWS_SESSION_TOKEN", token)
    status, out, err = run_cli(*urls(config))
    assert (status, err) == (0, "")
    put_url = out.splitlines()[0].removeprefix("PutURL: ")
    query = parse_qs(urlsplit(put_url).query)
    assert query["X-Amz-Credential"][0].startswith("AKIDFROMENV/")
    assert query["X-Amz-Credential"][0].endswith("/ap-south-2/s3/aws4_request")
    assert query.get("X-Amz-Security-Token") == ([token] if token else None)


def test_file_values_win_over_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_REGION", "ap-south-2")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    status, out, _ = run_cli(*urls(write(tmp_path, render({}))))
    credential = parse_qs(urlsplit(out.split()[1]).query)["X-Amz-Credential"][0]
    assert status == 0 and credential.startswith("AKIDEXAMPLE/") and "/eu-west-1/" in credential


def test_a_scalar_backend_table_is_not_echoed(tmp_path):
    text = render({"http_upload.s3": DELETE}).replace("[http_upload]\n", '[http_upload]\ns3 = "AKID:TOP-SECRET"\n')
    status, out, err = run_cli(*urls(write(tmp_path, text)))
    assert_config_error(status, out, err, f"{PREFIX}http_upload.s3: must be a table, not a str")
    assert "TOP-SECRET" not in err


@pytest.mark.parametrize(
    "variable, value, key, message",
    [
        ("AWS_REGION", "eu\x01west", "region", "must be an AWS region"),
        ("AWS_ACCESS_KEY_ID", "AKID EXAMPLE", "access_key_id", "must be an access key id"),
        ("AWS_SECRET_ACCESS_KEY", "TOP-SECRET\x07", "secret_access_key", "must not contain control characters"),
    ],
)
def test_values_from_the_environment_are_checked(tmp_path, monkeypatch, variable, value, key, message):
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret-from-env")
    monkeypatch.setenv(variable, value)
    missing = {f"http_upload.s3.{name}": DELETE for name in ("region", "access_key_id", "secret_access_key")}
    status, out, err = run_cli(*urls(write(tmp_path, render(missing))))
    assert_config_error(status, out, err, f"{PREFIX}http_upload.s3.{key}: from {variable}: {message}")
    assert "TOP-SECRET" not in err
