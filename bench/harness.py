"""Shared plumbing for the benchmarks: the real Prosody from ``tests/servers.py``, component
processes, CPU and memory readings from ``/proc``, the machine description, JSON output.

It measures nothing by itself. Everything listens on 127.0.0.1; every process started here is
stopped by its owner's ``stop()`` (callers use try/finally or ``with``).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
RESULTS = BENCH / "results"
sys.path.insert(0, str(REPO / "tests"))

from loadclient import Account, LoadClientProcess  # noqa: E402
from servers import LOOPBACK, Ejabberd, Prosody, _stop_process_group, free_ports  # noqa: E402  (tests/servers.py, reused as is)

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
OURS_JID = "upload.localhost"
CEILING_JID = "ceiling.localhost"
CEILING_SLOT_JID = "ceiling-slot.localhost"
BUCKET_URL = "http://127.0.0.1:9/bucket"  # never contacted: presigning does no I/O
REGION = "us-east-1"
ACCESS_KEY = "AKIDBENCHMARK0000000"  # trivial_component.py's canned slot has one as long
SECRET_KEY = "bench-secret-not-a-real-key"

# Prosody's defaults would refuse our load: mod_storage_internal keeps at most 10 000 archive
# items per store (mod_http_file_share records every slot in one), and each user may only
# reserve 100 MB a day of uploads.
PROSODY_LOAD_CONFIG = "\n".join(
    [
        "storage_archive_item_limit = 100000000",
        "http_file_share_daily_quota = 1099511627776",
    ]
)


# --------------------------------------------------------------------------
# /proc readings


def cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` so far (``/proc/PID/stat``, 1/CLK_TCK resolution)."""
    with open(f"/proc/{pid}/stat", "rb") as file:
        fields = file.read().rsplit(b")", 1)[1].split()
    # after "pid (comm)": state is field 3, utime field 14, stime field 15 (1-based)
    return int(fields[11]) / CLOCK_TICKS, int(fields[12]) / CLOCK_TICKS


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far."""
    return sum(cpu_times(pid))


def sleeps(pid: int) -> int:
    """How often the main thread of ``pid`` has gone to sleep so far (its voluntary context
    switches, ``/proc/PID/task/PID/status``): for an event loop under load, each wait in
    ``epoll_wait`` for the next read, so each wake-up for a read (and each wait for the GIL)."""
    with open(f"/proc/{pid}/task/{pid}/status") as file:
        for line in file:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    return 0


def machine_busy_seconds() -> float:
    """CPU seconds spent not idle by all cores together, since boot (``/proc/stat``)."""
    with open("/proc/stat") as file:
        values = [int(v) for v in file.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


FOREIGN_WARNING = 0.15
"""Cores used by other processes during a run above which the run is flagged."""


def wait_for_quiet(limit: float, window: float = 0.5) -> None:
    """Between runs our own processes are idle: wait (at most ``limit`` seconds) until the
    machine's other load drops under :data:`FOREIGN_WARNING` cores."""
    deadline = time.monotonic() + limit
    while True:
        before = machine_busy_seconds()
        time.sleep(window)
        busy = (machine_busy_seconds() - before) / window
        if busy < FOREIGN_WARNING or time.monotonic() >= deadline:
            return


def peak_rss_bytes(pid: int) -> int:
    """The peak resident set size of ``pid`` (``VmHWM``) in bytes."""
    with open(f"/proc/{pid}/status") as file:
        for line in file:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write_json(path: str | os.PathLike[str], document: dict[str, Any]) -> Path:
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(document, indent=2, sort_keys=False) + "\n")
    return target


# --------------------------------------------------------------------------
# Prosody and its users


def register_users(prosody: Prosody | Ejabberd, count: int) -> list[Account]:
    accounts = [Account(f"bench{i}", f"pw-bench{i}") for i in range(count)]
    for account in accounts:
        prosody.register(account.user, account.password)
    return accounts


