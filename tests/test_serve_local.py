"""``serve`` with the ``local`` backend, as a real process: its HTTP server serves while the
XMPP server is down, says where the files are, survives ``kill -9`` in the middle of an upload
(the partial upload is gone, every completed file still served byte-exact), and ``check`` and
``urls`` work against it."""

from __future__ import annotations

import asyncio
import os
import resource
import secrets
import signal
import socket
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from helpers import DOMAIN, awk_field, run_cli, unconnected_component, write_toml
from servers import free_ports
from slixmpp_http_upload import cli
from slixmpp_http_upload.filestore import TEMPORARY


def local_config(xmpp_port: int, http_port: int, **tables: Any) -> dict[str, Any]:
    return {
        "component": unconnected_component(xmpp_port),
        "http_upload": {"expiration_time": 600, "max_file_size": 100_000_000},
        "http": {"port": http_port},
        **tables,
    }


async def wait_for_http(url: str, process: Any) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(300):
            assert process.running, process.stderr
            try:
                async with session.get(url) as response:
                    if response.status == 404:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError(f"serve's HTTP server did not come up: {process.stderr}")


async def slot_urls(config: Path, filename: str, size: int) -> tuple[str, str]:
    """``urls`` (its own event loop, so in a thread)."""
    arguments = ("urls", "-c", str(config), DOMAIN, filename, str(size), "", "600")
    status, out, err = await asyncio.to_thread(run_cli, *arguments)
    assert status == 0, err
    return awk_field(out, "PutURL")[0], awk_field(out, "GetURL")[0]


async def test_kill_9_during_an_upload_then_restart(start_serve: Any, xmpp_down: int, tmp_path: Path) -> None:
    (http_port,) = free_ports(1)
    document = local_config(xmpp_down, http_port)
    process = start_serve(document)
    config = process.config
    base = f"http://127.0.0.1:{http_port}"
    await wait_for_http(base + "/", process)
    assert f"files stored in {config.parent / 'uploads'}" in process.stderr
    assert "cannot connect to 127.0.0.1" in process.stderr  # the XMPP side is down, downloads are not

    stored: dict[str, bytes] = {}
    async with aiohttp.ClientSession() as session:
        for index, size in enumerate((1, 70_000, 2_000_000)):
            body = secrets.token_bytes(size)
            put_url, get_url = await slot_urls(config, f"file {index} é.bin", size)
            async with session.put(put_url, data=body, headers={"Content-Type": ""}) as response:
                assert response.status == 201
            stored[get_url] = body

        put_url, partial_url = await slot_urls(config, "partial.bin", 5_000_000)
        parts = urlsplit(put_url)
        reader, writer = await asyncio.open_connection("127.0.0.1", http_port)
        writer.write(f"PUT {parts.path}?{parts.query} HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n".encode())
        writer.write(b"p" * 1_000_000)
        await writer.drain()
        temporary = config.parent / "uploads" / TEMPORARY
        for _ in range(200):
            if any((entry / "data").exists() and (entry / "data").stat().st_size > 0 for entry in temporary.iterdir()):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the upload never reached the disk")

        os.killpg(process.proc.pid, signal.SIGKILL)
        process.wait(10)
        writer.close()
        assert list(temporary.iterdir()), "kill -9 left no partial upload to clean (the test proves nothing)"

        restarted = start_serve(document)
        await wait_for_http(base + "/", restarted)
        assert not list(temporary.iterdir())
        assert "removed 1 unfinished upload(s)" in restarted.stderr
        for get_url, body in stored.items():
            async with session.get(get_url) as response:
                assert response.status == 200 and await response.read() == body
        async with session.get(partial_url) as response:
            assert response.status == 404
        async with session.put(put_url, data=b"q" * 5_000_000) as response:
            assert response.status == 201  # the slot is free again


async def test_check_and_metrics_with_the_local_backend(start_serve: Any, xmpp_down: int) -> None:
    http_port, metrics_port = free_ports(2)
    document = local_config(xmpp_down, http_port, metrics={"port": metrics_port})
    document["http_upload"]["local"] = {"root": "check-uploads"}  # start_serve's folder is shared
    process = start_serve(document)
    config = process.config
    await wait_for_http(f"http://127.0.0.1:{http_port}/", process)

    status, out, err = await asyncio.to_thread(run_cli, "check", "-c", str(config))
    assert status == 0, out + err
    lines = out.splitlines()
    assert lines[0].startswith(f"ok    slot    http://127.0.0.1:{http_port}/")
    assert any(line.startswith("ok    put     HTTP 201") for line in lines), lines
    assert any(line.startswith("ok    get     HTTP 200") for line in lines), lines
    assert any(line.startswith("ok    delete  removed from") for line in lines), lines
    assert lines[-1] == "all checks passed"
    uploads = config.parent / "check-uploads"
    assert not [name for name in os.listdir(uploads) if not name.startswith(".")]

    async with aiohttp.ClientSession() as session:
        for port in (http_port, metrics_port):
            async with session.get(f"http://127.0.0.1:{port}/metrics") as response:
                assert response.status == 200
                assert 'xmpp_http_upload_create_slot_total{host="upload.localhost"}' in await response.text()


def test_check_says_when_serve_is_not_running(tmp_path: Path) -> None:
    (port,) = free_ports(1)
    config = write_toml(tmp_path / "upload.toml", {"http": {"port": port}})
    status, out, _ = run_cli("check", "-c", str(config))
    assert status == 1
    assert f"FAIL  put     cannot reach http://127.0.0.1:{port}" in out


def test_http_port_in_use_is_a_configuration_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        config = write_toml(tmp_path / "upload.toml", local_config(1, port))
        assert cli.main(["serve", "-c", str(config)]) == 2
    assert f"http.port: cannot listen on 127.0.0.1:{port}: Address already in use" in capsys.readouterr().err


def test_an_unreadable_certificate_is_a_configuration_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (port,) = free_ports(1)
    (tmp_path / "cert.pem").write_text("not a certificate")
    tls = {"port": port, "tls_cert": "cert.pem", "tls_key": "cert.pem"}
    config = write_toml(tmp_path / "upload.toml", local_config(1, port, http=tls))
    assert cli.main(["serve", "-c", str(config)]) == 2
    assert "http.tls_cert: cannot load the certificate and key" in capsys.readouterr().err


def test_serve_raises_its_open_file_limit_to_the_hard_one() -> None:
    from slixmpp_http_upload.serve import _raise_file_limit

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        _raise_file_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
