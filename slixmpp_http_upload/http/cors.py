"""CORS: the preflight of browsers' PUTs and GETs, and ``Access-Control-Allow-Origin`` on every
answer (without it a browser sees status 0, even for an error)."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

ALLOWED_METHODS = "GET, HEAD, PUT, OPTIONS"
ALLOWED_HEADERS = "Authorization, Content-Type"
PREFLIGHT_MAX_AGE = "86400"


class Cors:
    """The CORS answers for ``origins`` (``("*",)`` for any)."""

    def __init__(self, origins: Sequence[str]) -> None:
        self.any_origin = "*" in origins
        self.origins = frozenset(origins)

    def allowed_origin(self, request: web.BaseRequest) -> str | None:
        """The ``Access-Control-Allow-Origin`` value for ``request``, None when not allowed."""
        if self.any_origin:
            return "*"
        origin = request.headers.get("Origin")
        return origin if origin in self.origins else None

    async def add_headers(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """``on_response_prepare`` signal: the allowed origin on every answer."""
        origin = self.allowed_origin(request)
        if origin is not None:
            response.headers["Access-Control-Allow-Origin"] = origin
        if not self.any_origin:
            response.headers.add("Vary", "Origin")

    async def preflight(self, request: web.Request) -> web.Response:
        """``OPTIONS``: what a page of an allowed origin may send."""
        if self.allowed_origin(request) is None:
            return web.Response(status=403, text="origin not allowed\n")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Methods": ALLOWED_METHODS,
                "Access-Control-Allow-Headers": ALLOWED_HEADERS,
                "Access-Control-Max-Age": PREFLIGHT_MAX_AGE,
            },
        )
