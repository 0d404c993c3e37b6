"""``serve --processes N``: N ``serve`` processes connected as the same component JID(s).

This helps only where the XMPP server balances one component name over several connections.
**ejabberd** does (checked with 23.01): every connection of an ``ejabberd_service`` registers a
route for the name, and the router picks one of them per stanza — at random by default, or by
``domain_balancing`` (``type: bare_source`` keeps each user on one connection, and so keeps one
user's answers in order under ``iqdisc = "one_queue"``). **Prosody** (0.12) allows one
connection per component and turns the second away with the stream error ``conflict``: a worker
process turned away so exits with :data:`CONFLICT_STATUS`, and the supervisor says so once and
goes on with the processes that the server took.

The supervisor itself does no XMPP: it starts the workers (``python -m slixmpp_http_upload serve
--worker``, same configuration and verbosity), passes SIGINT/SIGTERM on to them and waits for all
to end. A worker that fails for any other reason ends the whole service, so that whatever
watches ``serve`` (systemd) sees it. The workers share the ledger file (SQLite, each writing its
own slots; the supervisor creates it first, as two processes switching a new file to WAL at the
same moment fail with "database is locked"). Refused with more than one process: anything that needs the built-in HTTP server
(the ``local`` backend, S3 ``downloads = "redirect"``: it listens in one process), a
``[metrics]`` port, and per-user or global limits (each process would count only its own slots).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

from .accounting import open_ledger, quotas
from .backends import create_backend
from .config import Config
from .options import ConfigError
from .serve import CONFLICT_STATUS, served_over_http

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2


def check_processes(config: Config, processes: int) -> None:
    """Raise :class:`ConfigError` when ``config`` cannot run in ``processes`` processes."""
    if processes < 1:
        raise ConfigError("--processes", "must be at least 1")
    if processes == 1:
        return
    if served_over_http(create_backend(config.http_upload)):
        raise ConfigError(
            "--processes",
            "needs a backend without the built-in HTTP server (local files and S3 redirect downloads are served "
            "from one process)",
        )
    if config.metrics.port is not None:
        raise ConfigError("--processes", "cannot share metrics.port between processes (run one serve per port)")
    if quotas(config.http_upload).active:
        raise ConfigError("--processes", "cannot keep per-user or global limits: each process would count only its own")


def supervise(config: Config, config_file: Path, processes: int, verbose: bool) -> int:
    """Run ``processes`` workers until SIGINT/SIGTERM or until one fails; the exit status is 0
    after a signal, else the failed worker's (1 if a signal killed it, or if the server turned
    every one away)."""
    argv = [sys.executable, "-m", "slixmpp_http_upload", "serve", "-c", str(config_file), "--worker"]
    if verbose:
        argv.append("--verbose")
    open_ledger(config.http_upload).close()  # one clear error here if it cannot be opened, not one per worker
    supervisor = Supervisor()
    previous = {signum: signal.signal(signum, supervisor.stop) for signum in (signal.SIGINT, signal.SIGTERM)}
    try:
        supervisor.workers = [subprocess.Popen(argv, stdin=subprocess.DEVNULL) for _ in range(processes)]
        return supervisor.watch()
    finally:
        for worker in supervisor.workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class Supervisor:
    """The workers, and whether a signal asked them to stop."""

    def __init__(self) -> None:
        self.workers: list[subprocess.Popen[bytes]] = []
        self.stopping = False

    def stop(self, _signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        """Pass SIGTERM on to every running worker (they drain, then exit)."""
        self.stopping = True
        for worker in self.workers:
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)

    def watch(self) -> int:
        turned_away = 0
        while True:
            running = [worker for worker in self.workers if worker.poll() is None]
            if self.stopping:
                for worker in running:
                    worker.wait()
                return 0
            ended = [worker.returncode for worker in self.workers if worker.returncode is not None]
            failed = [status for status in ended if status not in (0, CONFLICT_STATUS)]
            if failed:
                log.error("a worker process ended with status %d: stopping the others", failed[0])
                self.stop()
                for worker in running:
                    worker.wait()
                return failed[0] if failed[0] > 0 else 1
            if (conflicts := ended.count(CONFLICT_STATUS)) > turned_away:
                turned_away = conflicts
                log.error(
                    "the XMPP server turned away %d of %d connections as the same component (conflict): it allows "
                    "one per component JID (Prosody does; ejabberd balances them); going on with %d process(es)",
                    conflicts, len(self.workers), len(running),
                )
            if not running:
                return 1
            time.sleep(POLL_SECONDS)
