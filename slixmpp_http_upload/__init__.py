"""XEP-0363 HTTP File Upload service for slixmpp: files on this machine (the ``local`` backend and
its HTTP server) or S3 presigned URLs.

Importing the package registers the slixmpp plugin ``http_upload_server``.
"""

__version__ = "0.1.0"
"""The one place of the version (setup.cfg reads it)."""

from slixmpp.plugins.base import register_plugin  # noqa: E402

from .access import TryLater
from .backends import Backend, register_backend
from .options import ConfigError
from .plugin import HttpUploadServer
from .slot import Slot, SlotRequest

register_plugin(HttpUploadServer)
http_upload_server = HttpUploadServer
"""For ``xmpp.register_plugin("http_upload_server", config, module="slixmpp_http_upload")``."""

__all__ = ["Backend", "ConfigError", "HttpUploadServer", "Slot", "SlotRequest", "TryLater", "register_backend"]
