"""HTTP file storage side by side: our `local` backend's HTTP server vs Prosody's mod_http_file_share vs nginx.

What it measures, on 127.0.0.1, in one run, for each target:

* ``ours``          — ``python -m slixmpp_http_upload serve -c CFG``: the ``local`` backend and its own
                      HTTP server (aiohttp), connected as a component to the Prosody below; slot URLs
                      from ``slixmpp-http-upload urls`` (signed offline with the root's key);
* ``prosody``       — Prosody 0.12's ``mod_http_file_share`` as shipped (the Prosody that
                      ``tests/servers.py`` starts, the one ``throughput.py`` benches against), slots
                      asked for over XMPP; only its size limit and daily quota are raised (its
                      10 MB limit refuses a 100 MB file);
* ``prosody_tuned`` — the same with ``network_settings = { read_size = 1 MiB; min_wait = 1 µs;
                      nagle = false; opportunistic_writes = true }`` (Prosody reads 8 KiB per
                      event-loop turn and sleeps ≥ 1 ms between turns, which caps its uploads at a
                      few MB/s; with Nagle on and two writes per answer, small GETs wait for
                      delayed ACKs);
* ``nginx``         — Debian's nginx, one worker, our own config on a free loopback port, serving
                      the files from disk with sendfile; PUT through its dav module (the limit).

(a) GET of a 100 MiB file (MB/s, curl to /dev/null), (b) PUT of a 100 MiB file (MB/s, curl; each
round to a fresh slot), (c) 1 KiB GETs per second with 64 keep-alive connections (wrk, one thread;
its CPU is reported so that a client-bound row shows), (d) the server's RSS growth during a 1 GiB
upload (ours, prosody_tuned, nginx: Prosody as shipped would take minutes) and during 1,000
concurrent slow downloads (``bench/slowclient.py``: 1 MiB each, 16 KiB per 0.25 s per connection).

Ours fsyncs every upload before renaming it into place (the issue requires it); Prosody and nginx
do not: PUT figures compare a durable write with two that are not. ``os.sync()`` runs before every
PUT so that no target pays for another's dirty pages.

Noise: the machine is shared; every transfer measure runs ``--rounds`` times, interleaved with the
order rotating, the median shown; before each the script waits (at most ``--quiet-wait`` s) for
other load to drop. Ratios from one run are what to compare.

PUT rounds stop at 3 for a target whose PUT takes over 10 s (Prosody as shipped: ~35 s each).

Run (from the repository root; ~10 minutes, a third of it Prosody's 3 MB/s uploads)::

    .venv/bin/python bench/http_storage.py [--rounds 5] [--targets ours,prosody,nginx] [--profile]

Needs nginx and wrk (``apt-get install nginx wrk``, or ``--install`` to run that), Prosody, curl.
Results: printed, and written as JSON to ``--json`` (default ``bench/results/http_storage.json``).
"""

from __future__ import annotations

import argparse
import asyncio
import filecmp
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import (
    BENCH,
    OURS_JID,
    ComponentProcess,
    Prosody,
    cpu_seconds,
    find_py_spy,
    machine_busy_seconds,
    peak_rss_bytes,
    wait_for_quiet,
)
from loadclient import request_slot
from servers import LOOPBACK, free_ports, rss_bytes

MiB = 1024 * 1024
BIG = 100 * MiB
SMALL = 1024
HUGE = 1024 * MiB
SLOW = 1 * MiB
CONTENT_TYPE = "application/octet-stream"
SLOW_PUT_S = 10.0
TARGETS = ("ours", "prosody", "prosody_tuned", "nginx")
LABELS = {
    "ours": "ours (serve, local backend)",
    "prosody": "Prosody mod_http_file_share",
    "prosody_tuned": "Prosody, network_settings tuned",
    "nginx": "nginx (sendfile; dav PUT)",
}
PROSODY_LIMITS = "\n".join([harness.PROSODY_LOAD_CONFIG, f"http_file_share_size_limit = {2 * HUGE}"])
PROSODY_TUNED = (
    "network_settings = { read_size = 1048576; min_wait = 1e-06; nagle = false; opportunistic_writes = true }"
)


