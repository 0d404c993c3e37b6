"""Slot tokens: random hex from the OS's CSPRNG, drawn in blocks, never handed out twice —
across block boundaries, threads, and a fork."""

from __future__ import annotations

import os
import threading

from slixmpp_http_upload import tokens


def test_tokens_are_hex_of_the_asked_length_and_all_different() -> None:
    for nbytes in (1, 16, 32, 100, 5000):
        drawn = [tokens.token_hex(nbytes) for _ in range(300)]
        assert all(len(token) == 2 * nbytes and set(token) <= set("0123456789abcdef") for token in drawn)
        if nbytes >= 16:
            assert len(set(drawn)) == len(drawn)  # across many block boundaries too


def test_threads_never_get_the_same_bytes() -> None:
    drawn: list[str] = []
    lock = threading.Lock()

    def draw() -> None:
        mine = [tokens.token_hex(32) for _ in range(2000)]
        with lock:
            drawn.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(drawn)) == len(drawn) == 8000


def test_a_forked_child_does_not_hand_out_its_parents_next_tokens() -> None:
    tokens.token_hex(32)  # a block is in use: the child inherits it
    reader, writer = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next tokens, to the parent
        os.close(reader)
        os.write(writer, "".join(tokens.token_hex(32) for _ in range(10)).encode())
        os._exit(0)
    os.close(writer)
    with os.fdopen(reader) as pipe:
        child = pipe.read()
    os.waitpid(pid, 0)
    parent = "".join(tokens.token_hex(32) for _ in range(10))
    assert len(child) == len(parent) == 640
    assert child != parent
    assert not {child[i : i + 64] for i in range(0, 640, 64)} & {parent[i : i + 64] for i in range(0, 640, 64)}
