"""The ``local`` backend without its HTTP server: the backend default, where files and the URL
key live, the slot URLs ``urls`` prints, and the signature that authorises a PUT."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import stat
import subprocess
import threading
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import accepted_filenames, run_cli, tmpfs, write_toml
from slixmpp_http_upload.config import load_config
from slixmpp_http_upload.filestore import TEMPORARY, FileStore, UploadDeleted
from slixmpp_http_upload.http.target import parse_target
from slixmpp_http_upload.local import Forbidden, LocalBackend, UrlSigner
from slixmpp_http_upload.slot import SlotRequest, object_name

NOW = 1_800_000_000


def urls(config: Path, filename: str = "file.txt", size: str = "10", content_type: str = "") -> tuple[str, str]:
    status, out, err = run_cli("urls", "-c", str(config), "example.org", filename, size, content_type, "300")
    assert status == 0 and err == "", err
    lines = dict(line.split(": ", 1) for line in out.splitlines())
    return lines["PutURL"], lines["GetURL"]


def signed(put_url: str) -> tuple[str, str, dict[str, str]]:
    """Token, file name and query of a PUT URL."""
    parts = urlsplit(put_url)
    _, token, name = parts.path.rsplit("/", 2)
    return token, unquote(name), dict(parse_qsl(parts.query))


def test_a_config_with_only_component_serves_from_uploads_beside_it(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "conf").mkdir()
    config = write_toml(tmp_path / "conf" / "upload.toml", {"component": {"domains": ["example.org"]}})
    monkeypatch.chdir(tmp_path)  # relative to the file, not to the working directory
    put_url, get_url = urls(config, "très cool #1.txt", "10", "text/plain")

    token, name, query = signed(put_url)
    assert get_url == f"http://127.0.0.1:8080/{token}/tr%C3%A8s%20cool%20%231.txt"
    assert put_url.startswith(get_url + "?")
    assert len(token) == 64 and int(token, 16) >= 0
    assert name == "très cool #1.txt"
    assert set(query) == {"expires", "size", "type", "sig"}
    assert (query["size"], query["type"]) == ("10", "text/plain")
    key_file = tmp_path / "conf" / "uploads" / ".url-key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert not (tmp_path / "uploads").exists()
    assert load_config(config).http_upload.backend == "local"


def test_the_url_key_survives_restarts(tmp_path: Path) -> None:
    config = write_toml(tmp_path / "upload.toml", {"http_upload": {"local": {"root": "files"}}})
    first_put, _ = urls(config)
    key = (tmp_path / "files" / ".url-key").read_text()
    second_put, _ = urls(config)
    assert (tmp_path / "files" / ".url-key").read_text() == key
    # a URL signed by the first run is accepted by a backend made afresh
    backend = load_backend(config)
    for put_url in (first_put, second_put):
        token, name, query = signed(put_url)
        assert backend.signer.check(token, name, query, now=0).size == 10


def test_a_configured_url_key_signs_and_no_key_file_is_made(tmp_path: Path) -> None:
    key = "a configured key of some length"
    config = write_toml(tmp_path / "upload.toml", {"http_upload": {"local": {"root": "files", "url_key": key}}})
    put_url, _ = urls(config, content_type="")
    token, name, query = signed(put_url)
    assert "type" not in query  # no type declared: none signed
    assert UrlSigner(key.encode()).check(token, name, query, now=0).content_type is None
    assert not (tmp_path / "files" / ".url-key").exists()


@pytest.mark.parametrize("key", [b"sixteen bytes ok", bytes(range(64)), b"0123456789abcdef" * 8])
def test_put_signatures_are_hmac_sha256_whatever_the_key_length(key: bytes) -> None:
    # 128 bytes is what `openssl rand -hex 64` makes: longer than SHA-256's block, so RFC 2104
    # hashes it first; URLs signed before a restart (or by an older release) must still pass
    fields = "token\0a.txt\0" "10\0text/plain\0" "1700000000"
    expected = base64.urlsafe_b64encode(hmac.new(key, fields.encode(), hashlib.sha256).digest()).rstrip(b"=")
    assert UrlSigner(key).signature("token", "a.txt", 10, "text/plain", 1700000000) == expected.decode()


def test_public_url_and_path_prefix(tmp_path: Path) -> None:
    config = write_toml(
        tmp_path / "upload.toml", {"http": {"public_url": "https://Up.Example.org/files/", "port": 9000}}
    )
    put_url, get_url = urls(config, "a/b\\c.txt")
    assert get_url.startswith("https://up.example.org/files/")
    assert get_url.endswith("/a_b_c.txt")  # one path segment, like the S3 backend's


@pytest.mark.parametrize(
    "http, public_url",
    [
        ({}, "http://127.0.0.1:8080"),
        ({"bind": "::1", "port": 8443}, "http://[::1]:8443"),
        ({"tls_cert": "c.pem", "tls_key": "k.pem"}, "https://127.0.0.1:8080"),
        ({"public_url": "http://localhost:80"}, "http://localhost"),
    ],
)
def test_public_url_default(tmp_path: Path, http: dict[str, object], public_url: str) -> None:
    config = load_config(write_toml(tmp_path / "upload.toml", {"http": http}))
    assert config.http.public_url == public_url
    assert config.http_upload.public_url == public_url
    if "tls_cert" in http:
        assert config.http.tls_cert == tmp_path / "c.pem" and config.http.tls_key == tmp_path / "k.pem"


@pytest.mark.parametrize("bind", ["0.0.0.0", "::"])
def test_a_wildcard_bind_needs_a_public_url(tmp_path: Path, bind: str) -> None:
    """``http://0.0.0.0:8080/…`` would be the URL every client gets."""
    config = write_toml(tmp_path / "upload.toml", {"http": {"bind": bind}})
    status, out, err = run_cli("urls", "-c", str(config), "example.org", "f.txt", "10", "", "300")
    assert (status, out) == (2, "")
    assert "http.public_url: is required when http.bind is a wildcard address" in err
    with_url = {"http": {"bind": bind, "public_url": "https://upload.example.org"}}
    assert load_config(write_toml(tmp_path / "upload.toml", with_url)).http.bind == bind


