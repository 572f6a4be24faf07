"""The server, built from its settings: ``create_app(settings)`` makes the sandbox facade, the MCP
server with every tool, and the HTTP side around it. Nothing is built at import."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from fastmcp import FastMCP
from starlette.applications import Starlette
from starlette.middleware import Middleware

from . import __version__
from .auth import PreviewAuthorizer, authentication, current_tenant
from .fastmcp_private import is_stdio_transport
from .sandbox import Backend, BackgroundTasks, SandboxManager
from .settings import Settings
from .tools import AppOnlyTools, ToolContext, register_tools, tool_names
from .tools.schemas import PortableSchemas
from .tools.waits import WaitAdvisor, WaitTracking
from .web.guards import McpOriginGuard, RequestSizeLimit, allowed_hosts, allowed_origins
from .web.console import Console, ConsoleRouter
from .web.preview import PreviewProxy, PreviewRouter
from .web.routes import RootEndpoint, Routes
from .web.stdio_side import StdioSideServer

SERVER_NAME = "mcp-container-sandbox"
MCP_PATH = "/mcp"
MAX_REQUEST_BYTES = 8 * 1024 * 1024

logger = logging.getLogger("mcp_sandbox.server")

INSTRUCTIONS = (
    "Isolated Linux sandboxes. Call create_container, then execute_command with its container_id. "
    "A command still running after a few seconds returns status 'running' and a command_id: follow it "
    "with check_container(container_id, command_id, wait_seconds=...) as its message says, which returns as "
    "soon as it ends. "
    "Use write_file for file contents (no shell quoting), read_file and list_files to look at files. "
    "Programs that ask for input: execute_command(keep_stdin_open=true, tty=true for a terminal), then "
    "write_stdin; send_signal(INT) interrupts one. To give the user a file, write it in the "
    "sandbox and call get_file_url. "
    "Sandboxes are destroyed automatically two hours after creation; destroy_container frees one sooner. "
    "snapshot_container keeps a sandbox's files (not its processes); create_container(snapshot_id=...) "
    "continues from them, and create_container(snapshot_on_expiry=true) takes one when the sandbox expires."
)


def server_info() -> dict[str, Any]:
    return {
        "name": SERVER_NAME,
        "version": __version__,
        "mcp_endpoint": "/",
        "mcp_endpoints": ["/", MCP_PATH],
        "transport": "streamable-http",
        "tools": tool_names(),
        "health": "/health",
    }


@dataclass
class App:
    """One server: its settings, the sandbox facade, the MCP server, and the HTTP side's parts."""

    settings: Settings
    sandboxes: SandboxManager
    mcp: FastMCP
    preview: PreviewProxy
    side_server: StdioSideServer
    console: Console

    def http_app(self) -> Starlette:
        """The ASGI app for Streamable HTTP: MCP at / and /mcp, the routes, preview URLs, the guards."""
        server = self.settings.server
        return self.mcp.http_app(path=MCP_PATH, middleware=[
            Middleware(PreviewRouter, proxy=self.preview),  # the apps sandboxes serve: before the MCP endpoint's guards
            Middleware(ConsoleRouter, console=self.console),
            Middleware(McpOriginGuard, mcp_path=MCP_PATH, hosts=allowed_hosts(server), origins=allowed_origins(server)),
            Middleware(RequestSizeLimit, limit=MAX_REQUEST_BYTES),
        ])


def lifespan_of(sandboxes: SandboxManager, preview: PreviewProxy, side_server: StdioSideServer) -> Any:
    """What the server starts and stops with MCP: the sandbox facade, the preview proxy's idle
    connections, and (over stdio) the side server for file and preview URLs."""

    @asynccontextmanager
    async def lifespan(server: FastMCP) -> AsyncIterator[dict[str, Any]]:
        await sandboxes.start()
        background = BackgroundTasks()
        await background.start()
        background.start_soon(preview.close_idle_forever)
        if is_stdio_transport():
            background.start_soon(side_server.serve)
        try:
            yield {}
        finally:
            # Sandboxes and the commands in them keep running for the next start.
            await background.stop()
            await preview.upstreams.close()
            await sandboxes.stop()

    return lifespan


def create_app(settings: Settings, backend: Backend | None = None) -> App:
    """The whole server for these settings; nothing starts until its lifespan is entered.
    ``backend``: where sandboxes live, Podman's unless given (tests pass a stand-in)."""
    sandboxes = SandboxManager(settings.sandbox, backend)
    authn = authentication(settings.server, settings.sandbox.state_dir)
    authenticated = settings.server.authenticated
    preview = PreviewProxy(sandboxes.open_port, sandboxes.find_port_link,
                           PreviewAuthorizer(settings.server.preview_require_auth, authn.verify),
                           settings.server.preview_domain)
    routes = Routes(sandboxes)
    side_server = StdioSideServer(settings.server.host, settings.server.port, routes, preview)
    mcp = FastMCP(SERVER_NAME, version=__version__, instructions=INSTRUCTIONS,
                  lifespan=lifespan_of(sandboxes, preview, side_server), auth=authn.provider,
                  strict_input_validation=True)  # no JSON true taken as 1 second, no 0 as false
    mcp.add_middleware(PortableSchemas())  # schemas Gemini's, OpenAI's and LangChain's converters take whole
    waits = WaitAdvisor()  # how long each session is told to wait for a running command
    mcp.add_middleware(WaitTracking(waits))
    mcp.add_middleware(AppOnlyTools())  # the MCP App's own tool, for hosts that show apps only
    console = Console(sandboxes, authn.verify if authenticated else None, allowed_hosts(settings.server),
                      allowed_origins(settings.server), settings.sandbox.output_limit_bytes,
                      settings.sandbox.write_max_bytes, settings.server.console_admin_tokens, authn.console_sign_in)
    register_tools(mcp, ToolContext(sandboxes, settings.server, settings.sandbox, waits,
                                    lambda: current_tenant(authenticated), lambda: side_server.error,
                                    console.app_terminal))
    mcp.custom_route("/", methods=["GET", "POST", "DELETE"])(RootEndpoint(server_info(), authn.guard_root))
    for route in authn.root_routes:  # the root MCP endpoint's protected resource metadata
        mcp.custom_route(route.path, methods=sorted(route.methods or ()))(route.endpoint)
    mcp.custom_route("/health", methods=["GET"])(routes.health)
    mcp.custom_route("/files/{file_id}", methods=["GET", "HEAD"])(routes.download_file)
    return App(settings, sandboxes, mcp, preview, side_server, console)