@contextmanager
def prosody_and_load_client(
    components: dict[str, str], *, users: int, http_file_share: bool, log_level: str, extra: str = ""
) -> Iterator[tuple[Prosody, LoadClientProcess, Path]]:
    """A started private Prosody with ``components`` (JID → secret) and the load settings, the
    load client logged in as ``users`` bench accounts, and a work directory; on exit the client
    and Prosody are stopped and the directory removed.  Components the caller starts it must
    stop before leaving."""
    server = Prosody(
        components,
        http_file_share=http_file_share,
        log_level=log_level,
        extra_config="\n".join(part for part in (PROSODY_LOAD_CONFIG, extra) if part),
    )
    with _load_client(server, users) as running:
        yield running


@contextmanager
def ejabberd_and_load_client(
    components: dict[str, str], *, users: int, http_upload: bool, log_level: str, extra: str = ""
) -> Iterator[tuple[Ejabberd, LoadClientProcess, Path]]:
    """The same with a private ejabberd (its own ``mod_http_upload`` at ``share.localhost`` when
    ``http_upload``; ``extra`` is top-level YAML), each component on a listener of its own."""
    server = Ejabberd(
        components, http_upload=http_upload, log_level=log_level, extra_config=extra, listener_per_component=True
    )
    with _load_client(server, users) as running:
        yield running


@contextmanager
def _load_client(server: Any, users: int) -> Iterator[tuple[Any, LoadClientProcess, Path]]:
    client: LoadClientProcess | None = None
    with server, workdir() as tmp:
        try:
            accounts = register_users(server, users)
            client = LoadClientProcess(LOOPBACK, server.c2s_port, server.domain, accounts)
            client.start()
            yield server, client, Path(tmp)
        finally:
            if client is not None:
                client.stop()


# --------------------------------------------------------------------------
# component processes


