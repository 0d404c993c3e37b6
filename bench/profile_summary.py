"""Summarise a py-spy ``--format raw`` profile (collapsed stacks) of our component.

It measures nothing by itself: ``throughput.py --profile`` records the profile and calls
:func:`summarise`. Run by hand on a saved profile::

    python bench/profile_summary.py bench/results/profile.txt

It prints the top functions by own time (the leaf Python frame of each sample; C code such as
expat or hashlib counts for the Python function that called it), the share of samples by layer
(each sample goes to the innermost frame that belongs to a known layer; stdlib helpers such as
``re``, ``urllib``, ``xml.etree`` and ``secrets`` are transparent and count for their caller),
and a few inclusive shares (samples with a given function anywhere on the stack).
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_PREFIX = f"{Path(__file__).resolve().parent.parent}/"
"""The repository root as it appears in py-spy's file names, cut off like site-packages."""

FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")

LAYERS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("logging", re.compile(r"(^|/)logging/")),
    ("our plugin + backend (slixmpp_http_upload)", re.compile(r"(^|/)slixmpp_http_upload/")),
    ("slixmpp serialisation (tostring)", re.compile(r"(^|/)slixmpp/xmlstream/tostring")),
    ("slixmpp stream: parse, dispatch, send (xmlstream.py)", re.compile(r"(^|/)slixmpp/xmlstream/xmlstream\.py")),
    ("slixmpp handlers + matchers", re.compile(r"(^|/)slixmpp/xmlstream/(handler|matcher)/")),
    (
        "slixmpp stanza objects + JID",
        re.compile(r"(^|/)slixmpp/(xmlstream/stanzabase|stanza/|jid|basexmpp|componentxmpp)"),
    ),
    ("slixmpp other", re.compile(r"(^|/)slixmpp/")),
    ("aiohttp (HTTP server)", re.compile(r"(^|/)aiohttp/")),
    ("asyncio event loop + sockets", re.compile(r"(^|/)(asyncio|selectors\.py)")),
)
"""Matched against each frame's file: the innermost frame that matches any gives the layer."""

INCLUSIVE: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("XML parse (XMLPullParser.feed + read_events)", re.compile(r"XMLPullParser\.(feed|read_events) ")),
    ("our _on_request (check + schedule)", re.compile(r"\._on_request \(.*slixmpp_http_upload")),
    ("our _answer (backend + build + send reply)", re.compile(r"\._answer \(.*slixmpp_http_upload")),
    ("backend make_slot (token + SigV4 presign)", re.compile(r"\.make_slot \(.*slixmpp_http_upload")),
    ("stanza send + serialise (tostring)", re.compile(r"^(Iq|ElementBase|StanzaBase|RootStanza)\.send \(")),
    ("tostring", re.compile(r"^tostring \(.*slixmpp/xmlstream/tostring")),
    ("Iq.reply / stanza copy", re.compile(r"^(Iq|StanzaBase|RootStanza)\.reply \(")),
    ("logging", re.compile(r"(^|/)logging/")),
)


def parse(text: str) -> list[tuple[list[str], int]]:
    """``[(frames root→leaf, count)]`` from collapsed-stack lines ``f1;f2;… COUNT``."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def function_key(frame: str) -> str:
    """``func (file)`` without the line number, the file shortened to its package path."""
    match = FRAME.match(frame)
    if not match:
        return frame
    path = match["file"]
    for marker in ("site-packages/", "lib/python3", REPO_PREFIX):
        if marker in path:
            path = path.split(marker, 1)[1]
            if marker == "lib/python3":
                path = "stdlib/" + path.split("/", 1)[1] if "/" in path else path
            break
    return f"{match['func']} ({path})"


def file_of(frame: str) -> str:
    match = FRAME.match(frame)
    return match["file"] if match else ""


def layer_of(frames: list[str]) -> str:
    for frame in reversed(frames):
        path = file_of(frame)
        for name, pattern in LAYERS:
            if pattern.search(path):
                return name
    return "other (stdlib, interpreter start-up)"


IDLE_LEAF = re.compile(r"^(EpollSelector|PollSelector|SelectSelector)\.select \(")
"""A leaf in the selector's ``select`` is the loop waiting in epoll_wait: counted apart."""


def summarise(text: str, top: int = 15) -> dict[str, Any]:
    """Shares of the samples where the component was not waiting in ``select``."""
    all_stacks = parse(text)
    stacks = [(frames, count) for frames, count in all_stacks if not IDLE_LEAF.match(frames[-1])]
    waiting = sum(count for _, count in all_stacks) - sum(count for _, count in stacks)
    total = sum(count for _, count in stacks) or 1
    own: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        own[function_key(frames[-1])] += count
        layers[layer_of(frames)] += count
        for name, pattern in INCLUSIVE:
            if name == "logging":
                hit = any(pattern.search(file_of(frame)) for frame in frames)
            else:
                hit = any(pattern.search(frame) for frame in frames)
            if hit:
                inclusive[name] += count
    return {
        "samples": total,
        "samples_in_select": waiting,
        "top_own": [{"function": f, "samples": n, "share": n / total} for f, n in own.most_common(top)],
        "layers": {name: n / total for name, n in layers.most_common()},
        "inclusive": {name: inclusive[name] / total for name, _ in INCLUSIVE},
    }


def print_summary(summary: dict[str, Any]) -> None:
    if "skipped" in summary:
        print(f"\nprofile: skipped ({summary['skipped']})")
        return
    print(
        f"\nprofile of our component: {summary['samples']} busy samples "
        f"(+{summary['samples_in_select']} in select(), left out of the shares)"
    )
    print(f"top {len(summary['top_own'])} functions by own time:")
    for row in summary["top_own"]:
        print(f"  {row['share']:6.1%}  {row['function']}")
    print("by layer (innermost known frame):")
    for name, share in summary["layers"].items():
        print(f"  {share:6.1%}  {name}")
    print("inclusive (function anywhere on the stack):")
    for name, share in summary["inclusive"].items():
        print(f"  {share:6.1%}  {name}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", help="py-spy raw output (collapsed stacks)")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    with open(args.path) as file:
        print_summary(summarise(file.read(), args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
