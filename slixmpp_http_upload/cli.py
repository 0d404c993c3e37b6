"""The ``slixmpp-http-upload`` command: ``urls``, ``check``, ``setup-bucket``, ``serve``, and the
ledger's ``sweep``, ``purge`` and ``usage``.

Exit status: 0 success, 1 refused or failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import Iterator, Sequence

from slixmpp import JID
from slixmpp.jid import InvalidJID

from . import __version__
from .accounting import open_ledger
from .backends import create_backend
from .config import Config, UploadSettings, config_path, cors_origins, load_config
from .ledger import Ledger, SlotRecord
from .local import LocalBackend
from .options import ConfigError, domain_name
from .purposes import DEFAULT_PURPOSE
from .retention import CannotDelete, delete_records, deleter, sweep
from .s3 import S3Backend
from .sigv4 import MAX_EXPIRES
from .slot import BadRequest, FileTooLarge, Slot, SlotRequest, SlotsUnavailable, make_request

PROG = "slixmpp-http-upload"


class Refused(Exception):
    """The command refuses its input; ``str()`` is the message."""


def expiration_time(value: str) -> int:
    """EXPIRATION: whole seconds, 1 to :data:`MAX_EXPIRES`."""
    short_digits = value.isascii() and value.isdigit() and len(value) <= len(str(MAX_EXPIRES))
    if not short_digits or not 1 <= int(value) <= MAX_EXPIRES:
        raise Refused(f"EXPIRATION must be a positive integer no larger than {MAX_EXPIRES}, got {value!r}")
    return int(value)


def command_urls(args: argparse.Namespace, config: Config) -> int:
    """Print a slot's URLs, like ``mongooseimctl http_upload``."""
    domains = config.component.domains
    try:
        domain = domain_name(args.domain)
    except ValueError as error:
        raise Refused(f"DOMAIN {error}, got {args.domain!r}") from None
    if domains and domain not in domains:
        raise Refused(f"{args.domain!r} is not a served domain (component.domains: {', '.join(domains)})")
    expiration = expiration_time(args.expiration)
    settings = dataclasses.replace(config.http_upload, expiration_time=expiration)
    backend = create_backend(settings)
    try:
        request = make_request(
            args.filename, args.size, args.content_type, domain=domain, max_file_size=settings.max_file_size
        )
    except (BadRequest, FileTooLarge) as error:
        raise Refused(str(error)) from None
    slot = asyncio.run(backend.create_slot(request))
    if isinstance(backend, S3Backend) and backend.redirect_from is not None:
        _record_unowned(settings, request, slot)  # serve redirects only what the ledger records
    print(f"PutURL: {slot.put_url}")
    print(f"GetURL: {slot.get_url}")
    for name, value in slot.put_headers:
        print(f"Header: {name}: {value}")
    return 0


def command_check(args: argparse.Namespace, config: Config) -> int:
    """Verify the storage configuration against the live server."""
    from .check import run_check

    backend = create_backend(config.http_upload)
    if not isinstance(backend, S3Backend | LocalBackend):
        raise Refused(f"check knows the s3 and local backends only, not {config.http_upload.backend!r}")
    if args.origin and not isinstance(backend, S3Backend):
        raise Refused("--origin is for the s3 backend (the built-in HTTP server answers CORS by [http] cors_origins)")
    domain = config.component.domains[0] if config.component.domains else "localhost"
    origins = web_origins(args.origin or [])
    if isinstance(backend, S3Backend) and backend.redirect_from is not None:  # serve answers from the ledger
        with _ledger(config.http_upload) as ledger:
            return 0 if run_check(backend, domain, sys.stdout, origins, ledger) else 1
    return 0 if run_check(backend, domain, sys.stdout, origins) else 1


def web_origins(values: Sequence[str]) -> tuple[str, ...]:
    """The ``--origin`` values, each ``scheme://host[:port]`` (or ``*``)."""
    if not values:
        return ()
    try:
        return cors_origins(list(values))
    except ValueError as error:
        raise Refused(f"--origin: {error}") from None


