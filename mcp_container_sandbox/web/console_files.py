"""The console's file browser: list a folder, download a file (through a file link, as get_file_url
makes), upload one (as write_file writes it, up to SANDBOX_WRITE_MAX_BYTES)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..sandbox import SandboxError, SandboxManager, SandboxNotFound
from .console_api import Caller, Viewer, acting

logger = logging.getLogger("mcp_sandbox.console")


class ConsoleFiles:
    def __init__(self, sandboxes: SandboxManager, caller: Caller, refused: Callable[[], Response],
                 write_max_bytes: int) -> None:
        self.sandboxes, self.caller, self.refused, self.write_max = sandboxes, caller, refused, write_max_bytes

    def routes(self, prefix: str) -> list[Route]:
        return [Route(prefix + "/api/sandboxes/{container_id}/files", self.files, methods=["GET", "PUT"]),
                Route(prefix + "/api/sandboxes/{container_id}/file-links", self.link, methods=["POST"])]

    async def files(self, request: Request) -> Response:
        caller = await acting(self.caller, self.refused, request)
        if isinstance(caller, Response):
            return caller
        container_id, path = request.path_params["container_id"], request.query_params.get("path", "/")
        try:
            if request.method == "PUT":
                return await self._upload(request, caller, container_id, path)
            entries, truncated = await self.sandboxes.list_files(container_id, path, 1, caller.tenant)
        except SandboxError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404 if isinstance(exc, SandboxNotFound) else 400)
        return JSONResponse({"path": path, "truncated": truncated, "entries": [
            {"name": e.name, "path": e.path, "type": e.type, "size_bytes": e.size_bytes, "modified_at": e.modified_at}
            for e in entries if e.path != path]})

    async def _upload(self, request: Request, caller: Viewer, container_id: str, path: str) -> Response:
        declared = request.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.write_max:
            return self._too_large(int(declared))
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > self.write_max:
                return self._too_large(len(data))
        size = await self.sandboxes.write_file(container_id, path, bytes(data), None, caller.tenant)
        logger.info("console: %s uploaded %s (%d bytes) to sandbox %s", caller.who, path, size, container_id)
        return JSONResponse({"path": path, "size_bytes": size})

    def _too_large(self, size: int) -> Response:
        return JSONResponse({"error": f"The file is {size:,} bytes or more; an upload takes up to {self.write_max:,} "
                                      "(SANDBOX_WRITE_MAX_BYTES)."}, status_code=413)

    async def link(self, request: Request) -> Response:
        """A download URL of a file (a file link: it lasts as long as the sandbox)."""
        caller = await acting(self.caller, self.refused, request)
        if isinstance(caller, Response):
            return caller
        container_id, path = request.path_params["container_id"], request.query_params.get("path", "")
        try:
            link = await self.sandboxes.create_file_link(container_id, path, caller.tenant)
        except SandboxError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404 if isinstance(exc, SandboxNotFound) else 400)
        return JSONResponse({"url": f"/files/{link.file_id}", "path": link.path, "size_bytes": link.size_bytes})
