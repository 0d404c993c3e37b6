"""``./tests/run`` itself: as a user who is not root and has no sudo, with the system packages
present, it runs the tests (root is needed only to install), in the virtualenv it is told to use.

Each case runs a copy of the script in a throw-away checkout (the packaging files beside it) as
``nobody`` when the tests run as root, else as the current user; ``PATH`` holds every command
of the system but ``sudo``; pytest is asked only for its version. The checkout's virtualenv is
one the script finds installed: made by the system's ``python3`` (this one's interpreter may sit
in a home directory that ``nobody`` cannot enter), it sees this one's packages through a
``.pth`` file, and carries the stamp of an install from these packaging files.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from browser import find_chromium
from servers import find_ejabberd, find_nginx, find_prosody

REPO = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = Path("/usr/bin/python3")
PACKAGING_FILES = ("setup.cfg", "setup.py", "pyproject.toml")
SYSTEM_PATH = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


@pytest.fixture
def checkout() -> Iterator[Path]:
    """A copy of the script and packaging files, readable by everyone; ``bin`` holds the
    system's commands without ``sudo``."""
    if None in (find_prosody(), find_ejabberd(), find_nginx(), find_chromium()):
        pytest.skip("Prosody, ejabberd, nginx and Chromium must be installed: this is the case without installing")
    root = Path(tempfile.mkdtemp(prefix="tests-run-"))
    try:
        (root / "tests").mkdir()
        shutil.copy2(REPO / "tests" / "run", root / "tests" / "run")
        for name in PACKAGING_FILES:
            if (REPO / name).exists():
                shutil.copy2(REPO / name, root / name)
        commands = root / "bin"
        commands.mkdir()
        for directory in map(Path, SYSTEM_PATH):
            for command in directory.iterdir() if directory.is_dir() else ():
                target = commands / command.name
                if command.name != "sudo" and not target.exists() and os.access(command, os.X_OK):
                    target.symlink_to(command)
        for path in (root, *root.rglob("*")):
            if not path.is_symlink():
                path.chmod(0o755)
        yield root
    finally:
        shutil.rmtree(root)


def installed_virtualenv(checkout: Path, name: str) -> None:
    """Make ``checkout/name`` a virtualenv that ``tests/run`` takes as installed (see the module
    docstring)."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip(f"{SYSTEM_PYTHON} is needed for a virtualenv that every user may run")
    venv = checkout / name
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", venv], check=True, timeout=60)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    Path(site, "parent-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    stamp = [subprocess.run([python, "-V"], check=True, capture_output=True, text=True).stdout.strip()]
    for file in PACKAGING_FILES:  # what tests/run writes after an install (sha256sum's lines)
        if (checkout / file).exists():
            stamp.append(f"{hashlib.sha256((checkout / file).read_bytes()).hexdigest()}  {file}")
    (venv / ".tests-run-installed").write_text("\n".join(stamp) + "\n")
    for path in (venv, *venv.rglob("*")):
        if not path.is_symlink():
            path.chmod(0o755)


def run_as_unprivileged(checkout: Path, **env: str) -> subprocess.CompletedProcess[str]:
    as_nobody = {"user": "nobody", "group": "nogroup", "extra_groups": []} if os.geteuid() == 0 else {}
    return subprocess.run(
        [str(checkout / "tests" / "run"), "--version"],
        cwd=checkout,
        env={"PATH": str(checkout / "bin"), "HOME": str(checkout), "LANG": "C.UTF-8", **env},
        capture_output=True,
        text=True,
        timeout=120,
        **as_nobody,
    )


def test_no_sudo_needed_when_nothing_is_missing(checkout: Path) -> None:
    installed_virtualenv(checkout, ".venv")
    result = run_as_unprivileged(checkout)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pytest "), result.stdout
    assert "installing" not in result.stderr


def test_the_virtualenv_named_by_tests_run_venv(checkout: Path) -> None:
    installed_virtualenv(checkout, "elsewhere")
    result = run_as_unprivileged(checkout, TESTS_RUN_VENV="elsewhere")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("pytest ") and not (checkout / ".venv").exists()