def test_http_defaults(tmp_path: Path) -> None:
    http = load_config(write_toml(tmp_path / "upload.toml", {})).http
    assert (http.bind, http.port, http.cors_origins, http.max_uploads) == ("127.0.0.1", 8080, ("*",), 64)
    assert http.tls_cert is None and http.tls_key is None


def test_an_s3_table_makes_s3_the_default(tmp_path: Path) -> None:
    s3 = {"bucket_url": "https://b.example.org", "region": "eu-west-1", "access_key_id": "AK", "secret_access_key": "x"}
    config = load_config(write_toml(tmp_path / "upload.toml", {"http_upload": {"s3": s3}}))
    assert config.http_upload.backend == "s3"
    assert not (tmp_path / "uploads").exists()


def load_backend(config: Path) -> LocalBackend:
    from slixmpp_http_upload.backends import create_backend

    backend = create_backend(load_config(config).http_upload)
    assert isinstance(backend, LocalBackend)
    return backend


def test_every_signed_field_counts(tmp_path: Path) -> None:
    backend = load_backend(write_toml(tmp_path / "upload.toml", {}))
    slot = backend.make_slot(SlotRequest("photo.jpg", 1234, "image/jpeg", "example.org"), now=NOW)
    token, name, query = signed(slot.put_url)
    grant = backend.signer.check(token, name, query, now=NOW)
    assert (grant.size, grant.content_type) == (1234, "image/jpeg")

    other_token = ("0" if token[0] != "0" else "1") + token[1:]
    tampered = [
        (other_token, name, query),
        (token, "photo.png", query),
        (token, name, {**query, "size": "1235"}),
        (token, name, {**query, "type": "text/html"}),
        (token, name, {key: value for key, value in query.items() if key != "type"}),
        (token, name, {**query, "expires": str(int(query["expires"]) + 1)}),
        (token, name, {**query, "sig": query["sig"][:-1] + ("A" if query["sig"][-1] != "A" else "B")}),
        (token, name, {key: value for key, value in query.items() if key != "sig"}),
        (token, name, {**query, "size": "-1"}),
        (token, name, {}),
    ]
    for case in tampered:
        with pytest.raises(Forbidden):
            backend.signer.check(*case, now=NOW)
    with pytest.raises(Forbidden, match="expired"):
        backend.signer.check(token, name, query, now=NOW + backend.expiration_time + 1)
    # another key refuses the same URL
    with pytest.raises(Forbidden):
        UrlSigner(b"another key, sixteen bytes or more").check(token, name, query, now=NOW)


@pytest.fixture(scope="module")
def backend(tmp_path_factory: pytest.TempPathFactory) -> LocalBackend:
    return load_backend(write_toml(tmp_path_factory.mktemp("local") / "upload.toml", {}))


@settings(max_examples=300, deadline=None)
@given(name=accepted_filenames(st.sampled_from(["/", "\\", "..", "%2F", "%00"]), max_parts=12))
def test_any_accepted_file_name_comes_back_from_its_urls(backend: LocalBackend, name: str) -> None:
    """What the server reads from a slot's URLs is the name and the grant that were signed."""
    slot = backend.make_slot(SlotRequest(name, 5, "text/plain", "example.org"), now=NOW)
    put = urlsplit(slot.put_url)
    target = parse_target(put.path)
    assert target is not None and target.name == object_name(name)
    assert parse_target(urlsplit(slot.get_url).path) == target
    grant = backend.signer.check(target.token, target.name, dict(parse_qsl(put.query)), now=NOW)
    assert (grant.size, grant.content_type) == (5, "text/plain")



_PATH_PIECES = st.lists(
    st.one_of(
        st.sampled_from(["", ".", "..", "%2e%2e", "%2F", "%5C", "%00", "\\", "/", "ab" * 16, "%ff", "~", "C:"]),
        st.text(max_size=6),
    ),
    max_size=6,
).map("".join)


