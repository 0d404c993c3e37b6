"""XEP-0363 HTTP File Upload service for slixmpp, backed by S3 presigned URLs."""

from .backends import Backend, register_backend
from .options import ConfigError
from .slot import Slot, SlotRequest

__all__ = ["Backend", "ConfigError", "Slot", "SlotRequest", "register_backend"]
