"""The slot tokens drawn from the OS in blocks: each handed out once, in every process."""

from __future__ import annotations

import os
import re
import sys
import threading

import pytest

from slixmpp_http_upload import tokens
from slixmpp_http_upload.tokens import BLOCK, token_hex


def test_tokens_are_hex_of_the_size_asked_across_blocks():
    for nbytes in (16, 32, 33, 256):
        made = [token_hex(nbytes) for _ in range(3 * BLOCK + 1)]
        assert all(re.fullmatch(f"[0-9a-f]{{{2 * nbytes}}}", token) for token in made)
        assert len(set(made)) == len(made)


def test_sizes_do_not_share_their_tokens():
    short, long = token_hex(16), token_hex(24)
    assert len(short) == 32 and len(long) == 48
    assert not long.startswith(short)


def test_threads_never_get_the_same_token():
    tokens._ready.clear()
    made: list[list[str]] = [[] for _ in range(8)]

    def draw(into: list[str]) -> None:
        for _ in range(20 * BLOCK):
            into.append(token_hex(20))

    threads = [threading.Thread(target=draw, args=(into,)) for into in made]
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # threads change hands as often as they can
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(previous)
    every = [token for into in made for token in into]
    assert len(every) == 8 * 20 * BLOCK
    assert len(set(every)) == len(every)


# forking beside the threads other tests leave (ledger writers) is what the hook is for
@pytest.mark.filterwarnings("ignore:.*multi-threaded.*fork:DeprecationWarning")
def test_a_forked_child_hands_out_none_of_its_parents_tokens():
    tokens._ready.clear()
    token_hex(32)  # the parent holds BLOCK - 1 tokens not handed out yet
    waiting = set(tokens._ready[32])
    assert len(waiting) == BLOCK - 1
    reader, writer = os.pipe()
    child = os.fork()
    if child == 0:  # the child: report what it would hand out next, then leave at once, whatever happens
        try:
            os.close(reader)
            os.write(writer, "".join(token_hex(32) for _ in range(BLOCK)).encode())
        finally:
            os._exit(0)
    os.close(writer)
    with os.fdopen(reader, "rb") as pipe:
        text = pipe.read().decode()
    os.waitpid(child, 0)
    from_child = {text[start : start + 64] for start in range(0, len(text), 64)}
    assert len(from_child) == BLOCK
    assert not from_child & waiting
    assert set(tokens._ready[32]) == waiting  # the parent's are still its own