@settings(max_examples=500, deadline=None)
@given(path=st.one_of(_PATH_PIECES, _PATH_PIECES.map(lambda rest: f"/{'ab' * 16}/{rest}")))
def test_no_request_path_names_anything_outside_the_root(path: str) -> None:
    """Whatever the path, a target is one hex folder and one plain name in it."""
    target = parse_target(path)
    if target is not None:
        assert all(char in "0123456789abcdef" for char in target.token)
        assert target.name not in (".", "..")
        assert not any(char in target.name for char in "/\\\0")
        assert not any(ord(char) < 0x20 for char in target.name)


async def test_a_commit_cancelled_in_its_fsync_still_ends_complete(tmp_path: Path, monkeypatch) -> None:
    """The server cancels what is left when it stops: a commit already in its thread must finish
    there (the body was all received), not have its file closed and removed under it by the
    handler's discard on the way out."""
    store = FileStore(tmp_path)
    token = "ab" * 16
    upload = store.begin(token, "f.bin", None)
    upload.write(b"hello")
    in_fsync, release = threading.Event(), threading.Event()
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        in_fsync.set()
        release.wait(10)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    commit = asyncio.ensure_future(upload.commit())
    assert await asyncio.to_thread(in_fsync.wait, 10)
    commit.cancel()
    with pytest.raises(asyncio.CancelledError):
        await commit
    upload.discard()  # what the HTTP handler does when it is cancelled
    release.set()
    for _ in range(200):
        if store.has(token) and not os.listdir(tmp_path / TEMPORARY):
            break
        await asyncio.sleep(0.05)
    stored = store.open(token, "f.bin")
    assert stored is not None
    try:
        assert os.pread(stored.fd, 10, 0) == b"hello"
    finally:
        os.close(stored.fd)
        store.close()


@pytest.mark.parametrize("stage", ["writing", "meta written"])
async def test_a_file_deleted_while_its_upload_is_in_progress_never_appears(tmp_path: Path, stage: str) -> None:
    """The sweeper (or purge) deletes a token whose PUT began before its expiry and is still
    running: the upload must not complete afterwards, or the file would stay (and be served,
    its record gone) for ever."""
    backend = LocalBackend(FileStore(tmp_path), UrlSigner(b"k" * 32), "http://127.0.0.1:1")
    token = "cd" * 16
    other = backend.store.begin("ef" * 16, "g.bin", None)  # another token's upload is left alone
    upload = backend.store.begin(token, "f.bin", None)
    upload.write(b"hello")
    if stage == "meta written":  # the commit got as far as its folder's last step
        (upload.folder / "meta").write_text('{"name": "f.bin"}')
    assert await backend.delete([token]) == [token]
    with pytest.raises(UploadDeleted):
        await upload.commit()
    assert not backend.store.has(token) and backend.store.open(token, "f.bin") is None
    assert os.listdir(tmp_path / TEMPORARY) == [other.folder.name]
    other.write(b"x")
    await other.commit()
    assert backend.store.has("ef" * 16)
    backend.store.close()


@pytest.mark.parametrize("url_key", [None, "a configured key of some length"])
def test_a_root_that_cannot_be_written_is_a_configuration_error(tmp_path: Path, url_key: str | None) -> None:
    """Even when everything the backend reads at start is already there (the key, ``.tmp``):
    the service would start and answer every upload with 500."""
    local = {"root": "disk/files"} | ({"url_key": url_key} if url_key else {})
    config = write_toml(tmp_path / "upload.toml", {"http_upload": {"local": local}})
    with tmpfs(tmp_path / "disk", "size=1m"):
        urls(config)  # makes the root, .tmp and (without url_key) the key
        subprocess.run(["mount", "-o", "remount,ro", str(tmp_path / "disk")], check=True)
        status, out, err = run_cli("urls", "-c", str(config), "example.org", "f.txt", "10", "", "300")
    assert (status, out) == (2, "")
    assert "http_upload.local.root" in err and "disk/files" in err


def test_two_processes_making_the_key_at_once_agree(tmp_path: Path, monkeypatch) -> None:
    """``serve`` and ``urls`` (or ``check``) started together on a new root: the one that comes
    second must not read a key file that the first has made but not written yet (nor must a
    crash between the two leave an empty one)."""
    first, second = FileStore(tmp_path), FileStore(tmp_path)
    writing, second_done = threading.Event(), threading.Event()
    real_write = os.write

    def write(fd: int, data: bytes) -> int:
        if threading.current_thread() is not threading.main_thread():
            writing.set()
            second_done.wait(10)
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    keys: list[bytes] = []
    maker = threading.Thread(target=lambda: keys.append(first.url_key()))
    maker.start()
    assert writing.wait(10)
    try:
        keys.append(second.url_key())
    finally:
        second_done.set()
        maker.join(10)
    assert len(keys) == 2 and keys[0] == keys[1]
    assert bytes.fromhex((tmp_path / ".url-key").read_text()) == keys[0]
    first.close()
    second.close()
