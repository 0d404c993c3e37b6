"""Slot throughput end to end through a real Prosody and a real ejabberd: ours vs the server's
own upload service vs the path's ceiling.

What it measures, through each server of ``--servers`` in turn (default Prosody, then ejabberd):
K logged-in local users (one c2s connection each) keep D XEP-0363 slot
requests in flight each (a new request leaves as soon as an answer comes back) until N
requests have been answered, against

* ``ours``     — ``python -m slixmpp_http_upload serve -c CFG`` as an XEP-0114 component at
                 ``upload.localhost``, S3 backend on a dummy bucket URL (slots are presigned
                 offline: no S3 server is involved);
* ``own``      — the server's own service at ``share.localhost``: Prosody's ``mod_http_file_share``,
                 ejabberd's ``mod_http_upload`` (``--targets`` also takes ``prosody`` or
                 ``ejabberd`` for it);
* ``ceiling``  — ``bench/trivial_component.py`` at ``ceiling.localhost``: a raw-socket component
                 that answers every IQ with an empty result, i.e. what the path allows;
* ``ceiling_slot`` — the same at ``ceiling-slot.localhost`` answering with a canned slot as long
                 as ours: what the path allows for any upload service, whose replies the
                 XMPP server must route.

With ``--processes N`` (N > 1), through ejabberd only, also ``ours`` as ``serve --processes N``
at ``upload-scaled.localhost`` (ejabberd balances the N connections; its CPU is the sum over the
supervisor and its workers).

Through ejabberd each component has an ``ejabberd_service`` listener of its own: ejabberd routes
every name of a listener's ``hosts`` to each component that authenticates on it.

For each it reports slots/s, p50/p90/p99 latency, and CPU per slot of the component process,
of the XMPP server (from ``/proc/PID/stat``) and of the load client (its own ``time.process_time()``),
measured run only, warm-up excluded, plus the ratios of ours to each, and for each component
how many slots it answered per wake-up ("slots/wake": slots over the voluntary context switches
of its main thread, i.e. its waits in ``epoll_wait`` for the next read). Each wake-up costs a
component a fixed amount on top of its work per slot (caches the XMPP server and the load client
have used meanwhile, the loop's turn, three system calls): ``bench/README.md``, fourth pass.
Any non-result reply fails the run.
The load client (``bench/loadclient.py``) is raw asyncio sockets in its own process.

Noise: every target runs ``--rounds`` times (default 3), interleaved, the order rotating. Before
each run the script waits (at most ``--quiet-wait`` s) until other processes use less than 0.15
of a core; a run during which they still used more is flagged, and the figure shown is the
median-rate run among the unflagged ones (all runs if every one was flagged).

``--scaling`` adds: ours under each iqdisc (one_queue, parallel, queues:4, no_queue), and what
Prosody does when two component processes connect with the same JID (default policy, and
``component_conflict_resolve = "kick_old"``), each on a Prosody of its own.

Run (from the repository root; ~3 minutes with the defaults on a quiet machine)::

    .venv/bin/python bench/throughput.py                      # ours, own, both ceilings; both servers
    .venv/bin/python bench/throughput.py --servers ejabberd --processes 2   # + serve --processes 2
    .venv/bin/python bench/throughput.py --targets ours --baseline /tmp/old # A/B: /tmp/old a worktree of an older commit
    .venv/bin/python bench/throughput.py --scaling            # + iqdisc modes, 2 components
    .venv/bin/python bench/throughput.py --users 8 --inflight 32 --requests 50000 --targets ours,ceiling
    .venv/bin/python bench/throughput.py --http-upload 'daily_quota = 1099511627776' \
        --http-upload 'rate_limit = {slots = 1000000, seconds = 300}'   # ours with limits on

Results: printed, and written as JSON to ``--json`` (default ``bench/results/throughput.json``).
"""

from __future__ import annotations

