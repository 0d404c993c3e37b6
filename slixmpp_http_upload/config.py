"""The configuration model: every option and its default, in one place.

A TOML file has the tables ``[component]`` (used by ``serve``), ``[http_upload]`` (the
MongooseIM ``mod_http_upload`` options, plus the backend's own table ``[http_upload.<backend>]``)
and ``[metrics]``. The plugin's config dict takes the ``[http_upload]`` keys, checked by the same
:func:`parse_upload_settings`.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from slixmpp import JID
from slixmpp.jid import InvalidJID

from .options import (
    REQUIRED,
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
from .sigv4 import MAX_EXPIRES

CONFIG_ENV = "SLIXMPP_HTTP_UPLOAD_CONFIG"
HOST_PLACEHOLDER = "@HOST@"
DEFAULT_BACKEND = "s3"
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


def _max_file_size(value: Any) -> int | None:
    if value == "infinity":
        return None
    try:
        return integer(1)(value)
    except ValueError:
        raise ValueError('must be a positive integer (bytes) or "infinity"') from None


def _host_template(value: Any) -> str:
    template = text(value)
    if template.count(HOST_PLACEHOLDER) > 1:
        raise ValueError(f"must contain {HOST_PLACEHOLDER} at most once")
    try:
        domain_name(template.replace(HOST_PLACEHOLDER, "example.org"))
    except ValueError:
        raise ValueError(f"must be a domain name, where {HOST_PLACEHOLDER} stands for each served domain") from None
    return HOST_PLACEHOLDER.join(part.lower() for part in template.split(HOST_PLACEHOLDER))


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
        entries.add(jid.bare)
    return frozenset(entries)


def _table(value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"must be a table, not a {type(value).__name__}")
    return value


UPLOAD_OPTIONS = (
    Option("host", f"upload.{HOST_PLACEHOLDER}", _host_template),
    Option("backend", DEFAULT_BACKEND, text),
    Option("expiration_time", 60, integer(1, MAX_EXPIRES)),
    Option("token_bytes", 32, integer(16, 256)),
    Option("max_file_size", 10485760, _max_file_size),
    Option("iqdisc", IqDisc("one_queue"), _iqdisc),
    Option("queue_size", 1000, integer(1, 1_000_000)),
    Option("legacy_namespaces", True, boolean),
    Option("allow", frozenset(), _jid_or_domain_list),
    Option("deny", frozenset(), _jid_or_domain_list),
)
"""The ``[http_upload]`` table. ``queue_size`` bounds the requests waiting in each queue;
``allow``/``deny`` add or remove bare JIDs and domains to or from the default (the served
domain's own users); ``legacy_namespaces`` also serves the pre-1.0 dialects of XEP-0363."""

COMPONENT_OPTIONS = (
    Option("server", "127.0.0.1", text),
    Option("port", 5347, integer(1, 65535)),
    Option("secret", None, text, secret=True),
    Option("domains", (), domain_list),
)

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
    backend_options: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def service_jid(self, domain: str) -> str:
        """The upload service's JID for a served domain."""
        return self.host.replace(HOST_PLACEHOLDER, domain)

    def served_domain(self, service_jid: str) -> str | None:
        """The served domain that ``service_jid`` was made from, if the host template fits it."""
        prefix, placeholder, suffix = self.host.partition(HOST_PLACEHOLDER)
        if not placeholder:
            return None
        name = str(service_jid).lower()
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
class MetricsSettings:
    host: str
    port: int | None


@dataclass(frozen=True)
class Config:
    component: ComponentSettings
    http_upload: UploadSettings
    metrics: MetricsSettings


def parse_upload_settings(raw: Mapping[str, Any], path: str = "http_upload") -> UploadSettings:
    """Check an ``[http_upload]`` table (or the plugin's config dict)."""
    if not isinstance(raw, Mapping):
        raise ConfigError(path, "must be a table")
    backend = raw.get("backend", DEFAULT_BACKEND)
    if any(option.name == backend for option in UPLOAD_OPTIONS):
        raise ConfigError(f"{path}.backend", f"cannot be {backend!r}, the name of an option")
    # secret=True: a scalar where the table belongs may well be a key; only its type is shown
    backend_option = (Option(backend, {}, _table, secret=True),) if isinstance(backend, str) and backend else ()
    values = parse_table(raw, UPLOAD_OPTIONS + backend_option, path)
    backend_options = values.pop(backend, {}) if backend_option else {}
    return UploadSettings(**values, backend_options=backend_options)


def parse_config(raw: Mapping[str, Any]) -> Config:
    """Check a whole configuration document (a parsed TOML file)."""
    tables = (Option("component", {}, _table), Option("http_upload", {}, _table), Option("metrics", {}, _table))
    document = parse_table(raw, tables)
    config = Config(
        component=ComponentSettings(**parse_table(document["component"], COMPONENT_OPTIONS, "component")),
        http_upload=parse_upload_settings(document["http_upload"]),
        metrics=MetricsSettings(**parse_table(document["metrics"], METRICS_OPTIONS, "metrics")),
    )
    if len(config.component.domains) > 1 and HOST_PLACEHOLDER not in config.http_upload.host:
        raise ConfigError(
            "http_upload.host", f"must contain {HOST_PLACEHOLDER} when component.domains lists several domains"
        )
    return config


def config_path(option: str | None) -> Path:
    """The file named by ``-c``, else by ``$SLIXMPP_HTTP_UPLOAD_CONFIG``."""
    name = option or os.environ.get(CONFIG_ENV)
    if not name:
        raise ConfigError("", f"no configuration file: pass -c PATH or set {CONFIG_ENV}")
    return Path(name)


def load_config(path: Path) -> Config:
    try:
        with path.open("rb") as file:
            raw = tomllib.load(file)
    except OSError as error:
        raise ConfigError("", f"cannot read the configuration file {str(path)!r}: {error.strerror}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError("", f"{path}: not valid TOML: {error}") from None
    return parse_config(raw)
