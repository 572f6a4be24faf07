"""The MCP App of create_container and execute_command (the MCP Apps extension,
io.modelcontextprotocol/ui): a ``ui://`` resource, command-app.html, that a host which supports apps
shows beside the result: the sandbox, or the command and its output, followed live while it runs (the
app asks the host to call check_container). Hosts without apps get the same results as ever."""

from __future__ import annotations

from importlib import resources

from fastmcp import FastMCP
from fastmcp.apps.config import AppConfig

COMMAND_APP_URI = "ui://mcp-container-sandbox/command.html"


def register_app(mcp: FastMCP) -> None:
    html = resources.files(__package__).joinpath("command-app.html").read_text()

    @mcp.resource(COMMAND_APP_URI, name="command-view", title="Sandbox command",
                  description="The sandbox or command of a create_container or execute_command result, live.",
                  app=AppConfig(prefers_border=True))
    def command_app() -> str:
        return html
