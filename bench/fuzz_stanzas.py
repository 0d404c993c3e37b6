"""Adversarial stanzas against ``serve``, the full count (the suite runs 1,500 per stream in
``tests/test_fuzz_stanzas.py``; this runs ``--count``, 12,000 by default, per stream).

The stanzas come from the seeded generator of ``tests/hostile.py``; two streams, each to its
own ``serve`` process:

``stand-in``  a stand-in XEP-0114 server (``tests/component_server.py``) writes them straight to
              ``serve``: malformed ``from``/``to`` and ids with tab/LF/CR included, values up
              to 1,000,000 characters;
``prosody``   an ordinary user sends them through a real Prosody (which stamps ``from`` and
              writes tab/LF/CR raw in attributes itself, so neither is generated there), values
              up to 20,000 characters (Prosody's stanza size limit).

What must hold, per stream: every IQ get/set to the service answered exactly once with its id
intact, no IQ result/error answered, one session of the same process throughout, no ERROR
line in its log, RSS flat (growth from the first quarter to the end under 16 MB). Prints what
it saw and writes ``bench/results/fuzz_stanzas.json``; exit status 1 when something did not hold.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import harness
from component_server import Answers, ComponentServer
from harness import OURS_JID, RESULTS
from helpers import XmppClients, offline_serve_config, write_toml
from hostile import Generator, Verdict, fuzz, through_client

SENDERS = ["alice@localhost/phone", "bob@localhost/laptop", "carol@remote.example/pc"]
RSS_GROWTH_MB = 16.0
"""Each value of up to 1,000,000 characters (up to 4 MB as a str) is parsed and freed, and the
allocator keeps the peak: 36,000 stanzas level off at 70-78 MB."""


async def stand_in(args: argparse.Namespace, work: Path) -> tuple[Verdict, dict[str, Any]]:
    async with ComponentServer(OURS_JID) as server:
        config = write_toml(work / "stand-in.toml", offline_serve_config(server.port))
        with harness.ours_process("stand-in", config, work) as component:
            await server.wait_for_session()
            generator = Generator(
                args.seed, OURS_JID, SENDERS, addressing=True, whitespace_ids=True, max_value=1_000_000
            )
            verdict, seen = await measured(generator, args.count, server.send, server.answers, component)
            seen["sessions"] = server.connections
            seen["still_connected"] = server.connected
    return verdict, seen


async def through_prosody(args: argparse.Namespace, work: Path) -> tuple[Verdict, dict[str, Any]]:
    with harness.Prosody({OURS_JID: secrets.token_hex(8)}, log_level="warn") as prosody:
        prosody.register("alice", "alice-password")
        config = harness.write_ours_config(work / "prosody.toml", prosody, "one_queue")
        with harness.ours_process("prosody", config, work) as component:
            async with XmppClients() as clients:
                xmpp = await clients.connect(prosody)
                await clients.wait_for_service(xmpp, OURS_JID)
                send, answers = through_client(xmpp)
                generator = Generator(
                    args.seed, OURS_JID, [], addressing=False, whitespace_ids=False, max_value=20_000
                )
                verdict, seen = await measured(generator, args.count, send, answers, component)
                seen["still_connected"] = xmpp.is_connected()
    seen["sessions"] = seen.pop("log_sessions")
    return verdict, seen


async def measured(
    generator: Generator, count: int, send: Any, answers: Answers, component: harness.ComponentProcess
) -> tuple[Verdict, dict[str, Any]]:
    cpu, wall = harness.cpu_seconds(component.pid), time.perf_counter()
    verdict = await fuzz(generator, count, send, answers, component.pid)
    seen = {
        "wall_s": round(time.perf_counter() - wall, 2),
        "component_cpu_s": round(harness.cpu_seconds(component.pid) - cpu, 2),
        "process_running": component.running,
        "log_sessions": component.log_path.read_text(errors="replace").count("connected to"),
        **component.log_findings(),
    }
    return verdict, seen


def held(verdict: Verdict, seen: dict[str, Any]) -> bool:
    growth = verdict.rss_mb[-1] - verdict.rss_mb[1]
    return (
        not verdict.problems
        and verdict.answered_once == verdict.must_answer
        and seen["sessions"] == 1
        and seen["still_connected"]
        and seen["process_running"]
        and seen["error_lines"] == 0
        and growth < RSS_GROWTH_MB
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=12_000, help="stanzas per stream (default 12000)")
    parser.add_argument("--seed", type=int, default=7, help="the generator's seed (default 7)")
    parser.add_argument("--streams", default="stand-in,prosody", help="stand-in, prosody or both (default)")
    parser.add_argument("--json", default=str(RESULTS / "fuzz_stanzas.json"))
    return parser.parse_args(argv)


async def run(args: argparse.Namespace) -> int:
    runners = {"stand-in": stand_in, "prosody": through_prosody}
    streams = [name.strip() for name in args.streams.split(",") if name.strip()]
    document: dict[str, Any] = {"benchmark": "fuzz_stanzas", "machine": harness.machine(), "seed": args.seed}
    status = 0
    with harness.workdir() as tmp:
        for name in streams:
            print(f"{name}: {args.count} stanzas, seed {args.seed}", flush=True)
            verdict, seen = await runners[name](args, Path(tmp))
            ok = held(verdict, seen)
            status |= not ok
            print(
                f"  sent {verdict.sent}, IQ get/set owed an answer {verdict.must_answer}, answered exactly once "
                f"{verdict.answered_once}, problems {len(verdict.problems)}\n"
                f"  sessions {seen['sessions']}, still connected {seen['still_connected']}, process running "
                f"{seen['process_running']}, ERROR lines {seen['error_lines']}, tracebacks {seen['tracebacks']}\n"
                f"  RSS MB (start, quarters): {', '.join(f'{mb:.1f}' for mb in verdict.rss_mb)}\n"
                f"  {seen['wall_s']} s, component CPU {seen['component_cpu_s']} s: {'held' if ok else 'DID NOT HOLD'}",
                flush=True,
            )
            for problem in verdict.problems[:10]:
                print(f"    {problem}")
            document[name] = {"held": ok, **seen, **{k: v for k, v in vars(verdict).items() if k != "problems"},
                              "problems": verdict.problems[:50]}
    print(f"\nJSON: {harness.write_json(args.json, document)}")
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
