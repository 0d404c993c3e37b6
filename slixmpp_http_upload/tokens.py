"""The random tokens in slot URLs: hex of bytes from the operating system's CSPRNG
(``os.urandom``, as :func:`secrets.token_hex` uses), read :data:`BLOCK` bytes at a time.

Each slot needs a fresh token (32 bytes by default); one ``getrandom`` system call per slot
was ~2 µs of the ~50 the component spends on it. The bytes are the same kind either way; a
block is used once, front to back, under a lock, and thrown away in a forked child (which
would otherwise hand out its parent's next tokens again).
"""

from __future__ import annotations

import os
import threading

BLOCK = 4096


class _Pool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.block = b""
        self.used = 0

    def take(self, nbytes: int) -> bytes:
        with self.lock:
            start = self.used
            if start + nbytes > len(self.block):
                self.block, start = os.urandom(max(BLOCK, nbytes)), 0
            self.used = start + nbytes
            return self.block[start : start + nbytes]

    def forget(self) -> None:
        self.block, self.used = b"", 0


_pool = _Pool()
os.register_at_fork(after_in_child=_pool.forget)


def token_hex(nbytes: int) -> str:
    """``nbytes`` random bytes, as ``2 * nbytes`` lowercase hex digits."""
    return _pool.take(nbytes).hex()
