"""The package without its installed metadata (a source checkout, a copy vendored into a bot),
and its license."""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

import slixmpp_http_upload

REPO = Path(__file__).resolve().parent.parent
PACKAGE = Path(slixmpp_http_upload.__file__).parent
DIST = "slixmpp-http-upload"


@pytest.fixture(scope="module")
def vendored(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """A Python command that sees a copy of the package beside its dependencies, and no
    installed metadata of the package (``-S``: no site-packages but ours; the copy of
    site-packages leaves out the package's own distribution and editable finder)."""
    root = tmp_path_factory.mktemp("vendored")
    shutil.copytree(PACKAGE, root / "app" / PACKAGE.name, ignore=shutil.ignore_patterns("__pycache__"))
    site = root / "site"
    site.mkdir()
    for entry in Path(sysconfig.get_paths()["purelib"]).iterdir():
        if not entry.name.startswith(("slixmpp_http_upload", "__editable__")):
            (site / entry.name).symlink_to(entry)
    return [sys.executable, "-S", "-c", f"import sys; sys.path[:0] = [{str(root / 'app')!r}, {str(site)!r}]; " + "{}"]


def run(command: list[str], code: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*command[:-1], command[-1].format(code)], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )


def run_cli(command: list[str], tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run(command, f"from slixmpp_http_upload.cli import main; sys.exit(main({list(args)!r}))", tmp_path)


def test_the_copy_really_has_no_metadata(vendored: list[str], tmp_path: Path) -> None:
    where = run(vendored, "import slixmpp_http_upload as p; print(p.__file__)", tmp_path)
    assert where.returncode == 0 and "/app/slixmpp_http_upload/" in where.stdout, where.stderr
    metadata = run(vendored, f"import importlib.metadata as m; m.version({DIST!r})", tmp_path)
    assert "PackageNotFoundError" in metadata.stderr


def test_help_and_version_without_metadata(vendored: list[str], tmp_path: Path) -> None:
    version = run_cli(vendored, tmp_path, "--version")
    assert (version.returncode, version.stdout, version.stderr) == (0, f"{DIST} {slixmpp_http_upload.__version__}\n", "")
    usage = run_cli(vendored, tmp_path, "--help")
    assert usage.returncode == 0 and usage.stdout.startswith(f"usage: {DIST}"), usage.stderr


def test_the_built_in_backends_are_found_without_metadata(vendored: list[str], tmp_path: Path) -> None:
    known = run(vendored, "from slixmpp_http_upload.backends import known_backends; print(known_backends())", tmp_path)
    assert known.stdout == "['local', 's3']\n", known.stderr
    config = tmp_path / "config.toml"
    config.write_text(
        '[component]\ndomains = ["example.org"]\n[http_upload.s3]\n'
        'bucket_url = "https://s3.eu-west-1.amazonaws.com/b"\nregion = "eu-west-1"\n'
        'access_key_id = "AKIDEXAMPLE"\nsecret_access_key = "secret"\n'
    )
    urls = run_cli(vendored, tmp_path, "urls", "-c", str(config), "example.org", "a.txt", "3", "", "60")
    assert urls.returncode == 0, urls.stderr
    assert urls.stdout.startswith("PutURL: https://s3.eu-west-1.amazonaws.com/b/")


def test_mit_license_file_metadata_and_readme() -> None:
    assert (REPO / "LICENSE").read_text().startswith("MIT License\n")
    assert importlib.metadata.metadata(DIST)["License"] == "MIT"
    assert importlib.metadata.version(DIST) == slixmpp_http_upload.__version__
    assert "MIT license" in (REPO / "README.rst").read_text()
