"""What every tool needs besides its arguments: the sandbox facade, the settings, who is calling,
and the address clients reach this server at. Built once by create_app (app.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from fastmcp.exceptions import ToolError
from fastmcp.server.dependencies import get_http_request

from ..fastmcp_private import progress_requested
from ..sandbox import CommandState, SandboxError, SandboxManager, SandboxSettings
from ..settings import ServerSettings
from .shaping import command_result
from .waits import WaitAdvisor
from .waits import current as current_waits


@dataclass
class ToolContext:
    sandboxes: SandboxManager
    server: ServerSettings
    sandbox_settings: SandboxSettings
    waits: WaitAdvisor
    tenant: Callable[[], str]  # the calling client's tenant (auth.current_tenant)
    # Why file and preview URLs cannot work now ("" while they can): a stdio server that could not
    # listen for downloads (web/stdio_side.py).
    links_unavailable: Callable[[], str] = lambda: ""
    # For the MCP App's terminal (tenant, container_id): the WebSocket's path with a one-time ticket
    # ("socket") and where xterm.js is served ("assets"), both paths on this server (web/console.py).
    app_terminal: Callable[[str, str], dict[str, str]] = lambda tenant, container_id: {}

    def base_url(self) -> str:
        """BASE_URL; else the address the client reached over HTTP; else http://$HOST:$PORT."""
        if self.server.base_url:
            return self.server.base_url
        try:
            request = get_http_request()
        except RuntimeError:  # stdio: the file routes listen on HOST:PORT
            request = None
        if request is not None and request.headers.get("host"):
            return f"{request.url.scheme}://{request.headers['host']}"
        host = self.server.host
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.server.port}"

    def command_result(self, container_id: str, state: CommandState, stdin_open: bool = False) -> dict[str, Any]:
        """A command's state as a tool returns it, telling a running one's caller how long to wait."""
        waits, progress = current_waits()
        return command_result(container_id, state, self.sandbox_settings.output_limit_bytes,
                              self.sandbox_settings.output_file_max_bytes, stdin_open, waits.suggested(progress))


@contextmanager
def tool_errors() -> Iterator[None]:
    """Turn infrastructure failures into MCP tool errors whose text the model acts on."""
    try:
        yield
    except SandboxError as exc:
        raise ToolError(str(exc)) from None


def progress_reporter(ctx: Any) -> Any:
    """A progress callback when the client asked for progress (sent a progress token), else None."""
    if ctx is None or not progress_requested(ctx):
        return None

    async def report(done: float, total: float, message: str) -> None:
        await ctx.report_progress(progress=round(done, 1), total=total, message=message)

    return report