class ComponentProcess:
    """A component (or any server) run as its own process group; output goes to ``log_path``."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str] | None = None) -> None:
        self.name = name
        self.argv = argv
        self.log_path = workdir / f"{name}.log"
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> ComponentProcess:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )
        return self

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no output)"

    def log_findings(self, keep: int = 12) -> dict[str, Any]:
        """How many ERROR lines and tracebacks the process wrote, and the first lines of them."""
        try:
            lines = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return {"error_lines": 0, "tracebacks": 0, "first": []}
        errors = [i for i, line in enumerate(lines) if " ERROR " in line or " CRITICAL " in line]
        first = lines[errors[0] : errors[0] + keep] if errors else []
        return {
            "error_lines": len(errors),
            "tracebacks": sum(line.startswith("Traceback") for line in lines),
            "first": first,
        }

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process group, SIGKILL after ``timeout``; returns the exit status."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        _stop_process_group(proc, timeout)
        return proc.returncode

    def __enter__(self) -> ComponentProcess:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def iqdisc_toml(iqdisc: str) -> str:
    """``one_queue`` / ``parallel`` / ``no_queue`` / ``queues:N`` as the TOML value."""
    if iqdisc.startswith("queues:"):
        return f'{{ type = "queues", workers = {int(iqdisc.split(":", 1)[1])} }}'
    if iqdisc not in ("one_queue", "parallel", "no_queue"):
        raise ValueError(f"unknown iqdisc {iqdisc!r}")
    return f'"{iqdisc}"'


def write_ours_config(
    path: Path, prosody: Prosody, iqdisc: str, jid: str = OURS_JID, extra: Sequence[str] = (), backend: str = "s3"
) -> Path:
    """A ``serve`` configuration for the component ``jid`` (``<name>.<domain>``): the S3 backend on
    a dummy bucket (slots are presigned offline, no S3 server is involved), or with ``backend =
    "local"`` the local backend (root beside ``path``) and its HTTP server on a free loopback port;
    ``extra`` are further TOML lines of its ``[http_upload]`` table (such as limits)."""
    name, _, domain = jid.partition(".")
    if domain != prosody.domain:
        raise ValueError(f"{jid} is not a subdomain of {prosody.domain}")
    path.write_text(
        "\n".join(
            [
                "[component]",
                f'server = "{LOOPBACK}"',
                f"port = {prosody.component_ports[jid]}",
                f'secret = "{prosody.components[jid]}"',
                f'domains = ["{prosody.domain}"]',
                "",
                "[http_upload]",
                f'host = "{name}.@HOST@"',
                f"iqdisc = {iqdisc_toml(iqdisc)}",
                f'ledger = "{name}-ledger.sqlite"',  # each service its own (they share a folder)
                *extra,
                "",
                *(_local_tables(path) if backend == "local" else _s3_table()),
            ]
        )
    )
    return path


def _s3_table() -> list[str]:
    return [
        "[http_upload.s3]",
        f'bucket_url = "{BUCKET_URL}"',
        f'region = "{REGION}"',
        f'access_key_id = "{ACCESS_KEY}"',
        f'secret_access_key = "{SECRET_KEY}"',
        "",
    ]


def _local_tables(config: Path) -> list[str]:
    (port,) = free_ports(1)
    return [
        "[http_upload.local]",
        f'root = "{config.stem}-root"',
        "",
        "[http]",
        f'bind = "{LOOPBACK}"',
        f"port = {port}",
        "",
    ]


def ours_process(
    name: str, config: Path, workdir: Path, processes: int = 1, source: Path | None = None
) -> ComponentProcess:
    """``serve`` from this checkout, or from the checkout at ``source`` (another commit's worktree)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    argv = [sys.executable, "-m", "slixmpp_http_upload", "serve", "-c", str(config)]
    if source is not None:  # -P: not the current folder (this checkout) first on the path
        env["PYTHONPATH"] = str(source)
        argv[1:1] = ["-P"]
    if processes > 1:
        argv += ["--processes", str(processes)]
    return ComponentProcess(name, argv, workdir, env)


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (``serve --processes`` runs its workers as children)."""
    pids = [pid]
    for member in pids:
        for task in Path(f"/proc/{member}/task").glob("*"):
            try:
                pids += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass
    return pids


def trivial_process(
    name: str, prosody: Prosody, workdir: Path, jid: str = CEILING_JID, slot: bool = False
) -> ComponentProcess:
    argv = [
        sys.executable,
        str(BENCH / "trivial_component.py"),
        "--port",
        str(prosody.component_ports[jid]),
        "--jid",
        jid,
        "--secret",
        prosody.components[jid],
        *(["--slot"] if slot else []),
    ]
    return ComponentProcess(name, argv, workdir)


def find_py_spy(option: str) -> str | None:
    """``option`` unless "auto"; else next to the interpreter, in /tmp/bench-tools/bin, on PATH."""
    from servers import _find_binary

    if option and option != "auto":
        return option
    return _find_binary("py-spy", extra_dirs=["/tmp/bench-tools/bin"])


def py_spy_record(py_spy: str, pid: int, path: Path, action: Callable[[], object], *, rate: int, fmt: str = "raw") -> str | None:
    """Sample ``pid`` with py-spy into ``path`` (format ``fmt``) while ``action`` runs; None when
    the profile was written, else why not (py-spy's last words)."""
    import signal

    spy = subprocess.Popen(
        [py_spy, "record", "--pid", str(pid), "--rate", str(rate), "--nonblocking", "--format", fmt, "-o", str(path)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        time.sleep(1.0)  # let py-spy attach
        action()
    finally:
        spy.send_signal(signal.SIGINT)  # py-spy writes its output and exits
        try:
            _, err = spy.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
    return None if path.is_file() else f"py-spy wrote nothing: {err.decode(errors='replace')[-500:]}"


def workdir() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="bench-")

