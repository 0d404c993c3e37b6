"""Memory of our component under sustained load: RSS after 10k and after 200k slots.

What it measures: ``python -m slixmpp_http_upload serve`` behind a real Prosody (S3 backend on
a dummy bucket URL: slots are presigned offline), driven by the load client
(``bench/loadclient.py``: K connections × D requests in flight). The component's resident set
size (``/proc/PID/statm``) is read at start (after one slot), then after each checkpoint's worth of
slots (default 10k, 50k, 100k, 150k, 200k), plus its peak (``VmHWM``). Then ``serve`` starts
again on the same ledger with ``total_quota`` on, so that the limits count every record of the
file at start, and its RSS and peak are read once it answers. Goal: at most 60 MB, at every
checkpoint and at the restart's peak, and flat — RSS after 200k within ±5 % of RSS after 10k.
Any error reply fails the run.

Run (from the repository root; ~40 s)::

    .venv/bin/python bench/memory.py [--checkpoints 10000,50000,100000,150000,200000] [--json PATH]
"""

from __future__ import annotations

import argparse
import secrets
import sys
from collections.abc import Sequence
from typing import Any

import harness
from harness import OURS_JID, peak_rss_bytes
from loadclient import LoadClientProcess, LoadError
from servers import rss_bytes  # tests/servers.py, on the path through harness

GOAL_MB = 60.0
FLAT_TOLERANCE = 0.05
MB = 1024 * 1024


class BenchError(RuntimeError):
    pass


def drive(
    client: LoadClientProcess, pid: int, checkpoints: list[int], inflight: int, timeout: float
) -> list[dict[str, Any]]:
    """Run up to each checkpoint (a cumulative slot count) and read RSS there."""
    samples = [{"slots": 0, "rss_mb": rss_bytes(pid) / MB}]
    print(f"  {0:>7} slots: RSS {samples[0]['rss_mb']:.1f} MB (after start and one probe slot)", flush=True)
    done = 0
    for target in checkpoints:
        stats = client.run(OURS_JID, target - done, inflight, timeout)
        if stats["errors"]:
            raise BenchError(f"{stats['errors']} error replies, e.g. {stats['error_samples'][:2]}")
        done = target
        samples.append({"slots": done, "rss_mb": rss_bytes(pid) / MB, "rate": stats["rate"]})
        print(f"  {done:>7} slots: RSS {samples[-1]['rss_mb']:.1f} MB ({stats['rate']:.0f} slots/s)", flush=True)
    return samples


def restarted(prosody: Any, client: LoadClientProcess, work: Any, args: argparse.Namespace) -> dict[str, float]:
    """``serve`` started again on the ledger the run filled, ``total_quota`` on (the limits then
    count every record of the file at start): its RSS once it answers, and its peak."""
    config = harness.write_ours_config(
        work / "restart.toml", prosody, args.iqdisc, extra=["total_quota = 1099511627776"]
    )  # the same component name, so the same ledger file
    with harness.ours_process("restarted", config, work) as component:
        client.wait_until_serving(OURS_JID, 60)
        return {"rss_mb": rss_bytes(component.pid) / MB, "peak_rss_mb": peak_rss_bytes(component.pid) / MB}


def verdict(samples: list[dict[str, Any]], first: int, last: int) -> dict[str, Any]:
    by_count = {s["slots"]: s["rss_mb"] for s in samples}
    at_first, at_last = by_count[first], by_count[last]
    ratio = at_last / at_first
    return {
        f"rss_mb_after_{first}": at_first,
        f"rss_mb_after_{last}": at_last,
        "ratio": ratio,
        "goal_mb": GOAL_MB,
        "within_goal": max(at_first, at_last) <= GOAL_MB,
        "flat": abs(ratio - 1) <= FLAT_TOLERANCE,
    }


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=4, help="c2s connections (default 4)")
    parser.add_argument("--inflight", type=int, default=16, help="requests in flight per connection (default 16)")
    parser.add_argument("--iqdisc", default="one_queue", help="one_queue|parallel|no_queue|queues:N")
    parser.add_argument("--checkpoints", default="10000,50000,100000,150000,200000", help="cumulative slot counts")
    parser.add_argument("--timeout", type=float, default=150.0, help="seconds one checkpoint may take")
    parser.add_argument("--json", default=str(harness.RESULTS / "memory.json"), help="JSON output path")
    args = parser.parse_args(argv)
    args.checkpoint_list = sorted({int(c) for c in args.checkpoints.split(",") if c.strip()})
    if len(args.checkpoint_list) < 2 or args.checkpoint_list[0] < 1:
        parser.error("give at least two positive checkpoints")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    with harness.prosody_and_load_client(
        {OURS_JID: secrets.token_hex(8)}, users=args.users, http_file_share=False, log_level="warn"
    ) as (prosody, client, work):
        config = harness.write_ours_config(work / "ours.toml", prosody, args.iqdisc)
        with harness.ours_process("ours", config, work) as component:
            client.wait_until_serving(OURS_JID, 30)
            print(f"component pid {component.pid}, iqdisc {args.iqdisc}, K={args.users} × D={args.inflight}")
            samples = drive(client, component.pid, args.checkpoint_list, args.inflight, args.timeout)
            peak = peak_rss_bytes(component.pid) / MB
            if not component.running:
                raise BenchError(f"the component exited:\n{component.log_tail()}")
        restart = restarted(prosody, client, work, args)
    result = verdict(samples, args.checkpoint_list[0], args.checkpoint_list[-1])
    result["within_goal"] = result["within_goal"] and restart["peak_rss_mb"] <= GOAL_MB
    first, last = args.checkpoint_list[0], args.checkpoint_list[-1]
    print(
        f"\nRSS after {first}: {result[f'rss_mb_after_{first}']:.1f} MB, after {last}: "
        f"{result[f'rss_mb_after_{last}']:.1f} MB, ratio {result['ratio']:.3f}, peak {peak:.1f} MB"
    )
    print(
        f"restarted on that ledger, total_quota on: RSS {restart['rss_mb']:.1f} MB, peak {restart['peak_rss_mb']:.1f} MB"
    )
    print(
        f"goal ≤ {GOAL_MB:.0f} MB: {'met' if result['within_goal'] else 'NOT met'}; "
        f"flat within ±{FLAT_TOLERANCE:.0%}: {'yes' if result['flat'] else 'NO'}"
    )
    document = {
        "benchmark": "memory",
        "machine": harness.machine(),
        "load": {"users": args.users, "inflight": args.inflight, "iqdisc": args.iqdisc},
        "samples": samples,
        "peak_rss_mb": peak,
        "restart": restart,
        **result,
    }
    print(f"\nJSON: {harness.write_json(args.json, document)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BenchError, LoadError) as error:
        print(f"memory: FAILED: {error}", file=sys.stderr)
        sys.exit(1)
