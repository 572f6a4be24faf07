"""The plain HTTP routes beside the MCP endpoint: ``/`` (server info for a browser, else MCP),
``/health`` and ``/files/{file_id}`` (downloads of file links)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import anyio
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ..sandbox import FILE_ID_RE, FileLinkNotFound, SandboxError, SandboxManager

HEALTH_SECONDS = 15  # how long /health waits for Podman before it says unavailable


class RootEndpoint:
    """``/``: server info for a plain GET, otherwise the MCP endpoint (as in the seed), behind ``guard``
    (the root's own authentication challenge, when the server has one)."""

    def __init__(self, info: dict[str, Any], guard: Callable[[ASGIApp], ASGIApp] = lambda app: app) -> None:
        self.info = info
        self._to_mcp = guard(self._forward)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        if request.method == "GET" and "text/event-stream" not in request.headers.get("accept", ""):
            await JSONResponse(self.info)(scope, receive, send)
            return
        await self._to_mcp(scope, receive, send)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        app = scope.get("app")
        mcp_path = getattr(getattr(app, "state", None), "path", None)
        if app is None or not mcp_path or mcp_path == "/":
            await JSONResponse({"error": "The MCP endpoint is not mounted here."}, status_code=404)(scope, receive, send)
            return
        await app.router(dict(scope, path=mcp_path, raw_path=mcp_path.encode()), receive, send)


class Routes:
    """``/health`` and ``/files/{file_id}`` over the sandbox facade."""

    def __init__(self, sandboxes: SandboxManager) -> None:
        self.sandboxes = sandboxes

    async def health(self, request: Request) -> Response:
        try:
            with anyio.fail_after(HEALTH_SECONDS):
                details = await self.sandboxes.health()
        except (SandboxError, TimeoutError) as exc:
            return JSONResponse({"status": "unavailable", "error": str(exc) or f"Podman did not answer in {HEALTH_SECONDS} s"},
                                status_code=503)
        return JSONResponse({"status": "ok", **details})

    async def download_file(self, request: Request) -> Response:
        file_id = request.path_params["file_id"]
        if not FILE_ID_RE.match(file_id):
            return JSONResponse({"error": "Unknown file link. File links come from the get_file_url tool."}, status_code=404)
        try:
            download = await self.sandboxes.open_file(file_id)
        except FileLinkNotFound as exc:
            return JSONResponse({"error": f"{exc} File links stop working when their sandbox is destroyed."}, status_code=404)
        except SandboxError as exc:
            return JSONResponse({"error": str(exc)}, status_code=503)
        headers = {
            "Content-Length": str(download.size),
            "Content-Disposition": content_disposition(download.filename),
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "no-store",
        }
        if request.method == "HEAD":
            await download.aclose()
            return Response(status_code=200, headers=headers, media_type=download.link.content_type)
        return StreamingResponse(download.chunks(), headers=headers, media_type=download.link.content_type)


def content_disposition(filename: str) -> str:
    fallback = re.sub(r'[^A-Za-z0-9._-]', "_", filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
