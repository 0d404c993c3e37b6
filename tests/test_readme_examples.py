"""The README's code runs: its TOML is a valid configuration, its curl recipe uploads, the bot
example (two bots, one process, each with its own limit) answers, and the custom backend example
serves slots once installed through the entry-point group."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import importlib
import os
import re
import secrets
import shutil
import ssl
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlsplit

import aiohttp
import pytest
import slixmpp
from slixmpp.exceptions import IqError
from yarl import URL

from helpers import DOMAIN, HttpService, seaweedfs_s3, write_s3_config, write_toml
from servers import Nginx, find_nginx, free_ports, make_test_certificates
from slixmpp_http_upload import cli
from slixmpp_http_upload.backends import create_backend
from slixmpp_http_upload.config import parse_config

README = Path(__file__).resolve().parent.parent / "README.rst"


def readme_blocks(language: str) -> list[str]:
    """The README's ``.. code-block:: <language>`` sections, dedented."""
    blocks = re.findall(rf"\.\. code-block:: {language}\n\n((?:(?:   .*)?\n)+)", README.read_text())
    return [re.sub(r"^   ", "", block, flags=re.MULTILINE) for block in blocks]


def readme_block(defines: str) -> str:
    (block,) = [block for block in readme_blocks("python") if f"def {defines}(" in block]
    return block


# --- the configuration and the curl recipe --------------------------------------------------


def test_readme_configurations_are_valid(tmp_path: Path) -> None:
    quick_start, http, s3 = readme_blocks("toml")[:3]  # then the retention example
    config = parse_config(tomllib.loads(quick_start), base_dir=tmp_path)
    assert config.component.domains == ("example.com",)
    assert config.http_upload.service_jid("example.com") == "upload.example.com"
    assert config.http_upload.backend == "local"
    assert create_backend(config.http_upload).store.root == tmp_path / "uploads"  # beside the file
    assert config.http.public_url.rstrip("/") == "http://127.0.0.1:8080"

    config = parse_config(tomllib.loads(quick_start + http), base_dir=tmp_path)
    assert (config.http.bind, config.http.port) == ("127.0.0.1", 8080)
    assert config.http.public_url.rstrip("/") == "https://upload.example.com"

    config = parse_config(tomllib.loads(s3))
    assert config.http_upload.backend == "s3"
    assert create_backend(config.http_upload).bucket.host == "mybucket.s3.eu-west-1.amazonaws.com"


def test_readme_retention_example() -> None:
    """Avatars kept forever, attachments 30 days, 100 MB a day each."""
    (block,) = [block for block in readme_blocks("toml") if "purpose.profile" in block]
    settings = parse_config(tomllib.loads(block)).http_upload
    message, profile = settings.purposes["message"], settings.purposes["profile"]
    assert (message.expire_after, profile.expire_after) == (30 * 86400, None)
    assert (message.max_file_size, profile.max_file_size) == (100 << 20, 1 << 20)
    assert (message.daily_quota, message.daily_pool) == (100 << 20, "")
    assert (profile.daily_quota, profile.daily_pool) == (100 << 20, "profile")


