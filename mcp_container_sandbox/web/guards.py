"""The HTTP side's guards, in front of every route: a bound on request bodies (413), and the MCP
endpoint's DNS-rebinding protection (a foreign Origin 403, an unknown Host 421)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from fastmcp.server.http import HostOriginGuardMiddleware
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..settings import ServerSettings


class RequestSizeLimit:
    """Answer 413 to request bodies over ``limit`` bytes, declared or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._reject(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Any:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        await JSONResponse(
            {"error": f"Request body over {self.limit:,} bytes. Send smaller requests (long commands belong in files)."},
            status_code=413,
        )(scope, receive, send)


class _TooLarge(Exception):
    pass


class McpOriginGuard:
    """DNS-rebinding protection on the MCP endpoint (``/`` and ``/mcp``), as the MCP spec asks:
    a foreign ``Origin`` gets 403 and an unknown ``Host`` 421. /health and /files stay open to
    any Host, for platform health checks and shared links."""

    def __init__(self, app: ASGIApp, mcp_path: str, hosts: list[str], origins: list[str]) -> None:
        self.app = app
        self.mcp_path = mcp_path
        self.guarded = HostOriginGuardMiddleware(app, allowed_hosts=hosts, allowed_origins=origins, mode="strict")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_mcp_request(scope, self.mcp_path):
            await self.guarded(scope, receive, send)
        else:
            await self.app(scope, receive, send)


def is_mcp_request(scope: Scope, mcp_path: str) -> bool:
    """A request for the MCP endpoint: mcp_path, or / for anything but a plain GET of the page."""
    path = scope.get("path", "")
    if path.rstrip("/") == mcp_path:
        return True
    if path != "/":
        return False
    if scope.get("method") != "GET":
        return True
    accept = dict(scope.get("headers") or []).get(b"accept", b"")
    return b"text/event-stream" in accept


def allowed_hosts(settings: ServerSettings) -> list[str]:
    """Host headers the MCP endpoint accepts: loopback names, BASE_URL's host, ALLOWED_HOSTS."""
    hosts = ["127.0.0.1", "localhost", "::1", *settings.allowed_hosts]
    if settings.base_url:
        hosts.append(urlsplit(settings.base_url).hostname or "")
    if settings.host not in ("0.0.0.0", "::", ""):
        hosts.append(settings.host)
    return [h for h in hosts if h]


def allowed_origins(settings: ServerSettings) -> list[str]:
    origins = list(settings.allowed_origins)
    if settings.base_url:
        origins.append(settings.base_url)
    return origins
