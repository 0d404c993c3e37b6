"""What the download redirect of ``downloads = "redirect"`` costs, beside the alternatives.

Measured with ``wrk`` (one thread, ``--connections`` keep-alive connections, ``--seconds`` per
target), each target in turn, ``--rounds`` interleaved rounds, the median round shown:

- ``ours local GET``: a 1 KiB file from the ``local`` backend's built-in HTTP server (``serve``);
- ``ours redirect``: the 302 of ``serve`` with the S3 backend in redirect mode for a 1 KiB
  object (a ledger look-up and a presigned GET per request; wrk does not follow it);
- ``nginx redirect``: nginx answering ``return 302 <S3 URL>$request_uri`` (no signing: the
  floor of any redirect);
- ``S3 GET (presigned)``: SeaweedFS serving the 1 KiB object to one presigned URL — the second
  half of a download through the redirect.

Requests per second, mean and p99 latency, and the CPU seconds per 1000 requests of the server
process (``/proc``; for S3, the whole ``weed`` process). Everything listens on 127.0.0.1 and is
stopped on exit. Numbers, not a test: nothing here asserts on time.

    .venv/bin/python bench/redirect.py [--seconds 5] [--connections 16] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from harness import REPO, RESULTS, cpu_seconds, machine, write_json

sys.path.insert(0, str(REPO / "tests"))
from helpers import write_toml  # noqa: E402
from servers import LOOPBACK, Nginx, SeaweedFS, _port_open, _stop_process_group, free_ports  # noqa: E402

BODY = secrets.token_bytes(1024)
NAME = "bench.bin"


def serve(config: Path, port: int) -> subprocess.Popen[bytes]:
    """``serve -c config``, once its HTTP server takes connections on ``port``."""
    process = subprocess.Popen(
        [sys.executable, "-m", "slixmpp_http_upload", "serve", "-c", str(config)],
        cwd=config.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 20
    while not _port_open(port):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"serve -c {config} did not start")
        time.sleep(0.05)
    return process


def upload(config: Path) -> str:
    """A slot from ``urls`` (recorded in the ledger for the redirect), the body PUT to it; the GET URL."""
    done = subprocess.run(
        [sys.executable, "-m", "slixmpp_http_upload", "urls", "-c", str(config), "localhost", NAME,
         str(len(BODY)), "application/octet-stream", "600"],
        capture_output=True, text=True, check=True,
    )
    urls = dict(line.split(": ", 1) for line in done.stdout.splitlines())
    request = urllib.request.Request(
        urls["PutURL"], data=BODY, method="PUT", headers={"Content-Type": "application/octet-stream"}
    )
    urllib.request.urlopen(request).close()
    return urls["GetURL"]


def wrk(url: str, seconds: int, connections: int, pid: int) -> dict[str, float]:
    """One wrk run against ``url``: requests/s, mean and p99 latency (ms), server CPU per 1000."""
    before = cpu_seconds(pid)
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", url],
        capture_output=True, text=True, check=True,
    )
    cpu = cpu_seconds(pid) - before
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", done.stdout).group(1))  # type: ignore[union-attr]
    requests = int(re.search(r"(\d+) requests in", done.stdout).group(1))  # type: ignore[union-attr]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    if non_2xx:
        raise RuntimeError(f"{url}: {non_2xx.group(1)} error answers")
    return {
        "requests_per_second": rate,
        "mean_ms": _ms(re.search(r"Latency\s+(\S+)", done.stdout).group(1)),  # type: ignore[union-attr]
        "p99_ms": _ms(re.search(r"99%\s+(\S+)", done.stdout).group(1)),  # type: ignore[union-attr]
        "cpu_seconds_per_1000": 1000 * cpu / requests,
    }


def _ms(value: str) -> float:
    number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()  # type: ignore[union-attr]
    return float(number) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    processes: list[subprocess.Popen[bytes]] = []
    with SeaweedFS() as s3, tempfile.TemporaryDirectory(prefix="bench-redirect-") as tmp:
        work = Path(tmp)
        bucket_url = s3.create_bucket("private-bench")  # no anonymous read
        local_port, redirect_port, nginx_port, down = free_ports(4)
        component = {"server": LOOPBACK, "port": down, "secret": "unused", "domains": ["localhost"]}
        s3_table = {
            "bucket_url": bucket_url, "region": s3.region, "access_key_id": s3.access_key,
            "secret_access_key": s3.secret_key, "downloads": "redirect",
        }
        local_config = write_toml(work / "local.toml", {
            "component": component, "http": {"port": local_port}, "http_upload": {"local": {"root": "uploads"}},
        })
        redirect_config = write_toml(work / "redirect.toml", {
            "component": component, "http": {"port": redirect_port}, "http_upload": {"s3": s3_table},
        })
        try:
            local = serve(local_config, local_port)
            processes.append(local)
            redirect = serve(redirect_config, redirect_port)
            processes.append(redirect)
            local_url, redirect_url = upload(local_config), upload(redirect_config)
            location = _location(redirect_url)
            block = f"server {{ listen {LOOPBACK}:{nginx_port}; access_log off; " \
                    f"location / {{ return 302 {s3.endpoint}$request_uri; }} }}"
            with Nginx(block, [nginx_port]) as nginx:
                targets = {
                    "ours local GET": (local_url, local.pid),
                    "ours redirect": (redirect_url, redirect.pid),
                    "nginx redirect": (redirect_url.replace(str(redirect_port), str(nginx_port), 1), nginx.pid),
                    "S3 GET (presigned)": (location, s3.pid),
                }
                runs: dict[str, list[dict[str, float]]] = {name: [] for name in targets}
                for _ in range(args.rounds):
                    for name, (url, pid) in targets.items():
                        runs[name].append(wrk(url, args.seconds, args.connections, _worker(pid, name)))
        finally:
            for process in processes:
                _stop_process_group(process, 5)

    results = {name: _median(values) for name, values in runs.items()}
    print(f"wrk -t1 -c{args.connections} -d{args.seconds}s, 1 KiB, median of {args.rounds} rounds")
    print(f"{'target':<20} {'req/s':>8} {'mean ms':>8} {'p99 ms':>8} {'CPU s/1000':>11}")
    for name, result in results.items():
        print(f"{name:<20} {result['requests_per_second']:>8.0f} {result['mean_ms']:>8.2f} "
              f"{result['p99_ms']:>8.2f} {result['cpu_seconds_per_1000']:>11.3f}")
    path = write_json(RESULTS / "redirect.json", {
        "machine": machine(), "seconds": args.seconds, "connections": args.connections, "rounds": args.rounds,
        "results": results, "runs": runs,
    })
    print(f"written to {path.relative_to(REPO)}")


def _location(url: str) -> str:
    """Where the service redirects a GET of ``url``."""

    class Stop(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any) -> None:
            return None

    try:
        urllib.request.build_opener(Stop()).open(url)
    except urllib.error.HTTPError as error:
        if error.code == 302:
            return error.headers["Location"]
        raise
    raise RuntimeError(f"{url} was not redirected")


def _worker(pid: int, name: str) -> int:
    """nginx answers in its worker process: measure that one (the child of the master)."""
    if not name.startswith("nginx"):
        return pid
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return int(children[0]) if children else pid


def _median(runs: list[dict[str, float]]) -> dict[str, float]:
    """The run of median rate."""
    return sorted(runs, key=lambda run: run["requests_per_second"])[len(runs) // 2]


if __name__ == "__main__":
    main()