import argparse
import re
import secrets
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import harness
from harness import (
    CEILING_JID,
    CEILING_SLOT_JID,
    FOREIGN_WARNING,
    OURS_JID,
    ComponentProcess,
    Prosody,
    cpu_seconds,
    cpu_times,
    find_py_spy,
    machine_busy_seconds,
    process_tree,
    sleeps,
    wait_for_quiet,
)
from loadclient import LoadClientProcess, LoadError

TARGETS = ("ours", "own", "ceiling", "ceiling_slot")
OWN_ALIASES = ("prosody", "ejabberd")
"""Accepted in ``--targets`` for ``own``: the XMPP server's own upload service."""
SERVERS = ("prosody", "ejabberd")
SCALED_JID = "upload-scaled.localhost"
"""Ours run as ``serve --processes N`` (``--processes``, through ejabberd only)."""
SCALING_IQDISCS = ("one_queue", "parallel", "queues:4", "no_queue")
BASELINE_JID = "upload-baseline.localhost"
"""Ours from another checkout (``--baseline``), for an A/B in one run."""

class BenchError(RuntimeError):
    """The benchmark could not run as asked, or saw error replies."""


# --------------------------------------------------------------------------
# targets and measured runs


@dataclass
class Target:
    """One service under load: ``processes`` (name → pid) are the ones whose CPU is reported."""

    label: str
    jid: str
    component: ComponentProcess | None = None
    runs: list[dict[str, Any]] = field(default_factory=list)

    def processes(self, server: Prosody) -> dict[str, int]:
        pids = {"server": server.pid}
        if self.component is not None:
            pids["component"] = self.component.pid
        return pids


def measure(
    client: LoadClientProcess,
    label: str,
    jid: str,
    processes: dict[str, int],
    args: argparse.Namespace,
    *,
    allow_errors: bool = False,
) -> dict[str, Any]:
    """Warm up, then one measured run; CPU of each of ``processes`` (name → pid) over that run."""
    wait_for_quiet(args.quiet_wait)
    if args.warmup:
        client.run(jid, args.warmup, args.inflight, args.timeout)
    before = {name: tree_cpu_times(pid) for name, pid in processes.items()}
    slept = tree_sleeps(processes["component"]) if "component" in processes else 0
    busy_before = machine_busy_seconds()
    stats = client.run(jid, args.requests, args.inflight, args.timeout)
    busy = machine_busy_seconds() - busy_before
    after = {name: tree_cpu_times(pid) for name, pid in processes.items()}
    if "component" in processes:
        slept = tree_sleeps(processes["component"]) - slept
    if stats["errors"] and not allow_errors:
        samples = "\n  ".join(stats["error_samples"])
        raise BenchError(f"{label}: {stats['errors']} of {args.requests} replies were errors, e.g.\n  {samples}")
    answered = stats["results"] + stats["errors"]
    cpu = {name: sum(after[name]) - sum(before[name]) for name in processes}
    system_share = {
        name: (after[name][1] - before[name][1]) / cpu[name] if cpu[name] else 0.0 for name in processes
    }
    cpu["client"] = stats["client_cpu_s"]
    # Cores kept busy by anything else on the machine during the run (another job would skew
    # the figures: the machine has few cores).
    foreign = max(0.0, busy - sum(cpu.values())) / stats["wall_s"]
    if foreign > FOREIGN_WARNING:
        print(f"  warning: {label}: other processes kept {foreign:.2f} cores busy during the run", file=sys.stderr)
    return {
        "label": label,
        "jid": jid,
        **{key: stats[key] for key in ("requests", "results", "errors", "wall_s", "rate")},
        "latency_us": {key[:-3]: stats[key] for key in ("p50_us", "p90_us", "p99_us", "max_us", "mean_us")},
        "cpu_s": cpu,
        "cpu_us_per_slot": {name: seconds * 1e6 / answered for name, seconds in cpu.items()},
        "cpu_system_share": system_share,
        **({"slots_per_wakeup": answered / slept} if "component" in processes and slept else {}),
        "machine_busy_cores": busy / stats["wall_s"],
        "foreign_busy_cores": foreign,
        "error_samples": stats["error_samples"],
    }