class BenchError(RuntimeError):
    """A server refused a transfer, or the benchmark could not run as asked."""


# --------------------------------------------------------------------------
# the stores under test


@dataclass
class Upload:
    """Where one file goes (PUT, with the slot's headers) and where it is then served (GET)."""

    put_url: str
    get_url: str
    headers: list[tuple[str, str]] = field(default_factory=list)


class Store:
    """A running HTTP file store: its server processes and a way to get a slot."""

    key: str

    def pids(self) -> list[int]:
        raise NotImplementedError

    def slot(self, name: str, size: int) -> Upload:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    @property
    def label(self) -> str:
        return LABELS[self.key]


class OursStore(Store):
    key = "ours"

    def __init__(self, prosody: Prosody, work: Path) -> None:
        self.dir = work / "ours"
        self.dir.mkdir()
        (self.port,) = free_ports(1)
        self.config = self.dir / "upload.toml"
        name, _, domain = OURS_JID.partition(".")
        self.domain = domain
        self.config.write_text(
            "\n".join(
                [
                    "[component]",
                    f'server = "{LOOPBACK}"',
                    f"port = {prosody.component_port}",
                    f'secret = "{prosody.components[OURS_JID]}"',
                    f'domains = ["{domain}"]',
                    "",
                    "[http]",
                    f'bind = "{LOOPBACK}"',
                    f"port = {self.port}",
                    "",
                    "[http_upload]",
                    f'host = "{name}.@HOST@"',
                    f"max_file_size = {2 * HUGE}",
                    "",
                    "[http_upload.local]",
                    'root = "root"',
                    "",
                ]
            )
        )
        self.process = harness.ours_process("ours", self.config, self.dir).start()
        wait_for_port(self.port, self.process)
        self.serial = 0

    def pids(self) -> list[int]:
        return [self.process.pid]

    def slot(self, name: str, size: int) -> Upload:
        command = [sys.executable, "-m", "slixmpp_http_upload", "urls", "-c", str(self.config)]
        self.serial += 1
        result = subprocess.run(
            [*command, self.domain, f"{self.serial}-{name}", str(size), CONTENT_TYPE, "3600"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        lines = dict(line.split(": ", 1) for line in result.stdout.splitlines() if ": " in line)
        if result.returncode or "PutURL" not in lines:
            raise BenchError(f"slixmpp-http-upload urls failed ({result.returncode}): {result.stderr.strip()}")
        headers = [tuple(value.split(": ", 1)) for key, value in lines.items() if key == "Header"]
        return Upload(lines["PutURL"], lines["GetURL"], headers)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.process.stop()


class ProsodyStore(Store):
    """A Prosody of its own (``extra`` config lines) with mod_http_file_share and one user."""

    def __init__(self, key: str, components: dict[str, str], extra: str, log_level: str) -> None:
        self.key = key
        self.prosody = Prosody(components, http_file_share=True, log_level=log_level, extra_config=extra)
        self.prosody.start()
        try:
            self.account = harness.register_users(self.prosody, 1)[0]
        except BaseException:
            self.prosody.stop()
            raise
        self.serial = 0

    def pids(self) -> list[int]:
        assert self.prosody.pid is not None
        return [self.prosody.pid]

    def slot(self, name: str, size: int) -> Upload:
        self.serial += 1
        server = self.prosody
        put, get, headers = asyncio.run(
            request_slot(
                LOOPBACK,
                server.c2s_port,
                server.domain,
                self.account,
                server.share_jid,
                f"{self.serial}-{name}",
                size,
                CONTENT_TYPE,
            )
        )
        return Upload(put, get, headers)

    def stop(self) -> None:
        self.prosody.stop()


class NginxStore(Store):
    key = "nginx"

    def __init__(self, nginx: str, work: Path) -> None:
        self.dir = work / "nginx"
        self.root = self.dir / "root"
        self.root.mkdir(parents=True)
        (self.port,) = free_ports(1)
        config = self.dir / "nginx.conf"
        temp = {name: self.dir / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
        for path in temp.values():
            path.mkdir()
        user = "user root;" if os.geteuid() == 0 else ""
        config.write_text(
            f"""{user}
worker_processes 1;
worker_rlimit_nofile 8192;
daemon off;
pid {self.dir}/nginx.pid;
error_log {self.dir}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    default_type {CONTENT_TYPE};
    client_body_temp_path {temp['body']};
    proxy_temp_path {temp['proxy']};
    fastcgi_temp_path {temp['fastcgi']};
    uwsgi_temp_path {temp['uwsgi']};
    scgi_temp_path {temp['scgi']};
    server {{
        listen {LOOPBACK}:{self.port} backlog=4096;
        root {self.root};
        location / {{
            dav_methods PUT;
            create_full_put_path on;
            client_max_body_size 0;
        }}
    }}
}}
"""
        )
        argv = [nginx, "-p", str(self.dir), "-e", str(self.dir / "error.log"), "-c", str(config)]
        self.process = ComponentProcess("nginx", argv, self.dir).start()
        wait_for_port(self.port, self.process)
        self.serial = 0

    def pids(self) -> list[int]:
        """The master and its workers."""
        master = self.process.pid
        return [master, *children(master)]

    def slot(self, name: str, size: int) -> Upload:
        self.serial += 1
        url = f"http://{LOOPBACK}:{self.port}/{self.serial}-{name}"
        return Upload(url, url)

    def stop(self) -> None:
        self.process.stop()


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_bytes()
            except OSError:
                continue
            if int(stat.rsplit(b")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
    return found


def wait_for_port(port: int, process: ComponentProcess, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.running:
            raise BenchError(f"{process.name} exited during start-up:\n{process.log_tail()}")
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{process.name} did not listen on {port} within {timeout} s:\n{process.log_tail()}")


# --------------------------------------------------------------------------
# clients: curl for single transfers, wrk for many small GETs


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Transfer:
    seconds: float
    server_cpu_s: float
    client_cpu_s: float
    machine_busy_s: float


CURL_FIELDS = "%{http_code} %{size_download} %{size_upload} %{time_total}"


def curl(args: list[str], timeout: float) -> tuple[int, int, int, float]:
    """Run curl; its HTTP status, bytes received, bytes sent and total seconds (``-w``)."""
    result = subprocess.run(
        ["curl", "-sS", "--http1.1", "--max-time", str(timeout), "-w", CURL_FIELDS, *args],
        capture_output=True,
        text=True,
        timeout=timeout + 10,
    )
    fields = result.stdout.split()
    if result.returncode or len(fields) != 4:
        raise BenchError(f"curl {' '.join(args[-1:])} failed ({result.returncode}): {result.stderr.strip()}")
    status, down, up, total = fields
    return int(status), int(down), int(up), float(total)


def timed(store: Store, action: Callable[[], float]) -> Transfer:
    """Run ``action`` (which returns its own seconds); the server's and the clients' CPU meanwhile."""
    pids = store.pids()
    server_before = sum(cpu_seconds(pid) for pid in pids)
    client_before = children_cpu()
    busy_before = machine_busy_seconds()
    seconds = action()
    return Transfer(
        seconds,
        sum(cpu_seconds(pid) for pid in pids) - server_before,
        children_cpu() - client_before,
        machine_busy_seconds() - busy_before,
    )


def get_file(url: str, size: int, output: str = "/dev/null", timeout: float = 300.0) -> float:
    status, moved, _, seconds = curl(["-o", output, url], timeout)
    if status != 200 or moved != size:
        raise BenchError(f"GET {url}: status {status}, {moved} bytes (expected 200, {size})")
    return seconds


def put_file(upload: Upload, path: Path, size: int, timeout: float = 600.0) -> float:
    headers = [("Content-Type", CONTENT_TYPE), ("Expect", ""), *upload.headers]
    options = [option for name, value in headers for option in ("-H", f"{name}: {value}" if value else f"{name}:")]
    status, _, moved, seconds = curl(["-o", "/dev/null", "-T", str(path), *options, upload.put_url], timeout)
    if status not in (200, 201, 204) or moved != size:
        raise BenchError(f"PUT {upload.put_url}: status {status}, {moved} bytes sent (expected 201, {size})")
    return seconds


def wrk(url: str, seconds: float, connections: int) -> dict[str, Any]:
    """Requests/s of wrk (one thread, ``connections`` keep-alive connections); non-2xx fail the run."""
    result = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--timeout", "10s", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    out = result.stdout
    rate = next((float(line.split()[1]) for line in out.splitlines() if line.startswith("Requests/sec:")), None)
    if result.returncode or rate is None:
        raise BenchError(f"wrk failed ({result.returncode}): {out} {result.stderr}")
    problems = [line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket errors" in line]
    if any("Non-2xx" in line for line in problems):
        raise BenchError(f"wrk {url}: {'; '.join(problems)}")
    return {"rate": rate, "problems": problems}


# --------------------------------------------------------------------------
# memory: RSS of the server processes, sampled while something runs


class RssWatch:
    """Samples the summed RSS of ``pids`` every ``interval`` s in a thread; also resets and reads
    each process's peak (``VmHWM``, via ``/proc/PID/clear_refs`` when writable) so that a peak
    between two samples is not missed."""

    def __init__(self, pids: list[int], interval: float = 0.02) -> None:
        self.pids = pids
        self.interval = interval
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.hwm_reset = all(_reset_peak(pid) for pid in pids)
        self.baseline = self._rss()

    def _rss(self) -> int:
        return sum(rss_bytes(pid) for pid in self.pids)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.samples.append(self._rss())
            except OSError:
                return
            self._stop.wait(self.interval)

    def __enter__(self) -> RssWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def result(self) -> dict[str, Any]:
        peak = max(self.samples + [self.baseline])
        if self.hwm_reset:
            peak = max(peak, sum(peak_rss_bytes(pid) for pid in self.pids))
        after = self._rss()
        return {
            "baseline_mib": self.baseline / MiB,
            "peak_mib": peak / MiB,
            "after_mib": after / MiB,
            "growth_mib": (peak - self.baseline) / MiB,
            "samples": len(self.samples),
            "peak_from_vmhwm": self.hwm_reset,
        }


def _reset_peak(pid: int) -> bool:
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------
# the measures


def make_file(path: Path, size: int) -> Path:
    """``size`` random bytes (a 1 MiB random block repeated: nothing here compresses)."""
    block = os.urandom(min(size, MiB))
    with open(path, "wb") as file:
        left = size
        while left:
            left -= file.write(block[: min(left, len(block))])
    return path


def rotations(stores: list[Store], rounds: int) -> Iterator[tuple[int, Store]]:
    """``rounds`` passes over ``stores``, the order rotating each pass."""
    for index in range(rounds):
        shift = index % len(stores)
        for store in stores[shift:] + stores[:shift]:
            yield index, store


def summary(values: list[float]) -> dict[str, Any]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": values}


def measure_put(stores: list[Store], source: Path, args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, str]]:
    """(b) PUT of the big file, each round to a fresh slot; the first upload stays for the GETs.
    A target whose PUT takes over :data:`SLOW_PUT_S` (Prosody as shipped) stops after 3 rounds."""
    rates: dict[str, list[float]] = {store.key: [] for store in stores}
    cpu: dict[str, list[float]] = {store.key: [] for store in stores}
    kept: dict[str, str] = {}
    for index, store in rotations(stores, args.rounds):
        if len(rates[store.key]) >= 3 and BIG / 1e6 / min(rates[store.key]) > SLOW_PUT_S:
            continue
        upload = store.slot("big.bin", BIG)
        os.sync()
        wait_for_quiet(args.quiet_wait)
        run = timed(store, lambda: put_file(upload, source, BIG))
        kept.setdefault(store.key, upload.get_url)
        rates[store.key].append(BIG / run.seconds / 1e6)
        cpu[store.key].append(run.server_cpu_s / run.seconds)
        print(f"  PUT round {index + 1}: {store.key}: {rates[store.key][-1]:.0f} MB/s", flush=True)
    return {key: {**summary(rates[key]), "server_cores_median": statistics.median(cpu[key])} for key in rates}, kept


def measure_get(stores: list[Store], urls: dict[str, str], source: Path, args: argparse.Namespace) -> dict[str, Any]:
    """(a) GET of the big file: a byte-exact check and a warm-up per target, then ``--rounds`` ×
    ``--gets`` downloads per target (rate of each round: bytes over the summed curl times)."""
    check = source.parent / "check.bin"
    for store in stores:
        get_file(urls[store.key], BIG, str(check))
        if not filecmp.cmp(check, source, shallow=False):
            raise BenchError(f"{store.key}: the downloaded file differs from the uploaded one")
        check.unlink()
    rates: dict[str, list[float]] = {store.key: [] for store in stores}
    cpu: dict[str, list[float]] = {store.key: [] for store in stores}
    for index, store in rotations(stores, args.rounds):
        wait_for_quiet(args.quiet_wait)
        url = urls[store.key]
        run = timed(store, lambda: sum(get_file(url, BIG) for _ in range(args.gets)))
        rates[store.key].append(args.gets * BIG / run.seconds / 1e6)
        cpu[store.key].append(run.server_cpu_s / run.seconds)
        print(f"  GET round {index + 1}: {store.key}: {rates[store.key][-1]:.0f} MB/s", flush=True)
    return {key: {**summary(rates[key]), "server_cores_median": statistics.median(cpu[key])} for key in rates}


def measure_small(stores: list[Store], source: Path, args: argparse.Namespace) -> dict[str, Any]:
    """(c) 1 KiB GETs/s, 64 connections: a 1 s warm-up, then ``--rounds`` wrk runs per target."""
    urls = {}
    for store in stores:
        upload = store.slot("small.bin", SMALL)
        put_file(upload, source, SMALL)
        urls[store.key] = upload.get_url
        wrk(upload.get_url, 1, args.connections)
    rates: dict[str, list[float]] = {store.key: [] for store in stores}
    server: dict[str, list[float]] = {store.key: [] for store in stores}
    client: dict[str, list[float]] = {store.key: [] for store in stores}
    machine: dict[str, list[float]] = {store.key: [] for store in stores}
    problems: dict[str, list[str]] = {store.key: [] for store in stores}
    for index, store in rotations(stores, args.rounds):
        wait_for_quiet(args.quiet_wait)
        started = time.monotonic()
        outcome: dict[str, Any] = {}

        def run() -> float:
            outcome.update(wrk(urls[store.key], args.wrk_seconds, args.connections))
            return time.monotonic() - started

        cost = timed(store, run)
        rates[store.key].append(outcome["rate"])
        server[store.key].append(cost.server_cpu_s / cost.seconds)
        client[store.key].append(cost.client_cpu_s / cost.seconds)
        machine[store.key].append(cost.machine_busy_s / cost.seconds)
        problems[store.key] += outcome["problems"]
        print(f"  1 KiB GETs round {index + 1}: {store.key}: {outcome['rate']:.0f}/s", flush=True)
    return {
        key: {
            **summary(rates[key]),
            "server_cores_median": statistics.median(server[key]),
            "client_cores_median": statistics.median(client[key]),
            "machine_busy_cores_median": statistics.median(machine[key]),
            "wrk_notes": sorted(set(problems[key])),
        }
        for key in rates
    }


def measure_huge_upload(stores: list[Store], source: Path, args: argparse.Namespace) -> dict[str, Any]:
    """(d1) RSS of the server during one 1 GiB PUT."""
    results = {}
    for store in stores:
        upload = store.slot("huge.bin", HUGE)
        os.sync()
        wait_for_quiet(args.quiet_wait)
        with RssWatch(store.pids()) as watch:
            seconds = put_file(upload, source, HUGE)
        results[store.key] = {**watch.result(), "rate_mb_s": HUGE / seconds / 1e6}
        print(f"  1 GiB PUT: {store.key}: RSS +{results[store.key]['growth_mib']:.1f} MiB", flush=True)
    return results


def measure_slow_downloads(stores: list[Store], source: Path, args: argparse.Namespace) -> dict[str, Any]:
    """(d2) RSS of the server while ``--slow-count`` slow downloads of a 1 MiB file run at once."""
    results = {}
    for store in stores:
        upload = store.slot("slow.bin", SLOW)
        put_file(upload, source, SLOW)
        wait_for_quiet(args.quiet_wait)
        command = [
            sys.executable,
            str(BENCH / "slowclient.py"),
            upload.get_url,
            "--count",
            str(args.slow_count),
            "--size",
            str(SLOW),
            "--timeout",
            str(args.slow_timeout),
        ]
        with RssWatch(store.pids(), interval=0.1) as watch:
            result = subprocess.run(command, capture_output=True, text=True, timeout=args.slow_timeout + 30)
        if result.returncode:
            raise BenchError(f"slowclient.py failed for {store.key}: {result.stderr[-2000:]}")
        outcome = json.loads(result.stdout)
        results[store.key] = {**watch.result(), **outcome}
        print(
            f"  {args.slow_count} slow downloads: {store.key}: {outcome['completed']} complete, "
            f"peak {outcome['peak_active']} at once, RSS +{results[store.key]['growth_mib']:.1f} MiB",
            flush=True,
        )
    return results


# --------------------------------------------------------------------------
# profile of ours (py-spy)


def profile_ours(store: Store, big_url: str, small: Path, big: Path, args: argparse.Namespace) -> dict[str, Any]:
    """py-spy (raw stacks) on ``ours`` during a wrk run, ``--gets`` big GETs, and two big PUTs."""
    import profile_summary

    py_spy = find_py_spy(args.py_spy)
    if not py_spy:
        return {"skipped": "py-spy not found (pip install py-spy)"}
    small_upload = store.slot("small-profile.bin", SMALL)
    put_file(small_upload, small, SMALL)
    uploads = [store.slot("big-profile.bin", BIG) for _ in range(2)]
    work: dict[str, Callable[[], object]] = {
        "small_get": lambda: wrk(small_upload.get_url, args.wrk_seconds, args.connections),
        "big_get": lambda: [get_file(big_url, BIG) for _ in range(args.gets)],
        "big_put": lambda: [put_file(upload, big, BIG) for upload in uploads],
    }
    profiles = {}
    for phase, action in work.items():
        path = Path(args.profile_dir) / f"http_storage_profile_{phase}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        failure = harness.py_spy_record(py_spy, store.pids()[0], path, action, rate=250)
        if failure:
            profiles[phase] = {"skipped": failure}
            continue
        profiles[phase] = {"file": str(path), **profile_summary.summarise(path.read_text(), top=12)}
        print(f"\nprofile of ours, {phase} ({path}):")
        for row in profiles[phase]["top_own"]:
            print(f"  {row['share']:6.1%}  {row['function']}")
        print("  by layer: " + ", ".join(f"{name} {share:.0%}" for name, share in profiles[phase]["layers"].items()))
    return profiles


# --------------------------------------------------------------------------
# report


GOALS = (
    # (label, measure, other, minimum ratio of ours to other)
    ("GET 100 MiB ≥ 0.7× nginx", "get_big", "nginx", 0.7),
    ("GET 100 MiB ≥ 1.5× Prosody", "get_big", "prosody", 1.5),
    ("PUT 100 MiB ≥ 1.5× Prosody", "put_big", "prosody", 1.5),
    ("1 KiB GETs/s ≥ 1× Prosody", "small_get", "prosody", 1.0),
)
RSS_GOAL_MIB = 20.0


def report(document: dict[str, Any], keys: list[str]) -> None:
    measures = document["measures"]
    header = f"{'measure':<38}" + "".join(f"{key:>15}" for key in keys)
    print()
    print(header)
    print("-" * len(header))
    rows = [
        ("(a) GET 100 MiB, MB/s", "get_big", "median", "{:.0f}"),
        ("(b) PUT 100 MiB, MB/s", "put_big", "median", "{:.0f}"),
        ("(c) 1 KiB GETs/s, 64 connections", "small_get", "median", "{:.0f}"),
        ("    server cores during (c)", "small_get", "server_cores_median", "{:.2f}"),
        ("    wrk cores during (c)", "small_get", "client_cores_median", "{:.2f}"),
        ("    all processes' cores during (c)", "small_get", "machine_busy_cores_median", "{:.2f}"),
        ("(d) RSS growth, 1 GiB PUT, MiB", "huge_put", "growth_mib", "+{:.1f}"),
        (f"(d) RSS growth, {document['settings']['slow_count']} slow GETs, MiB", "slow_gets", "growth_mib", "+{:.1f}"),
        ("    slow GETs completed", "slow_gets", "completed", "{}"),
    ]
    for title, measure, field_, fmt in rows:
        if measure not in measures:
            continue
        cells = []
        for key in keys:
            value = measures[measure].get(key, {}).get(field_)
            cells.append(fmt.format(value) if value is not None else "—")
        print(f"{title:<38}" + "".join(f"{cell:>15}" for cell in cells))
    print()
    for line in document["goals"]:
        print(line)


def goals(measures: dict[str, Any]) -> tuple[list[str], dict[str, float]]:
    lines, ratios = [], {}
    for title, measure, other, minimum in GOALS:
        results = measures.get(measure, {})
        if "ours" not in results or other not in results:
            continue
        ratio = results["ours"]["median"] / results[other]["median"]
        ratios[f"{measure} ours/{other}"] = ratio
        lines.append(f"{'met   ' if ratio >= minimum else 'MISSED'} {title}: {ratio:.2f}×")
        tuned = results.get("prosody_tuned")
        if other == "prosody" and tuned:
            ratios[f"{measure} ours/prosody_tuned"] = results["ours"]["median"] / tuned["median"]
            lines[-1] += f" (vs tuned Prosody {ratios[f'{measure} ours/prosody_tuned']:.2f}×)"
    huge = measures.get("huge_put", {}).get("ours")
    if huge:
        met = huge["growth_mib"] <= RSS_GOAL_MIB
        verdict = "met   " if met else "MISSED"
        lines.append(f"{verdict} RSS +≤ {RSS_GOAL_MIB:.0f} MiB for a 1 GiB upload: +{huge['growth_mib']:.1f} MiB")
    return lines, ratios


# --------------------------------------------------------------------------
# main


def missing_tools(args: argparse.Namespace) -> list[str]:
    wanted = {"curl"}
    if "nginx" in args.target_list:
        wanted.add("nginx")
    if "small_get" in args.measure_list:
        wanted.add("wrk")
    return sorted(name for name in wanted if not find_tool(name))


def find_tool(name: str) -> str | None:
    """``name`` on PATH, or in /usr/sbin (where Debian puts nginx, often off a user's PATH)."""
    return shutil.which(name, path=os.environ.get("PATH", "") + ":/usr/sbin")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    measures = ("put_big", "get_big", "small_get", "huge_put", "slow_gets")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--targets", default=",".join(TARGETS), help=f"comma-separated: {','.join(TARGETS)}")
    parser.add_argument("--measures", default=",".join(measures), help=f"comma-separated: {','.join(measures)}")
    parser.add_argument("--rounds", type=int, default=5, help="runs per target and measure, interleaved (default 5)")
    parser.add_argument("--gets", type=int, default=3, help="100 MiB GETs per round (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for 1 KiB GETs (default 64)")
    parser.add_argument("--wrk-seconds", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument("--slow-count", type=int, default=1000, help="concurrent slow downloads (default 1000)")
    parser.add_argument("--slow-timeout", type=float, default=120.0, help="seconds the slow downloads may take")
    parser.add_argument("--huge-prosody", action="store_true", help="the 1 GiB PUT on Prosody as shipped too (~4 min)")
    parser.add_argument("--profile", action="store_true", help="py-spy ours during extra runs of (a), (b), (c)")
    parser.add_argument("--py-spy", default="auto", help="path of py-spy (default: look for it)")
    parser.add_argument("--profile-dir", default=str(harness.RESULTS), help="where the profiles go")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=2.0,
        help="at most this many seconds waiting for other load to end, before each run (default 2)",
    )
    parser.add_argument("--prosody-log-level", default="warn", help="Prosody's log level (default warn)")
    parser.add_argument("--install", action="store_true", help="apt-get install what is missing (nginx, wrk, curl)")
    parser.add_argument("--json", default=str(harness.RESULTS / "http_storage.json"), help="JSON output path")
    args = parser.parse_args(argv)
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    args.measure_list = [m.strip() for m in args.measures.split(",") if m.strip()]
    if set(args.target_list) - set(TARGETS) or not args.target_list:
        parser.error(f"--targets: choose from {','.join(TARGETS)}")
    if set(args.measure_list) - set(measures) or not args.measure_list:
        parser.error(f"--measures: choose from {','.join(measures)}")
    if "get_big" in args.measure_list and "put_big" not in args.measure_list:
        parser.error("get_big serves the files put_big uploads: keep put_big in --measures")
    return args


@contextmanager
def stores_running(args: argparse.Namespace, work: Path) -> Iterator[list[Store]]:
    """Every requested store started (ours on the as-shipped Prosody); all stopped on exit."""
    started: list[Store] = []
    secret = os.urandom(8).hex()
    try:
        prosody: ProsodyStore | None = None
        if "prosody" in args.target_list or "ours" in args.target_list:
            prosody = ProsodyStore("prosody", {OURS_JID: secret}, PROSODY_LIMITS, args.prosody_log_level)
            started.append(prosody)
        if "prosody_tuned" in args.target_list:
            extra = "\n".join([PROSODY_LIMITS, PROSODY_TUNED])
            started.append(ProsodyStore("prosody_tuned", {}, extra, args.prosody_log_level))
        if "nginx" in args.target_list:
            started.append(NginxStore(find_tool("nginx") or "nginx", work))
        if "ours" in args.target_list:
            assert prosody is not None
            started.append(OursStore(prosody.prosody, work))
        yield sorted((s for s in started if s.key in args.target_list), key=lambda s: TARGETS.index(s.key))
    finally:
        for store in reversed(started):
            store.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    missing = missing_tools(args)
    if missing and args.install:
        subprocess.run(["apt-get", "install", "-y", *missing], check=True)
        missing = missing_tools(args)
    if missing:
        print(
            f"missing: {', '.join(missing)} — install with `apt-get install {' '.join(missing)}` "
            "(or run this script with --install), or leave them out with --targets/--measures",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the finally blocks stop everything
    document: dict[str, Any] = {
        "benchmark": "http_storage",
        "machine": harness.machine(),
        "settings": {k: getattr(args, k) for k in ("rounds", "gets", "connections", "wrk_seconds", "slow_count")},
        "prosody_tuned_config": PROSODY_TUNED,
        "measures": {},
    }
    started_at = time.monotonic()
    with harness.workdir() as tmp:
        work = Path(tmp)
        data = work / "data"
        data.mkdir()
        print("making test files…", flush=True)
        big = make_file(data / "big.bin", BIG)
        small = make_file(data / "small.bin", SMALL)
        slow = make_file(data / "slow.bin", SLOW)
        with stores_running(args, work) as stores:
            measures = document["measures"]
            print("targets: " + ", ".join(f"{s.key} (pids {s.pids()})" for s in stores), flush=True)
            kept: dict[str, str] = {}
            if "put_big" in args.measure_list:
                measures["put_big"], kept = measure_put(stores, big, args)
            if "get_big" in args.measure_list:
                measures["get_big"] = measure_get(stores, kept, big, args)
            if "small_get" in args.measure_list:
                measures["small_get"] = measure_small(stores, small, args)
            if "huge_put" in args.measure_list:
                huge = make_file(data / "huge.bin", HUGE)
                chosen = [s for s in stores if s.key != "prosody" or args.huge_prosody]
                measures["huge_put"] = measure_huge_upload(chosen, huge, args)
                huge.unlink()
            if "slow_gets" in args.measure_list:
                measures["slow_gets"] = measure_slow_downloads(stores, slow, args)
            if args.profile and "ours" in args.target_list and kept:
                ours = next(s for s in stores if s.key == "ours")
                document["profile"] = profile_ours(ours, kept["ours"], small, big, args)
            for store in stores:
                if isinstance(store, OursStore):
                    document["ours_log"] = store.process.log_findings()
    document["goals"], document["ratios"] = goals(document["measures"])
    document["wall_s"] = time.monotonic() - started_at
    report(document, [key for key in TARGETS if key in args.target_list])
    path = harness.write_json(args.json, document)
    print(f"\nJSON: {path}   ({document['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
