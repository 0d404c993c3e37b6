"""The configuration model: every option and its default, in one place.

A TOML file has the tables ``[component]`` (used by ``serve``), ``[http_upload]`` (the
MongooseIM ``mod_http_upload`` options, plus the backend's own table ``[http_upload.<backend>]``),
``[http]`` (the built-in HTTP server of the ``local`` backend and of S3 download redirects) and
``[metrics]``. The plugin's config dict takes the ``[http_upload]`` keys, checked by the same
:func:`parse_upload_settings`.
Relative paths in the file are relative to the file's folder.
"""

from __future__ import annotations

import ipaddress
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slixmpp import JID
from slixmpp.jid import InvalidJID

from .baseurl import parse_base_url
from .domains import normalise_domain, service_jid_problem
from .ledger import DEFAULT_LEDGER
from .limits import DAY, RateLimit
from .options import (
    REQUIRED,
    Check,
    ConfigError,
    Option,
    boolean,
    domain_list,
    domain_name,
    integer,
    one_of,
    parse_table,
    text,
)
from .purposes import DEFAULT_PURPOSE, PurposeRules, purpose_list, purpose_rules
from .sigv4 import MAX_EXPIRES

CONFIG_ENV = "SLIXMPP_HTTP_UPLOAD_CONFIG"
HOST_PLACEHOLDER = "@HOST@"
DEFAULT_BIND = "127.0.0.1"
DEFAULT_HTTP_PORT = 8080
DEFAULT_PUBLIC_URL = f"http://{DEFAULT_BIND}:{DEFAULT_HTTP_PORT}"
IQDISC_TYPES = ("no_queue", "one_queue", "parallel", "queues")


@dataclass(frozen=True)
class IqDisc:
    """How slot requests are scheduled: ``type`` is one of :data:`IQDISC_TYPES`."""

    type: str
    workers: int = 1


def _iqdisc(value: Any) -> IqDisc:
    if isinstance(value, str):
        value = {"type": value}
    if not isinstance(value, Mapping):
        raise ValueError(f"must be one of {', '.join(IQDISC_TYPES)}, or {{type = \"queues\", workers = N}}")
    fields = parse_table(
        value, (Option("type", REQUIRED, one_of(*IQDISC_TYPES)), Option("workers", None, integer(1, 1024)))
    )
    if fields["type"] == "queues" and fields["workers"] is None:
        raise ConfigError("workers", "is required when type is 'queues'")
    if fields["type"] != "queues" and fields["workers"] is not None:
        raise ConfigError("workers", "is only for type 'queues'")
    return IqDisc(fields["type"], fields["workers"] or 1)


def _at_most(unit: str) -> Check:
    """A positive integer of ``unit``, or "infinity" (None: no limit)."""

    def check(value: Any) -> int | None:
        if value == "infinity":
            return None
        try:
            return integer(1)(value)
        except ValueError:
            raise ValueError(f'must be a positive integer ({unit}) or "infinity"') from None

    return check


def _rate_limit(value: Any) -> RateLimit:
    fields = parse_table(
        _table(value), (Option("slots", REQUIRED, integer(1)), Option("seconds", REQUIRED, integer(1, DAY)))
    )
    return RateLimit(**fields)


def _host_template(value: Any) -> str:
    template = text(value)
    if template.count(HOST_PLACEHOLDER) > 1:
        raise ValueError(f"must contain {HOST_PLACEHOLDER} at most once")
    try:
        domain_name(template.replace(HOST_PLACEHOLDER, "example.org"))
    except ValueError:
        raise ValueError(f"must be a domain name, where {HOST_PLACEHOLDER} stands for each served domain") from None
    return HOST_PLACEHOLDER.join(
        ".".join(normalise_domain(label.lower()) for label in part.split(".")) for part in template.split(HOST_PLACEHOLDER)
    )


