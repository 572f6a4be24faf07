"""The MCP tools, by area. Each area is a class of ``@tool`` methods over the sandbox facade
(area.py); results are shaped in shaping.py. This layer validates, translates and formats: it
holds no Podman knowledge and calls only the facade's methods."""

from __future__ import annotations

from fastmcp import FastMCP

from .app import AppOnlyTools, AppTools, register_app
from .commands import CommandTools
from .context import ToolContext
from .files import FileTools
from .ports import PortTools
from .sandboxes import SandboxTools
from .snapshots import SnapshotTools
from .volumes import VolumeTools

AREAS = (SandboxTools, CommandTools, FileTools, SnapshotTools, VolumeTools, PortTools)

__all__ = ["AREAS", "AppOnlyTools", "ToolContext", "register_tools", "tool_names"]


def register_tools(mcp: FastMCP, context: ToolContext) -> None:
    """Every tool of every area, on the server, and the MCP App some of them show, with its own tool."""
    for area in AREAS:
        area(context).register(mcp)
    register_app(mcp, context.base_url())
    AppTools(context).register(mcp)


def tool_names() -> list[str]:
    """The tools' names, in the order they are registered (what /, the docs and tests list; the app's
    own tool, listed only to hosts with apps, aside)."""
    return [name for area in AREAS for name, function in vars(area).items() if hasattr(function, "__mcp_tool__")]