def tree_cpu_times(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` and its children (``serve --processes``' workers)."""
    times = [cpu_times(member) for member in process_tree(pid)]
    return sum(t[0] for t in times), sum(t[1] for t in times)


def tree_sleeps(pid: int) -> int:
    """How often the main threads of ``pid`` and its children have slept (see :func:`sleeps`)."""
    return sum(sleeps(member) for member in process_tree(pid))


def run_rounds(client: LoadClientProcess, server: Prosody, targets: list[Target], args: argparse.Namespace) -> None:
    """``args.rounds`` rounds over ``targets``, the order rotating each round, so that a slow
    moment of the machine does not land on one target only."""
    for index in range(args.rounds):
        shift = index % len(targets)
        for target in targets[shift:] + targets[:shift]:
            if target.component is not None:
                ensure_alive(target.component)
            row = measure(client, target.label, target.jid, target.processes(server), args)
            target.runs.append(row)
            print(f"  round {index + 1}: {target.label}: {row['rate']:.0f} slots/s", flush=True)


def representative(target: Target) -> dict[str, Any]:
    """The run with the median rate (its latencies and CPU figures belong together) among the
    runs that no other load disturbed (all runs if none), plus every run's rate and the median
    CPU per slot over the same runs."""
    clean = [run for run in target.runs if run["foreign_busy_cores"] <= FOREIGN_WARNING] or target.runs
    ordered = sorted(clean, key=lambda run: run["rate"])
    row = dict(ordered[(len(ordered) - 1) // 2])
    row["rates"] = [run["rate"] for run in target.runs]
    row["runs_without_foreign_load"] = sum(run["foreign_busy_cores"] <= FOREIGN_WARNING for run in target.runs)
    row["cpu_us_per_slot_median"] = {
        name: statistics.median(run["cpu_us_per_slot"][name] for run in clean) for name in row["cpu_us_per_slot"]
    }
    if all("slots_per_wakeup" in run for run in clean):
        row["slots_per_wakeup_median"] = statistics.median(run["slots_per_wakeup"] for run in clean)
    if target.component is not None:
        row["component_log"] = findings = target.component.log_findings()
        if findings["error_lines"]:
            print(
                f"  WARNING: {target.label} logged {findings['error_lines']} ERROR lines "
                f"({findings['tracebacks']} tracebacks) so far; first:\n    " + "\n    ".join(findings["first"]),
                file=sys.stderr,
            )
    return row


def ensure_alive(*processes: ComponentProcess) -> None:
    for process in processes:
        if not process.running:
            raise BenchError(f"{process.name} exited early:\n{process.log_tail()}")


def start_components(client: LoadClientProcess, targets: list[Target]) -> None:
    for target in targets:
        if target.component is not None and not target.component.running:
            target.component.start()
    for target in targets:
        try:
            client.wait_until_serving(target.jid, 30)
        except LoadError:
            if target.component is not None:
                ensure_alive(target.component)
            raise


def ours_target(
    server: Prosody,
    work: Path,
    iqdisc: str,
    jid: str,
    extra: Sequence[str] = (),
    backend: str = "s3",
    processes: int = 1,
    source: Path | None = None,
) -> Target:
    name = jid.partition(".")[0]
    config = harness.write_ours_config(work / f"{name}.toml", server, iqdisc, jid, extra, backend)
    label = f"ours ({iqdisc})" if processes == 1 else f"ours ({iqdisc}, {processes} processes)"
    if source is not None:
        label = f"baseline: {source.name} ({iqdisc})"
    return Target(label, jid, harness.ours_process(name, config, work, processes, source))


def variant_jid(iqdisc: str) -> str:
    return f"upload-{iqdisc.replace(':', '').replace('_', '')}.localhost"


# --------------------------------------------------------------------------
# profiling (py-spy, if installed)


def profile_component(client: LoadClientProcess, pid: int, args: argparse.Namespace) -> dict[str, Any]:
    """Sample our component with py-spy during two more load runs, one per output: raw stacks
    (``profile.txt``, summarised) and a flame graph (``profile.svg``)."""
    import profile_summary

    py_spy = find_py_spy(args.py_spy)
    if not py_spy:
        return {"skipped": "py-spy not found (pip install py-spy)"}
    outputs = {"raw": Path(args.profile_dir) / "profile.txt", "flamegraph": Path(args.profile_dir) / "profile.svg"}
    outputs["raw"].parent.mkdir(parents=True, exist_ok=True)

    def run() -> None:
        client.run(OURS_JID, args.requests, args.inflight, args.timeout)

    for fmt, path in outputs.items():
        failure = harness.py_spy_record(py_spy, pid, path, run, rate=500, fmt=fmt)
        if failure:
            return {"skipped": failure}
    summary = profile_summary.summarise(outputs["raw"].read_text())
    return {"files": {k: str(v) for k, v in outputs.items()}, **summary}


# --------------------------------------------------------------------------
# two components with the same JID


@contextmanager
def running(*processes: ComponentProcess) -> Iterator[None]:
    try:
        for process in processes:
            process.start()
        yield
    finally:
        for process in processes:
            process.stop()


def two_components(args: argparse.Namespace, policy: str | None) -> dict[str, Any]:
    """Connect two ``serve`` processes as ``upload.localhost`` and watch what Prosody does: who
    serves a load run, and (if the second one waits) how long until it takes over once the
    first one stops."""
    extra = f'component_conflict_resolve = "{policy}"' if policy else ""
    with harness.prosody_and_load_client(
        {OURS_JID: secrets.token_hex(8)}, users=args.users, http_file_share=False, log_level="info", extra=extra
    ) as (prosody, client, work):
        config = harness.write_ours_config(work / "ours.toml", prosody, "one_queue")
        first = harness.ours_process("first", config, work)
        second = harness.ours_process("second", config, work)
        result: dict[str, Any] = {"policy": policy or "default (kick_new)"}
        with running(first):
            client.wait_until_serving(OURS_JID, 30)
            with running(second):
                time.sleep(args.settle)
                result["alive_after_settle"] = {"first": first.running, "second": second.running}
                pids = {"first": first.pid, "second": second.pid}
                before = {name: cpu_seconds(pid) for name, pid in pids.items()}
                short = argparse.Namespace(**{**vars(args), "warmup": 0, "timeout": 15})
                watched = {"server": prosody.pid, **{f"component {name}": pid for name, pid in pids.items()}}
                try:
                    result["load"] = measure(client, "two components", OURS_JID, watched, short, allow_errors=True)
                except LoadError as error:
                    result["load"] = {"failed": str(error)}
                result["component_cpu_s_during_load"] = {
                    name: round(cpu_seconds(pid) - before[name], 3) for name, pid in pids.items() if _alive(pid)
                }
                result["alive_after_load"] = {"first": first.running, "second": second.running}
                if "failed" not in result["load"]:
                    result["takeover_s"] = takeover_seconds(client, first)
                result["component_logs"] = {"first": first.log_tail(6), "second": second.log_tail(6)}
        result["prosody_log"] = _component_log_lines(prosody.log_path.read_text(errors="replace"))
        return result


def takeover_seconds(client: LoadClientProcess, first: ComponentProcess, limit: float = 45.0) -> float | None:
    """Stop ``first``; seconds until a slot request gets a result again (None: not within ``limit``)."""
    first.stop()
    started = time.monotonic()
    try:
        client.wait_until_serving(OURS_JID, limit)
    except LoadError:
        return None
    return round(time.monotonic() - started, 1)


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _component_log_lines(text: str, limit: int = 12) -> dict[str, Any]:
    """The Prosody log lines about component (dis)connections, and how many of each kind."""
    pattern = re.compile(r"component|conflict", re.I)
    lines = [line for line in text.splitlines() if pattern.search(line)]
    return {
        "authenticated": sum("successfully authenticated" in line for line in lines),
        "second_denied": sum("Second component attempted to connect" in line for line in lines),
        "lines": lines[:limit],
    }


# --------------------------------------------------------------------------
# reporting


def print_table(rows: Sequence[dict[str, Any]], kind: str = "prosody") -> None:
    """slots/s and latencies of the median-rate run; CPU per slot: median over the runs."""
    header = (
        f"{'target':<36} {'slots/s':>9} {'p50 µs':>8} {'p99 µs':>8} "
        f"{'comp µs/slot':>12} {'slots/wake':>10} {kind + ' µs/slot':>15} {'client µs/slot':>14}"
    )
    print(header)
    print("-" * len(header))
    for row in rows:
        per = row.get("cpu_us_per_slot_median", row["cpu_us_per_slot"])
        comp = f"{per['component']:.0f}" if "component" in per else "—"
        batch = row.get("slots_per_wakeup_median", row.get("slots_per_wakeup"))
        wake = f"{batch:.1f}" if batch is not None else "—"
        print(
            f"{row['label']:<36} {row['rate']:>9.0f} {row['latency_us']['p50']:>8.0f} {row['latency_us']['p99']:>8.0f} "
            f"{comp:>12} {wake:>10} {per['server']:>15.0f} {per['client']:>14.0f}"
        )


def ratios(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    out = {}
    ours = results.get("ours")
    scaled = results.get("ours_scaled")
    if ours and scaled:
        out["ours N processes/ours 1 process slots/s"] = scaled["rate"] / ours["rate"]
    if ours and (baseline := results.get("baseline")):
        out["ours/baseline slots/s"] = ours["rate"] / baseline["rate"]
        per, before = ours["cpu_us_per_slot_median"], baseline["cpu_us_per_slot_median"]
        out["ours/baseline component CPU per slot"] = per["component"] / before["component"]
    for other in ("own", "ceiling", "ceiling_slot"):
        if ours and other in results:
            out[f"ours/{other} slots/s"] = ours["rate"] / results[other]["rate"]
            out[f"ours/{other} p50"] = ours["latency_us"]["p50"] / results[other]["latency_us"]["p50"]
    if ours and "ceiling" in results:
        per, ceiling = ours["cpu_us_per_slot_median"], results["ceiling"]["cpu_us_per_slot_median"]
        out["ours/ceiling component CPU per slot"] = per["component"] / ceiling["component"]
        out["ours/ceiling server CPU per slot"] = per["server"] / ceiling["server"]
    if ours and "own" in results:
        per, share = ours["cpu_us_per_slot_median"], results["own"]["cpu_us_per_slot_median"]
        ours_total = per["component"] + per["server"]
        out["(ours component + server)/server's own service CPU per slot"] = ours_total / share["server"]
    return out


# --------------------------------------------------------------------------
# main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=4, help="concurrent c2s connections K (default 4)")
    parser.add_argument("--inflight", type=int, default=16, help="requests in flight per connection D (default 16)")
    parser.add_argument("--requests", type=int, default=20000, help="measured requests N per target (default 20000)")
    parser.add_argument("--warmup", type=int, default=1000, help="unmeasured requests before each run (default 1000)")
    parser.add_argument(
        "--rounds", type=int, default=3, help="runs per target, interleaved; the median is shown (default 3)"
    )
    parser.add_argument("--iqdisc", default="one_queue", help="ours: one_queue|parallel|no_queue|queues:N")
    parser.add_argument(
        "--http-upload",
        action="append",
        default=[],
        metavar="TOML",
        help="a further line of ours's [http_upload] table, repeatable (e.g. 'daily_quota = 1099511627776')",
    )
    parser.add_argument(
        "--backend", choices=("s3", "local"), default="s3", help="ours: S3 (dummy bucket) or local (its HTTP server runs)"
    )
    parser.add_argument(
        "--targets", default=",".join(TARGETS), help="comma-separated: ours,own (the server's own service),ceiling,ceiling_slot"
    )
    parser.add_argument("--servers", default=",".join(SERVERS), help="comma-separated: prosody,ejabberd (default both)")
    parser.add_argument(
        "--processes", type=int, default=1, help="through ejabberd, also ours as serve --processes N (default 1: not)"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also ours from this checkout (e.g. `git worktree add /tmp/old COMMIT`), same config: an A/B in one run",
    )
    parser.add_argument("--ejabberd-config", default="", help="extra top-level ejabberd config (YAML)")
    parser.add_argument("--scaling", action="store_true", help="also every iqdisc, and two components on one JID")
    parser.add_argument("--profile", action="store_true", help="py-spy our component during two extra runs (raw, flame graph)")
    parser.add_argument("--py-spy", default="auto", help="path of py-spy (default: look for it)")
    parser.add_argument("--profile-dir", default=str(harness.RESULTS), help="where profile.txt/.svg go")
    parser.add_argument("--prosody-log-level", default="warn", help="Prosody's log level (default warn)")
    parser.add_argument("--prosody-config", default="", help="extra global Prosody config lines (Lua)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds one run may take (default 120)")
    parser.add_argument(
        "--quiet-wait", type=float, default=20.0, help="seconds to wait for other load to end before a run (default 20)"
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds to watch a second component (default 3)")
    parser.add_argument("--json", default=str(harness.RESULTS / "throughput.json"), help="JSON output path")
    args = parser.parse_args(argv)
    args.target_list = [
        "own" if t.strip() in OWN_ALIASES else t.strip() for t in args.targets.split(",") if t.strip()
    ]
    args.server_list = [s.strip() for s in args.servers.split(",") if s.strip()]
    if set(args.server_list) - set(SERVERS):
        parser.error(f"unknown servers: {args.servers}")
    unknown = set(args.target_list) - set(TARGETS)
    if unknown:
        parser.error(f"unknown targets: {', '.join(sorted(unknown))}")
    if args.profile and "ours" not in args.target_list and not args.scaling:
        parser.error("--profile profiles 'ours': add it to --targets (or use --scaling)")
    harness.iqdisc_toml(args.iqdisc)  # validates
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    document: dict[str, Any] = {
        "benchmark": "throughput",
        "machine": harness.machine(),
        "load": {k: getattr(args, k) for k in ("users", "inflight", "requests", "warmup", "rounds", "backend")},
        "ours_http_upload": args.http_upload,
        "prosody_log_level": args.prosody_log_level,
        "prosody_config": args.prosody_config,
        "ejabberd_config": args.ejabberd_config,
        "servers": {},
    }
    for kind in args.server_list:
        print(f"\n== through {kind} ==", flush=True)
        document["servers"][kind] = run_server(kind, args)
    if args.scaling and "prosody" in args.server_list:
        document["two_components"] = [two_components(args, None), two_components(args, "kick_old")]
        print_two_components(document["two_components"])
    path = harness.write_json(args.json, document)
    print(f"\nJSON: {path}")
    return 0


@contextmanager
def server_and_client(kind: str, components: dict[str, str], args: argparse.Namespace) -> Iterator[Any]:
    """The XMPP server ``kind`` with its own upload service and the load client."""
    if kind == "ejabberd":
        with harness.ejabberd_and_load_client(
            components, users=args.users, http_upload=True, log_level="warning", extra=args.ejabberd_config
        ) as running:
            yield running
    else:
        with harness.prosody_and_load_client(
            components, users=args.users, http_file_share=True, log_level=args.prosody_log_level, extra=args.prosody_config
        ) as running:
            yield running


def run_server(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    """Every target through one XMPP server, the same load for each; results and ratios."""
    document: dict[str, Any] = {}
    needs_ours = "ours" in args.target_list or args.scaling or args.processes > 1 or bool(args.baseline)
    variants = [v for v in SCALING_IQDISCS if v != args.iqdisc] if args.scaling and kind == "prosody" else []
    scale_out = args.processes > 1 and kind == "ejabberd"
    components = {
        jid: secrets.token_hex(8) for jid in (OURS_JID, CEILING_JID, CEILING_SLOT_JID, SCALED_JID, BASELINE_JID)
    }
    components.update({variant_jid(v): secrets.token_hex(8) for v in variants})
    targets: dict[str, Target] = {}
    with server_and_client(kind, components, args) as (server, client, work):
        try:
            if needs_ours:
                targets["ours"] = ours_target(server, work, args.iqdisc, OURS_JID, args.http_upload, args.backend)
            own_label = "ejabberd mod_http_upload" if kind == "ejabberd" else "prosody mod_http_file_share"
            targets["own"] = Target(own_label, server.share_jid)
            targets["ceiling"] = Target(
                "ceiling (trivial component)", CEILING_JID, harness.trivial_process("ceiling", server, work)
            )
            targets["ceiling_slot"] = Target(
                "ceiling, slot-sized reply",
                CEILING_SLOT_JID,
                harness.trivial_process("ceiling_slot", server, work, CEILING_SLOT_JID, slot=True),
            )
            for variant in variants:
                targets[f"ours:{variant}"] = ours_target(
                    server, work, variant, variant_jid(variant), args.http_upload, args.backend
                )
            keys = list(args.target_list)
            if scale_out:
                targets["ours_scaled"] = ours_target(
                    server, work, args.iqdisc, SCALED_JID, args.http_upload, args.backend, args.processes
                )
                keys.append("ours_scaled")
            if args.baseline:
                targets["baseline"] = ours_target(
                    server, work, args.iqdisc, BASELINE_JID, args.http_upload, args.backend, source=args.baseline
                )
                keys.append("baseline")
            start_components(client, list(targets.values()))
            print(
                f"{kind} pid {server.pid}, load client pid {client.pid}: K={args.users} connections × "
                f"D={args.inflight} in flight, N={args.requests} requests (+{args.warmup} warm-up) per run, "
                f"{args.rounds} rounds",
                flush=True,
            )
            run_rounds(client, server, [targets[key] for key in keys], args)
            results = {key: representative(targets[key]) for key in keys}
            document["results"] = results
            document["ratios"] = ratios(results)
            print()
            print_table(list(results.values()), kind)
            for name, value in document["ratios"].items():
                print(f"  {name}: {value:.2f}")
            if variants:
                scaled = [targets["ours"]] + [targets[f"ours:{v}"] for v in variants]
                document["scaling"] = scaling(client, server, scaled, args, kind)
            if args.profile and "ours" in targets:
                ours = targets["ours"]
                assert ours.component is not None
                document["profile"] = profile_component(client, ours.component.pid, args)
                profile_summary_print(document["profile"])
        finally:
            for target in targets.values():
                if target.component is not None:
                    target.component.stop()
    return document


def scaling(
    client: LoadClientProcess, server: Prosody, targets: list[Target], args: argparse.Namespace, kind: str
) -> list[dict[str, Any]]:
    """Ours under every iqdisc, each its own component process at its own JID, interleaved."""
    print("\nours under each iqdisc:")
    fresh = [Target(t.label, t.jid, t.component) for t in targets]
    run_rounds(client, server, fresh, args)
    rows = [representative(t) for t in fresh]
    print_table(rows, kind)
    return rows


def print_two_components(experiments: list[dict[str, Any]]) -> None:
    print("\ntwo `serve` processes connected as the same JID:")
    for exp in experiments:
        load = exp["load"]
        if "rate" in load:
            outcome = f"{load['rate']:.0f} slots/s, {load['errors']} errors"
        else:
            outcome = f"load failed: {load['failed']}"
        print(
            f"  {exp['policy']}: alive after settle {exp['alive_after_settle']}, after load {exp['alive_after_load']}; "
            f"component CPU s during load {exp['component_cpu_s_during_load']}; {outcome}; "
            f"Prosody log: {exp['prosody_log']['authenticated']} authenticated, "
            f"{exp['prosody_log']['second_denied']} denied; takeover after stopping the first: "
            f"{exp.get('takeover_s', 'n/a')} s"
        )


def profile_summary_print(profile: dict[str, Any]) -> None:
    import profile_summary

    profile_summary.print_summary(profile)


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except (BenchError, LoadError) as error:
        print(f"throughput: FAILED: {error}", file=sys.stderr)
        raise SystemExit(1) from None
