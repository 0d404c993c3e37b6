"""The backend interface and the registry that finds backends by name.

A backend turns a :class:`~slixmpp_http_upload.slot.SlotRequest` into a
:class:`~slixmpp_http_upload.slot.Slot`. It is made by a *factory*:
``factory(settings, options, path) -> Backend``, where ``settings`` are the
``[http_upload]`` values, ``options`` the backend's own raw table (``[http_upload.<name>]``)
and ``path`` the key path to name in a :class:`~slixmpp_http_upload.options.ConfigError`.
A factory checks its options and does no I/O (the ``local`` backend's prepares its root and
key, so that a root it cannot write is a configuration error); ``create_slot`` may.

Factories are found, in this order, among those given to :func:`register_backend` (the built-in
``s3`` and ``local`` are from the start, so a source checkout or a copy vendored into a bot finds
them without installed metadata) and those published in the entry-point group ``slixmpp_http_upload.backends``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol

from .local import LocalBackend
from .options import ConfigError
from .s3 import S3Backend
from .slot import Slot, SlotRequest

if TYPE_CHECKING:
    from .config import UploadSettings

ENTRY_POINT_GROUP = "slixmpp_http_upload.backends"


class Backend(Protocol):
    """Makes upload slots. Raise any exception to refuse: the requester gets
    ``wait/internal-server-error`` and the exception is logged.

    A backend may also have ``async def delete(self, keys: Sequence[str]) -> Iterable[str]``:
    delete the objects named by ``keys`` (each a :attr:`Slot.key <slixmpp_http_upload.slot.Slot.key>`
    it made, or the GET URL when it set none) and return those that are gone, absent ones
    included. Expiry (``expire_after``, ``ephemeral``) and ``purge`` need it; without it ``serve``
    refuses to start when files expire and ``purge`` says it cannot delete.

    And it may have ``def slot_now(self, request: SlotRequest) -> Slot | None``: the slot made
    without waiting, or None when it has to wait first (for credentials, say). The plugin then
    answers in the call that read the request, without a task switch; it awaits
    ``create_slot`` when there is no ``slot_now`` or it returns None. Both make the same slots."""

    async def create_slot(self, request: SlotRequest) -> Slot: ...


BackendFactory = Callable[["UploadSettings", Mapping[str, Any], str], Backend]

_registered: dict[str, BackendFactory] = {"s3": S3Backend.from_settings, "local": LocalBackend.from_settings}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Make ``factory`` available as ``backend = "<name>"``; a later call replaces it."""
    _registered[name] = factory


def known_backends() -> list[str]:
    return sorted({*_registered, *(point.name for point in entry_points(group=ENTRY_POINT_GROUP))})


def find_backend(name: str, path: str = "http_upload") -> BackendFactory:
    """The factory registered as ``name``, or a ConfigError (on ``<path>.backend``) listing
    the known names."""
    if name in _registered:
        return _registered[name]
    for point in entry_points(group=ENTRY_POINT_GROUP, name=name):
        return point.load()
    raise ConfigError(
        f"{path}.backend", f"unknown backend {name!r} (known: {', '.join(known_backends()) or 'none'})"
    )


def create_backend(settings: UploadSettings, path: str = "http_upload") -> Backend:
    """Build the backend that ``settings`` name, from its own options table; ``path`` is
    where ``settings`` came from (the plugin passes its own name)."""
    factory = find_backend(settings.backend, path)
    return factory(settings, settings.backend_options, f"{path}.{settings.backend}")
