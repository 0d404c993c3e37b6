"""The built-in HTTP server of the ``local`` backend and of S3 download redirects (see :mod:`.server`)."""

from .server import HttpServer, make_app

__all__ = ["HttpServer", "make_app"]
