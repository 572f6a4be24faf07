"""The preview tests' web app (tests/support/apps/preview-app.c), built static and started in a sandbox
through the MCP tools."""

from __future__ import annotations

import base64
from pathlib import Path

from fastmcp import Client
from support.sweep import build_static

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "tests" / "support" / "apps" / "preview-app.c"
BINARY = ROOT / ".pytest_cache" / "preview-app"


def preview_app_binary() -> bytes:
    return build_static(SOURCE, BINARY)


async def start_app(client: Client, container_id: str, app: bytes, *listen: str) -> None:
    """The test app in the sandbox, listening on each 'port' or 'port address'."""
    await client.call_tool("write_file", {"container_id": container_id, "path": "/root/preview-app",
                                          "content": base64.b64encode(app).decode(), "encoding": "base64", "mode": "755"})
    result = (await client.call_tool("execute_command", {"container_id": container_id,
                                                          "command": start_and_wait(*listen)})).structured_content
    assert result["stdout"] == "up\n", result


def start_and_wait(*listen: str) -> str:
    """A shell command that starts the app (at /root/preview-app) on each 'port' or 'port address' and
    prints "up" once every port answers a request (polled; up to 10 s)."""
    started = " ".join(f"/root/preview-app {where} >/dev/null 2>&1 &" for where in listen)
    ready = " && ".join(f"/root/preview-app fetch {where.split()[0]} /hello 1 >/dev/null 2>&1" for where in listen)
    return f"{started} i=0; until {ready}; do i=$((i+1)); [ $i -ge 200 ] && break; sleep 0.05; done; {ready} && echo up"