def command_setup_bucket(args: argparse.Namespace, config: Config) -> int:
    """Set the bucket's CORS rules (and, for direct downloads, its anonymous-read policy)."""
    from .bucket_setup import setup_bucket

    backend = create_backend(config.http_upload)
    if not isinstance(backend, S3Backend):
        raise Refused(f"setup-bucket is for the s3 backend, not {config.http_upload.backend!r}")
    origins = web_origins(args.origin) or config.http.cors_origins
    return 0 if setup_bucket(backend, origins, sys.stdout, dry_run=args.dry_run) else 1


def command_serve(args: argparse.Namespace, config: Config) -> int:
    """Run the upload component(s), and the HTTP server of the local backend, until SIGINT or SIGTERM."""
    from .processes import check_processes, supervise
    from .serve import configure_logging, serve

    check_processes(config, args.processes)
    if args.processes > 1:
        configure_logging(args.verbose)
        return supervise(config, config_path(args.config).resolve(), args.processes, args.verbose)
    return serve(config, verbose=args.verbose, standby=not args.worker)


def command_sweep(args: argparse.Namespace, config: Config) -> int:
    """Delete every expired file once (for cron)."""
    settings = config.http_upload
    backend = create_backend(settings)
    _refuse_if_cannot_delete(backend)
    with _ledger(settings) as ledger:
        removed, waiting = asyncio.run(sweep(ledger, backend, time.time()))
    _print_deleted(removed)
    print(f"{len(removed)} expired files deleted ({sum(r.size for r in removed)} bytes), {waiting} left for later")
    return 0


def command_purge(args: argparse.Namespace, config: Config) -> int:
    """Delete every file of a user (JID) or of a domain (@domain)."""
    who = _who(args.who, domains=True)
    settings = config.http_upload
    backend = create_backend(settings)
    _refuse_if_cannot_delete(backend)
    with _ledger(settings) as ledger:
        records = ledger.of(who)
        removed = asyncio.run(delete_records(ledger, backend, records, forget=True))
    _print_deleted(removed)
    print(f"{len(removed)} files of {who} deleted ({sum(r.size for r in removed)} bytes)")
    if len(removed) < len(records):
        raise Refused(f"{len(records) - len(removed)} files of {who} could not be deleted; they stay in the ledger")
    return 0


def command_usage(args: argparse.Namespace, config: Config) -> int:
    """Print a user's stored files and bytes per purpose."""
    who = _who(args.who, domains=False)
    with _ledger(config.http_upload) as ledger:
        records = ledger.of(who)
    now = time.time()
    print(f"{who}: {len(records)} files, {sum(r.size for r in records)} bytes")
    for purpose in sorted({record.purpose for record in records}):
        mine = [record for record in records if record.purpose == purpose]
        expired = sum(1 for record in mine if record.expires is not None and record.expires <= now)
        line = f"  {purpose}: {len(mine)} files, {sum(r.size for r in mine)} bytes"
        print(line + (f" ({expired} expired, not yet deleted)" if expired else ""))
    return 0


def _who(value: str, *, domains: bool) -> str:
    """A bare JID (lower-cased as JIDs compare), or ``@domain`` when ``domains``."""
    try:
        if domains and value.startswith("@"):
            return "@" + domain_name(value[1:])
        jid = JID(value)
    except (InvalidJID, ValueError):
        jid = None
    if jid is None or not jid.user or jid.resource:
        wanted = "a bare JID (user@domain) or @domain" if domains else "a bare JID (user@domain)"
        raise Refused(f"{value!r} is not {wanted}")
    return jid.bare


def _print_deleted(records: Sequence[SlotRecord]) -> None:
    for record in records:
        print(f"deleted {record.key} ({record.owner}, {record.size} bytes, {record.purpose})")


