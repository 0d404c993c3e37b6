"""The random tokens of slot URLs: ``nbytes`` bytes from ``os.urandom``, in hex.

They are drawn from the OS :data:`BLOCK` at a time. Each ``getrandom`` call lets go of the GIL,
and a thread waiting for it (the ledger's writer, while it writes) is woken at every such
release and goes back to sleep when the event loop's thread takes the GIL again: a call per
slot cost the process a context switch per slot (``bench/README.md``). A block is split into
tokens at once; each is handed out once (a deque's ``popleft``, safe across threads), and a
process made by ``fork`` starts with none of its parent's. Up to ``BLOCK - 1`` tokens of each
size wait in memory: a copy of the process's memory (a core dump, a cloned VM) holds the next
slots' tokens, as it holds the keys that sign their URLs.
"""

from __future__ import annotations

import os
from collections import deque

BLOCK = 64
"""Tokens made from one call to the OS."""

_ready: dict[int, deque[str]] = {}
"""Tokens not handed out yet, by their size in bytes."""


def token_hex(nbytes: int) -> str:
    """A fresh token of ``nbytes`` random bytes, as ``2 * nbytes`` lower-case hex digits."""
    tokens = _ready.get(nbytes)
    if tokens is None:
        tokens = _ready.setdefault(nbytes, deque())
    try:
        return tokens.popleft()
    except IndexError:
        digits = 2 * nbytes
        block = os.urandom(nbytes * BLOCK).hex()
        tokens.extend(block[start : start + digits] for start in range(digits, len(block), digits))
        return block[:digits]


def _forget() -> None:
    """In a child made by ``fork``: drop the parent's tokens, which it may hand out too."""
    _ready.clear()


os.register_at_fork(after_in_child=_forget)
