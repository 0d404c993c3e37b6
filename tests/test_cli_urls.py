"""The ``urls`` command: what it prints, what it signs, what it refuses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import pytest

from helpers import awk_field, run_cli
from slixmpp_http_upload.cli import main

CONFIG = """\
[component]
domains = ["example.org", "example.net"]

[http_upload]
expiration_time = 60
max_file_size = 1000

[http_upload.s3]
bucket_url = "http://127.0.0.1:8333/bucket"
region = "us-east-1"
access_key_id = "AKIDEXAMPLE"
secret_access_key = "secret-key"
"""


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG, encoding="utf-8")
    return path


def urls(config: Path, *args: str) -> tuple[int, str, str]:
    return run_cli("urls", "-c", str(config), *args)


def query(url: str) -> dict[str, str]:
    return {name: values[0] for name, values in parse_qs(urlsplit(url).query, strict_parsing=True).items()}


def test_awk_recipe_extracts_the_urls(config):
    status, out, err = urls(config, "example.org", "my holiday photo 😀 #1.jpg", "500", "image/jpeg", "60")
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert [line.split(" ", 1)[0] for line in lines] == ["PutURL:", "GetURL:"]
    [put_url], [get_url] = awk_field(out, "PutURL:"), awk_field(out, "GetURL:")
    assert lines == [f"PutURL: {put_url}", f"GetURL: {get_url}"]  # nothing after the URL on either line
    assert put_url.startswith(get_url + "?")
    assert get_url.startswith("http://127.0.0.1:8333/bucket/")
    assert unquote(get_url.rsplit("/", 1)[1]) == "my holiday photo 😀 #1.jpg"


@pytest.mark.parametrize(
    "content_type, signed", [("", "content-length;host"), ("text/plain", "content-length;content-type;host")]
)
def test_empty_content_type_is_not_signed(config, content_type, signed):
    status, out, _ = urls(config, "example.org", "f.txt", "10", content_type, "60")
    assert status == 0
    assert query(awk_field(out, "PutURL:")[0])["X-Amz-SignedHeaders"] == signed


@pytest.mark.parametrize("expiration", ["1", "3600", "604800"])
def test_expiration_overrides_configured_time(config, expiration):
    status, out, _ = urls(config, "example.org", "f.txt", "10", "", expiration)
    assert status == 0
    assert query(awk_field(out, "PutURL:")[0])["X-Amz-Expires"] == expiration


def test_domain_is_case_insensitive_and_size_up_to_max(config):
    status, out, _ = urls(config, "EXAMPLE.net", "f.txt", "1000", "", "60")
    assert status == 0 and len(awk_field(out, "PutURL:")) == 1


@pytest.mark.parametrize(
    "args, message",
    [
        *[(("example.org", "f.txt", size, "", "60"), "The size is missing or not a positive decimal integer.")
          for size in ["0", "-1", "1.5", "abc", "", "１"]],
        (("example.org", "f.txt", "9" * 5000, "", "60"), "The size has more than 20 digits."),
        *[(("example.org", "f.txt", "10", "", expiration),
           f"EXPIRATION must be a positive integer no larger than 604800, got {expiration!r}")
          for expiration in ["0", "-1", "1.5", "abc", "604801", "9" * 5000]],
        (("example.org", "f.txt", "1001", "", "60"), "Declared file size exceeds the host's maximum file size."),
        (("example.com", "f.txt", "10", "", "60"),
         "'example.com' is not a served domain (component.domains: example.org, example.net)"),
        (("example.org", "", "10", "", "60"), "The filename is missing or empty."),
        (("example.org", "a\x01b.txt", "10", "", "60"), "The filename contains control characters."),
        (("example.org", "..", "10", "", "60"), "The filename cannot be '.' or '..'."),
        (("example.org", "f.txt", "10", "text/plain\r\nX-Evil: 1", "60"), "The content-type contains a line break."),
    ],
)
def test_refusals(config, args, message):
    status, out, err = urls(config, *args)
    assert status == 1
    assert out == ""
    assert err == f"slixmpp-http-upload: {message}\n"


def test_module_entry_point(config):
    result = subprocess.run(
        [sys.executable, "-m", "slixmpp_http_upload", "urls", "-c", str(config), "example.org", "a b.txt", "5",
         "text/plain", "120"],
        capture_output=True, text=True, timeout=60, check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")
    [put_url] = awk_field(result.stdout, "PutURL:")
    [get_url] = awk_field(result.stdout, "GetURL:")
    assert put_url.startswith(get_url + "?") and get_url.endswith("/a%20b.txt")
    assert query(put_url)["X-Amz-Expires"] == "120"


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("slixmpp-http-upload 0.")