@contextlib.contextmanager
def _ledger(settings: UploadSettings) -> Iterator[Ledger]:
    ledger = open_ledger(settings)
    try:
        yield ledger
    finally:
        ledger.close()


def _record_unowned(settings: UploadSettings, request: SlotRequest, slot: Slot) -> None:
    """Write a slot no user asked for to the ledger, expiring as the default purpose's files do."""
    now = time.time()
    rules = settings.purposes.get(DEFAULT_PURPOSE)
    expires = now + rules.expire_after if rules is not None and rules.expire_after is not None else None
    record = SlotRecord(slot.key or slot.get_url, "", request.domain, request.size, request.content_type,
                        DEFAULT_PURPOSE, now, expires)
    with _ledger(settings) as ledger:
        ledger.add(record)


def _refuse_if_cannot_delete(backend: object) -> None:
    try:
        deleter(backend)
    except CannotDelete as error:
        raise Refused(f"{error}: nothing was removed") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="XEP-0363 HTTP File Upload service, with its own file store or S3."
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    config_option = argparse.ArgumentParser(add_help=False)
    config_option.add_argument(
        "-c", "--config", metavar="PATH", help="TOML configuration file (default: $SLIXMPP_HTTP_UPLOAD_CONFIG)"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    urls = commands.add_parser(
        "urls", parents=[config_option], help="print a PUT and a GET URL for manual testing"
    )
    urls.add_argument("domain", metavar="DOMAIN", help="served XMPP domain")
    urls.add_argument("filename", metavar="FILENAME")
    urls.add_argument("size", metavar="SIZE", help="file size in bytes")
    urls.add_argument("content_type", metavar="CONTENT_TYPE", help='MIME type, or "" for none')
    urls.add_argument("expiration", metavar="EXPIRATION", help="seconds the PUT URL stays valid")
    urls.set_defaults(run=command_urls)

    origin_help = "a web client's origin, scheme://host[:port] (repeatable)"
    check = commands.add_parser("check", parents=[config_option], help="verify the storage configuration live")
    check.add_argument("--origin", action="append", metavar="ORIGIN", help=f"{origin_help}: check CORS for it")
    check.set_defaults(run=command_check)

    setup = commands.add_parser(
        "setup-bucket", parents=[config_option], help="set the S3 bucket's CORS rules (and read policy) for clients"
    )
    setup.add_argument(
        "--origin", action="append", metavar="ORIGIN", help=f"{origin_help}; default: [http] cors_origins"
    )
    setup.add_argument("--dry-run", action="store_true", help="print the XML/JSON it would send, change nothing")
    setup.set_defaults(run=command_setup_bucket)

    serve = commands.add_parser(
        "serve", parents=[config_option], help="run the upload component(s) (and the local backend's HTTP server)"
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log each slot and each refusal")
    serve.add_argument(
        "--processes",
        type=int,
        default=1,
        metavar="N",
        help="run N processes as the same component (for servers that balance them: ejabberd; default 1)",
    )
    serve.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # one of --processes
    serve.set_defaults(run=command_serve)

    sweep = commands.add_parser("sweep", parents=[config_option], help="delete every expired file once (for cron)")
    sweep.set_defaults(run=command_sweep)

    purge = commands.add_parser("purge", parents=[config_option], help="delete every file of a user or domain")
    purge.add_argument("who", metavar="JID|@DOMAIN", help="a bare JID, or @domain for all its users")
    purge.set_defaults(run=command_purge)

    usage = commands.add_parser("usage", parents=[config_option], help="a user's stored files per purpose")
    usage.add_argument("who", metavar="JID", help="a bare JID")
    usage.set_defaults(run=command_usage)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        config = load_config(config_path(args.config))
        return args.run(args, config)
    except ConfigError as error:
        print(f"{PROG}: configuration error: {error}", file=sys.stderr)
        return 2
    except (Refused, SlotsUnavailable) as error:
        print(f"{PROG}: {error}", file=sys.stderr)
        return 1
