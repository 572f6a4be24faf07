"""Beside a stdio server (``fastmcp run server.py``): /health, /files and /ports on $HOST:$PORT, so
that file and preview URLs work when MCP itself goes over stdin and stdout."""

from __future__ import annotations

import logging

import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from .preview import PreviewProxy, PreviewRouter
from .routes import Routes

logger = logging.getLogger("mcp_sandbox.server")


class StdioSideServer:
    def __init__(self, host: str, port: int, routes: Routes, preview: PreviewProxy) -> None:
        self.host, self.port, self.routes, self.preview = host, port, routes, preview
        # Why file and preview URLs cannot work ("" while they can): set when it cannot listen.
        self.error = ""

    async def serve(self) -> None:
        app = Starlette(routes=[
            Route("/health", self.routes.health, methods=["GET"]),
            Route("/files/{file_id}", self.routes.download_file, methods=["GET", "HEAD"]),
        ])
        config = uvicorn.Config(PreviewRouter(app, self.preview), host=self.host, port=self.port,
                                log_level="warning", lifespan="off")
        server = uvicorn.Server(config)
        server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
        try:
            await server.serve()
        except (OSError, SystemExit):  # uvicorn exits when it cannot bind
            pass
        if not server.started:
            self.error = (
                f"File URLs are unavailable: this stdio server could not listen on {self.host}:{self.port} for "
                "downloads (the port is probably taken by another server). Set PORT to a free port in the client's "
                "server configuration and restart it."
            )
            logger.warning(self.error)