@pytest.mark.skipif(shutil.which("curl") is None, reason="the recipe needs curl")
def test_readme_curl_recipe_uploads(seaweedfs, tmp_path: Path) -> None:
    (recipe,) = [block for block in readme_blocks("sh") if "awk '/PutURL:/" in block]
    config = write_s3_config(tmp_path, seaweedfs)
    script = recipe.replace("upload.toml", config).replace("example.com", DOMAIN)
    script += 'test "$(curl -s "$get_url")" = qwerty\n'  # and the download is what was uploaded
    bin_dir = str(Path(sys.executable).parent)  # where slixmpp-http-upload is installed
    result = subprocess.run(
        ["sh", "-e", "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "HTTP/1.1 200" in result.stdout


# --- the quick start behind the README's nginx, over https ---------------------------------


def substituted(text: str, replacements: dict[str, str]) -> str:
    """``text`` with each key replaced by its value; each key must occur exactly once, so the
    README cannot drift away from what this test runs."""
    for old, new in replacements.items():
        assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in\n{text}"
        text = text.replace(old, new)
    return text


@pytest.fixture
def behind_nginx(start_serve, xmpp_down: int, tmp_path: Path) -> Iterator[tuple[HttpService, Nginx, Path]]:
    """``serve`` from the README's quick-start configuration with its ``[http]`` addition (on
    free ports, an XMPP server that never answers), behind nginx running the README's server
    block with a certificate for ``localhost`` from a throw-away CA; and that CA's certificate."""
    if find_nginx() is None:
        pytest.skip("nginx not found; ./tests/run installs it")
    http_port, https_port = free_ports(2)
    quick_start, http = readme_blocks("toml")[:2]
    config = substituted(quick_start, {"port = 5347": f"port = {xmpp_down}", '"example.com"': f'"{DOMAIN}"'})
    config += substituted(http, {"https://upload.example.com": f"https://localhost:{https_port}"})
    config += f"port = {http_port}\n"  # not the default 8080: the machine is shared
    service = HttpService(start_serve, tomllib.loads(config))

    certificates = make_test_certificates(tmp_path)
    (server_block,) = readme_blocks("nginx")
    server_block = substituted(
        server_block,
        {
            "listen 443 ssl;": f"listen 127.0.0.1:{https_port} ssl;",
            "/etc/letsencrypt/live/upload.example.com/fullchain.pem": str(certificates.cert_path),
            "/etc/letsencrypt/live/upload.example.com/privkey.pem": str(certificates.key_path),
            "http://127.0.0.1:8080": f"http://127.0.0.1:{http_port}",
        },
    )
    with Nginx(server_block, [https_port]) as nginx:
        yield service, nginx, certificates.ca_path


def readme_start_up_log(replacements: dict[str, str]) -> list[str]:
    """The README's start-up log lines of ``serve`` up to the HTTP server's, without their
    time stamps, ``replacements`` made."""
    (block,) = [block for block in readme_blocks("console") if "serve -c upload.toml\n20" in block]
    lines = "\n".join(line.split(" ", 2)[2] for line in block.splitlines()[1:3])
    return substituted(lines, replacements).splitlines()


async def test_readme_quick_start_behind_its_nginx_recipe(behind_nginx) -> None:
    service, nginx, tls_ca = behind_nginx
    tls = ssl.create_default_context(cafile=tls_ca)
    root = Path(service.config).parent / "uploads"  # "uploads beside upload.toml"
    assert (root / ".url-key").is_file()
    body = secrets.token_bytes(3 << 20)  # over nginx's default limit of 1 MB
    put_url, get_url = service.slot("tr\u00e8s #1.bin", len(body), "application/x-test")
    assert put_url.startswith(f"https://localhost:{nginx.ports[0]}/")  # public_url
    origin = {"Origin": "https://chat.example.org"}
    async with aiohttp.ClientSession() as http:
        put = URL(put_url, encoded=True)
        async with http.put(put, data=body, headers={"Content-Type": "application/x-test", **origin}, ssl=tls) as answer:
            assert answer.status == 201, await answer.text()
            assert answer.headers["Access-Control-Allow-Origin"] in ("*", origin["Origin"])
        get = URL(get_url, encoded=True)
        async with http.get(get, ssl=tls) as answer:
            assert (answer.status, answer.headers["Content-Type"]) == (200, "application/x-test")
            assert await answer.read() == body
        async with http.get(get, headers={"Range": "bytes=1000-1999"}, ssl=tls) as answer:
            assert (answer.status, await answer.read()) == (206, body[1000:2000])
    # Written before the server took its first request, and says what the README says.
    component_port = tomllib.loads(Path(service.config).read_text())["component"]["port"]
    for line in readme_start_up_log(
        {
            "upload.example.com": f"upload.{DOMAIN}",
            "127.0.0.1:5347": f"127.0.0.1:{component_port}",
            "http://127.0.0.1:8080 (public URL http://127.0.0.1:8080)": (
                f"http://127.0.0.1:{service.port} (public URL https://localhost:{nginx.ports[0]})"
            ),
            "/home/xmpp/uploads": str(root),
        }
    ):
        assert line in service.process.stderr
    # Through nginx (its log), and streamed: nginx did not keep the body on its disk first.
    assert f'"PUT {urlsplit(put_url).path}?' in nginx.access_log.read_text()
    log = nginx.error_log.read_text()
    assert "buffered to a temporary file" not in log, log

    # And check, the README's next step, passes through it without the warning about http.
    done = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "slixmpp_http_upload", "check", "-c", service.config],
        env={**os.environ, "SSL_CERT_FILE": str(tls_ca)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "warn" not in done.stdout, done.stdout + done.stderr
    assert "ok    get     HTTP 200" in done.stdout


# --- the custom backend ---------------------------------------------------------------------


@pytest.fixture
def installed_example_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Install the README's backend as a distribution publishing ``external`` in the group."""
    (tmp_path / "readme_backend.py").write_text(readme_block("make_backend"))
    dist_info = tmp_path / "readme_backend-1.0.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text("Metadata-Version: 2.1\nName: readme-backend\nVersion: 1.0\n")
    (dist_info / "entry_points.txt").write_text(
        "[slixmpp_http_upload.backends]\nexternal = readme_backend:make_backend\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    yield
    sys.modules.pop("readme_backend", None)


def write_config(tmp_path: Path, backend_table: str) -> str:
    path = tmp_path / "external.toml"
    path.write_text(f'[component]\ndomains = ["example.com"]\n[http_upload]\nbackend = "external"\n{backend_table}')
    return str(path)


EXTERNAL_TABLE = '[http_upload.external]\nbase_url = "https://files.example.com/up/"\nsecret = "hunter2"\n'


def external_urls(tmp_path: Path, capsys: pytest.CaptureFixture[str], *args: str) -> tuple:
    """``urls`` through the README's backend: the split PUT and GET URLs."""
    assert cli.main(["urls", "-c", write_config(tmp_path, EXTERNAL_TABLE), "example.com", *args]) == 0
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines())
    return urlsplit(lines["PutURL"]), urlsplit(lines["GetURL"])


def test_readme_backend_serves_slots_through_the_entry_point(
    installed_example_backend: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    put, get = external_urls(tmp_path, capsys, "my photo.jpg", "1234", "image/jpeg", "60")
    assert (put.netloc, put.path) == (get.netloc, get.path)
    assert get.path.startswith("/up/") and get.path.endswith("/my%20photo.jpg")
    path = unquote(get.path.removeprefix("/up/"))
    expected = hmac.new(b"hunter2", f"{path}\0{1234}\0image/jpeg".encode(), hashlib.sha256).hexdigest()
    assert put.query == f"v2={expected}"


def test_readme_backend_keeps_the_file_name_one_segment(
    installed_example_backend: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _put, get = external_urls(tmp_path, capsys, "a/../../b.jpg", "1", "", "60")
    _, up, _token, name = get.path.split("/")
    assert (up, name) == ("up", "a_.._.._b.jpg")


def test_readme_backend_checks_its_options(
    installed_example_backend: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = write_config(tmp_path, '[http_upload.external]\nbase_url = "https://files.example.com/"\n')
    assert cli.main(["urls", "-c", config, "example.com", "a.txt", "1", "", "60"]) == 2
    assert "http_upload.external.secret: is required" in capsys.readouterr().err


# --- the bot ----------------------------------------------------------------------------------


async def test_two_readme_bots_each_answer_with_their_own_limit(prosody, seaweedfs, xmpp_clients) -> None:
    namespace: dict = {}
    exec(compile(readme_block("make_upload_bot"), "README.rst", "exec"), namespace)
    make_upload_bot = namespace["make_upload_bot"]
    prosody.register("carol", "carol-password")
    s3 = seaweedfs_s3(seaweedfs)
    limits = {"alice": 1000, "bob": 2000}
    bots = {
        user: await xmpp_clients.login(
            make_upload_bot(f"{prosody.jid(user)}/bot", prosody.users[user], s3, limit), prosody
        )
        for user, limit in limits.items()
    }
    carol = await xmpp_clients.connect(prosody, "carol")
    for user, limit in limits.items():
        bot_jid = bots[user].boundjid.full
        info = await carol.plugin["xep_0030"].get_info(jid=bot_jid, timeout=10)
        assert f"<value>{limit}</value>" in str(info), str(info)
        ok = await request_slot(carol, bot_jid, limit)
        assert ok["type"] == "result"
        with pytest.raises(IqError) as refused:
            await request_slot(carol, bot_jid, limit + 1)
        error = refused.value.iq["error"]
        assert (error["type"], error["condition"]) == ("modify", "not-acceptable")
        assert f"<max-file-size>{limit}</max-file-size>" in str(refused.value.iq)


async def request_slot(client: slixmpp.ClientXMPP, to: str, size: int):
    iq = client.make_iq_get(ito=to)
    iq.append(
        slixmpp.xmlstream.ET.fromstring(
            f'<request xmlns="urn:xmpp:http:upload:0" filename="a.txt" size="{size}" content-type="text/plain"/>'
        )
    )
    return await iq.send(timeout=10)


async def test_readme_local_bot_takes_the_upload_itself(prosody, xmpp_clients, tmp_path: Path) -> None:
    namespace: dict = {}
    exec(compile(readme_block("start_local_upload_bot"), "README.rst", "exec"), namespace)
    (port,) = free_ports(1)
    config = write_toml(tmp_path / "bot.toml", {"http": {"port": port}})
    bot, server = await namespace["start_local_upload_bot"](
        f"{prosody.jid('alice')}/bot", prosody.users["alice"], config
    )
    try:
        await xmpp_clients.login(bot, prosody)
        bob = await xmpp_clients.connect(prosody, "bob")
        slot = (await request_slot(bob, bot.boundjid.full, 10))["http_upload_slot"]
        put_url, get_url = slot["put"]["url"], slot["get"]["url"]
        assert get_url.startswith(f"http://127.0.0.1:{port}/")
        async with aiohttp.ClientSession() as http:
            async with http.put(put_url, data=b"0123456789", headers={"Content-Type": "text/plain"}) as put:
                assert put.status == 201
            async with http.get(get_url) as got:
                assert await got.read() == b"0123456789"
        assert (tmp_path / "uploads").is_dir()
    finally:
        await server.stop()
