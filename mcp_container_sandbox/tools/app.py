"""The MCP App of create_container and execute_command (the MCP Apps extension,
io.modelcontextprotocol/ui): a ``ui://`` resource, command-app.html, that a host which supports apps
shows beside the result: the sandbox, or the command and its output, followed live while it runs (the
app asks the host to call check_container), and a terminal of the person's own in the sandbox
(open_terminal, a tool for the app only). Hosts without apps get the same results as ever, and the
same tool list: the app's own tool is listed only to clients that declare the extension."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from typing import Any

from fastmcp import FastMCP
from fastmcp.apps.config import UI_EXTENSION_ID, AppConfig, ResourceCSP
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext
from fastmcp.tools import Tool

from .area import ContainerId, ToolArea, tool
from .context import tool_errors

COMMAND_APP_URI = "ui://mcp-container-sandbox/command.html"


def socket_url(url: str) -> str:
    """An http(s) URL of this server as the ws(s) URL of the same place."""
    return "ws" + url[len("http"):] if url.startswith("http") else url


def register_app(mcp: FastMCP, base_url: str) -> None:
    """The app's resource; ``base_url``: where it opens terminals and loads xterm.js from (its CSP)."""
    html = resources.files(__package__).joinpath("command-app.html").read_text()
    csp = ResourceCSP(connect_domains=[socket_url(base_url), base_url], resource_domains=[base_url])

    @mcp.resource(COMMAND_APP_URI, name="command-view", title="Sandbox command",
                  description="The sandbox or command of a create_container or execute_command result, live.",
                  app=AppConfig(prefers_border=True, csp=csp))
    def command_app() -> str:
        return html


class AppTools(ToolArea):
    """Tools the app calls (through the host); a model is never offered them."""

    @tool(title="Open a terminal (for the app)", app_only=True, read_only_hint=False, destructive_hint=False)
    def open_terminal(self, container_id: ContainerId) -> dict[str, Any]:
        """For the sandbox's MCP App: a terminal session of a person's own in the sandbox, as a WebSocket
        URL good once within 30 seconds, and where the app loads xterm.js from. Not for models."""
        with tool_errors():
            sandbox = self.sandboxes.get(container_id, self.context.tenant())
        opened = self.context.app_terminal(sandbox.tenant, sandbox.container_id)
        base = self.context.base_url()
        return {"container_id": sandbox.container_id, "url": socket_url(base + opened["socket"]),
                "assets": base + opened["assets"]}


class AppOnlyTools(Middleware):
    """Tools meant for apps only are listed to clients that declare the apps extension, no others."""

    async def on_list_tools(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Sequence[Tool]]
                            ) -> Sequence[Tool]:
        tools = await call_next(context)
        fastmcp = context.fastmcp_context
        if fastmcp is not None and fastmcp.client_supports_extension(UI_EXTENSION_ID):
            return tools
        return [tool for tool in tools if ((tool.meta or {}).get("ui") or {}).get("visibility") != ["app"]]