def _jid_or_domain_list(value: Any) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ValueError("must be a list of bare JIDs or domains")
    entries = set()
    for item in value:
        try:
            jid = JID(item)
        except InvalidJID:
            raise ValueError(f"{item!r} is not a bare JID or a domain") from None
        if jid.resource or not jid.domain:
            raise ValueError(f"{item!r} is not a bare JID or a domain")
        domain = normalise_domain(jid.domain)
        entries.add(f"{jid.node}@{domain}" if jid.node else domain)
    return frozenset(entries)


def _table(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a table, not a {type(value).__name__}")
    return value


UPLOAD_OPTIONS = (
    Option("host", f"upload.{HOST_PLACEHOLDER}", _host_template),
    Option("backend", None, text),  # see default_backend
    Option("expiration_time", 60, integer(1, MAX_EXPIRES)),
    Option("token_bytes", 32, integer(16, 256)),
    Option("max_file_size", 10485760, _at_most("bytes")),
    Option("iqdisc", IqDisc("one_queue"), _iqdisc),
    Option("queue_size", 1000, integer(1, 1_000_000)),
    Option("legacy_namespaces", True, boolean),
    Option("allow", frozenset(), _jid_or_domain_list),
    Option("deny", frozenset(), _jid_or_domain_list),
    Option("purposes", (DEFAULT_PURPOSE,), purpose_list),
    Option("purpose", {}, _table),
    Option("expire_after", None, _at_most("seconds")),
    Option("daily_quota", None, _at_most("bytes")),
    Option("rate_limit", None, _rate_limit),
    Option("total_quota", None, _at_most("bytes")),
    Option("global_quota", None, _at_most("bytes")),
    Option("ledger", None, text),
)
"""The ``[http_upload]`` table. ``queue_size`` bounds the requests waiting in each queue;
``allow``/``deny`` add or remove bare JIDs and domains to or from the default (the served
domain's own users); ``legacy_namespaces`` also serves the pre-1.0 dialects of XEP-0363.
``purposes``, ``purpose`` (a table per purpose, see :mod:`~slixmpp_http_upload.purposes`),
``expire_after`` and the limits (see :mod:`~slixmpp_http_upload.limits`) shape what is kept and
for how long; ``ledger`` is the SQLite file that records every slot."""

COMPONENT_OPTIONS = (
    Option("server", "127.0.0.1", text),
    Option("port", 5347, integer(1, 65535)),
    Option("secret", None, text, secret=True),
    Option("domains", (), domain_list),
)


def cors_origins(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list) or not value or not all(isinstance(item, str) for item in value):
        raise ValueError('must be a non-empty list of origins such as "https://chat.example.org", or ["*"]')
    if "*" in value:
        if len(value) > 1:
            raise ValueError('must be ["*"] alone or a list of origins')
        return ("*",)
    origins = []
    for item in value:
        url = parse_base_url(item)
        if url.path:
            raise ValueError(f"{item!r} is not an origin (scheme://host[:port], no path)")
        origins.append(url.origin)
    return tuple(origins)


def _public_url(value: Any) -> str:
    url = parse_base_url(value)
    return url.origin + url.path


HTTP_OPTIONS = (
    Option("bind", DEFAULT_BIND, text),
    Option("port", DEFAULT_HTTP_PORT, integer(1, 65535)),
    Option("public_url", None, _public_url),
    Option("tls_cert", None, text),
    Option("tls_key", None, text),
    Option("cors_origins", ("*",), cors_origins),
    Option("max_uploads", 64, integer(1, 100_000)),
)
"""The ``[http]`` table: the built-in HTTP server (taking PUTs and serving GETs of the ``local``
backend; redirecting GETs with S3's ``downloads = "redirect"``). ``public_url`` defaults to
``http[s]://<bind>:<port>`` (none for a wildcard ``bind``); ``tls_cert``/``tls_key`` (both or
neither) make the server speak https itself; ``max_uploads`` bounds the uploads in progress."""

METRICS_OPTIONS = (
    Option("host", "127.0.0.1", text),
    Option("port", None, integer(1, 65535)),
)


@dataclass(frozen=True)
class UploadSettings:
    """The checked ``[http_upload]`` table; ``backend_options`` is the backend's raw own table."""

    host: str
    backend: str
    expiration_time: int
    token_bytes: int
    max_file_size: int | None
    iqdisc: IqDisc
    queue_size: int
    legacy_namespaces: bool
    allow: frozenset[str]
    deny: frozenset[str]
    purposes: Mapping[str, PurposeRules]
    """The served purposes and their rules, overrides applied."""
    expire_after: int | None
    daily_quota: int | None
    rate_limit: RateLimit | None
    total_quota: int | None
    global_quota: int | None
    ledger: str | None
    """The ledger file (None: kept in memory only)."""
    backend_options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    public_url: str = DEFAULT_PUBLIC_URL
    """Where the built-in HTTP server is reached (``[http] public_url``): the ``local`` backend's
    slots, and S3's GET URLs with ``downloads = "redirect"``."""
    base_dir: Path = field(default_factory=Path.cwd)
    """What relative paths of the backend's table are relative to (the configuration file's folder)."""

    def service_jid(self, domain: str) -> str:
        """The upload service's JID for a served domain."""
        return self.host.replace(HOST_PLACEHOLDER, domain)

    def served_domain(self, service_jid: str) -> str | None:
        """The served domain that ``service_jid`` was made from, if the host template fits it."""
        prefix, placeholder, suffix = self.host.partition(HOST_PLACEHOLDER)
        if not placeholder:
            return None
        name = normalise_domain(str(service_jid).lower())
        if len(name) > len(prefix) + len(suffix) and name.startswith(prefix) and name.endswith(suffix):
            return name[len(prefix) : len(name) - len(suffix)]
        return None


@dataclass(frozen=True)
class ComponentSettings:
    server: str
    port: int
    secret: str | None = field(repr=False)
    domains: tuple[str, ...]


@dataclass(frozen=True)
class HttpSettings:
    """The checked ``[http]`` table; ``tls_cert``/``tls_key`` are absolute paths or both None."""

    bind: str
    port: int
    public_url: str
    tls_cert: Path | None
    tls_key: Path | None
    cors_origins: tuple[str, ...]
    max_uploads: int


@dataclass(frozen=True)
class MetricsSettings:
    host: str
    port: int | None


@dataclass(frozen=True)
class Config:
    component: ComponentSettings
    http_upload: UploadSettings
    metrics: MetricsSettings
    http: HttpSettings


def default_backend(raw: Mapping[str, Any]) -> str:
    """``"s3"`` when the ``[http_upload]`` table has an ``s3`` table (a MongooseIM section carried
    over), else ``"local"``."""
    return "s3" if "s3" in raw else "local"


def parse_upload_settings(
    raw: Mapping[str, Any],
    path: str = "http_upload",
    *,
    public_url: str = DEFAULT_PUBLIC_URL,
    base_dir: Path | None = None,
) -> UploadSettings:
    """Check an ``[http_upload]`` table (or the plugin's config dict); ``public_url`` and
    ``base_dir`` come from the rest of the configuration (see :class:`UploadSettings`)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(path, "must be a table")
    backend = raw.get("backend") or default_backend(raw)
    if any(option.name == backend for option in UPLOAD_OPTIONS):
        raise ConfigError(f"{path}.backend", f"cannot be {backend!r}, the name of an option")
    # secret=True: a scalar where the table belongs may well be a key; only its type is shown
    backend_option = (Option(backend, {}, _table, secret=True),) if isinstance(backend, str) and backend else ()
    values = parse_table(raw, UPLOAD_OPTIONS + backend_option, path)
    values["backend"] = values["backend"] or backend
    backend_options = values.pop(backend, {}) if backend_option else {}
    values["purposes"] = purpose_rules(values["purposes"], values.pop("purpose"), values, UPLOAD_OPTIONS, f"{path}.purpose")
    if base_dir is not None:  # from a configuration file: the ledger is kept beside it by default
        values["ledger"] = str(base_dir / (values["ledger"] or DEFAULT_LEDGER))
    return UploadSettings(
        **values, backend_options=backend_options, public_url=public_url, base_dir=base_dir or Path.cwd()
    )


def _is_wildcard(bind: str) -> bool:
    """Whether ``bind`` is 0.0.0.0 or ``::`` (every address of the machine, none to give out)."""
    try:
        return ipaddress.ip_address(bind).is_unspecified
    except ValueError:  # a host name
        return False


def parse_http_settings(raw: Mapping[str, Any], base_dir: Path) -> HttpSettings:
    """Check an ``[http]`` table; relative TLS paths are taken from ``base_dir``."""
    values = parse_table(raw, HTTP_OPTIONS, "http")
    if (values["tls_cert"] is None) != (values["tls_key"] is None):
        missing = "tls_key" if values["tls_key"] is None else "tls_cert"
        raise ConfigError(f"http.{missing}", "is required when the other of tls_cert/tls_key is set")
    for name in ("tls_cert", "tls_key"):
        if values[name] is not None:
            values[name] = base_dir / values[name]
    if values["public_url"] is None:
        if _is_wildcard(values["bind"]):
            raise ConfigError(
                "http.public_url", "is required when http.bind is a wildcard address (clients get this URL)"
            )
        scheme = "https" if values["tls_cert"] else "http"
        host = f"[{values['bind']}]" if ":" in values["bind"] else values["bind"]
        values["public_url"] = _public_url(f"{scheme}://{host}:{values['port']}")
    return HttpSettings(**values)


def parse_config(raw: Mapping[str, Any], base_dir: Path | None = None) -> Config:
    """Check a whole configuration document (a parsed TOML file); relative paths are taken
    from ``base_dir`` (the file's folder; by default the working directory)."""
    base_dir = base_dir or Path.cwd()
    tables = (
        Option("component", {}, _table),
        Option("http_upload", {}, _table),
        Option("http", {}, _table),
        Option("metrics", {}, _table),
    )
    document = parse_table(raw, tables)
    http = parse_http_settings(document["http"], base_dir)
    config = Config(
        component=ComponentSettings(**parse_table(document["component"], COMPONENT_OPTIONS, "component")),
        http_upload=parse_upload_settings(document["http_upload"], public_url=http.public_url, base_dir=base_dir),
        metrics=MetricsSettings(**parse_table(document["metrics"], METRICS_OPTIONS, "metrics")),
        http=http,
    )
    if len(config.component.domains) > 1 and HOST_PLACEHOLDER not in config.http_upload.host:
        raise ConfigError(
            "http_upload.host", f"must contain {HOST_PLACEHOLDER} when component.domains lists several domains"
        )
    for domain in config.component.domains:
        service_jid = config.http_upload.service_jid(domain)
        if problem := service_jid_problem(service_jid):
            raise ConfigError("component.domains", f"{domain!r} makes the service JID {service_jid!r} (http_upload.host): {problem}")
    return config


def config_path(option: str | None) -> Path:
    """The file named by ``-c``, else by ``$SLIXMPP_HTTP_UPLOAD_CONFIG``."""
    name = option or os.environ.get(CONFIG_ENV)
    if not name:
        raise ConfigError("", f"no configuration file: pass -c PATH or set {CONFIG_ENV}")
    return Path(name)


def load_config(path: Path) -> Config:
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError("", f"cannot read the configuration file {str(path)!r}: {error.strerror}") from None
    try:
        document = data.decode("utf-8")
    except UnicodeDecodeError as error:  # TOML is UTF-8; the bytes themselves are not shown
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError("", f"{path}: line {line} is not UTF-8 text (TOML files are UTF-8)") from None
    try:
        raw = tomllib.loads(document)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("", f"{path}: not valid TOML: {error}") from None
    return parse_config(raw, path.resolve().parent)
