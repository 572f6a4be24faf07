"""Other ways in: ``fastmcp run server.py`` over stdio (with file URLs served beside it), and
MCP Inspector's CLI (from npm) against ``python server.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from conftest import (
    NAMESPACES,
    ROOT,
    RUN_ID,
    ServerProcess,
    free_port,
    sandboxes_left,
    structured,
)
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from mcp_container_sandbox.tools import tool_names

pytestmark = pytest.mark.anyio

INSPECTOR = ROOT / "tests" / "e2e" / "node_modules" / ".bin" / "mcp-inspector"


async def test_stdio_transport_lists_the_tools_runs_commands_and_serves_file_urls() -> None:
    port = free_port()
    namespace = f"{RUN_ID}-stdio"
    NAMESPACES.add(namespace)
    env = {**os.environ, "PORT": str(port), "SANDBOX_NAMESPACE": namespace, "SANDBOX_POOL_SIZE": "0"}
    fastmcp_cli = str(Path(sys.executable).parent / "fastmcp")
    transport = StdioTransport(command=fastmcp_cli, args=["run", str(ROOT / "server.py")], env=env, cwd=str(ROOT))
    async with Client(transport) as client:
        listed = [tool.name for tool in await client.list_tools()]
        assert listed == tool_names() and len(listed) == 19
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        result = structured(await client.call_tool(
            "execute_command", {"container_id": container_id, "command": "printf 'from stdio' > /tmp/out.txt; date"}
        ))
        assert result["exit_code"] == 0
        link = structured(await client.call_tool("get_file_url", {"container_id": container_id, "path": "/tmp/out.txt"}))
        assert link["url"].startswith(f"http://127.0.0.1:{port}/files/")
        response = httpx.get(link["url"])
        assert response.status_code == 200 and response.content == b"from stdio"
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["status"] == "ok"
        await client.call_tool("destroy_container", {"container_id": container_id})
    assert sandboxes_left(namespace) == []


async def test_stdio_server_explains_when_its_file_port_is_taken(http_server: ServerProcess) -> None:
    namespace = f"{RUN_ID}-stdio-busy"
    NAMESPACES.add(namespace)
    env = {**os.environ, "PORT": str(http_server.port), "SANDBOX_NAMESPACE": namespace, "SANDBOX_POOL_SIZE": "0"}
    fastmcp_cli = str(Path(sys.executable).parent / "fastmcp")
    transport = StdioTransport(command=fastmcp_cli, args=["run", str(ROOT / "server.py")], env=env, cwd=str(ROOT))
    async with Client(transport) as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        await client.call_tool("execute_command", {"container_id": container_id, "command": "echo hi > /tmp/a.txt"})
        result = await client.call_tool("get_file_url", {"container_id": container_id, "path": "/tmp/a.txt"}, raise_on_error=False)
        assert result.is_error and "Set PORT to a free port" in result.content[0].text
        await client.call_tool("destroy_container", {"container_id": container_id})


def inspector(url: str, *args: str, expect_tool_error: bool = False) -> dict:
    if not INSPECTOR.exists():
        pytest.fail("MCP Inspector is not installed: run the tests with scripts/test.sh, which installs it.")
    completed = subprocess.run(
        [str(INSPECTOR), "--cli", url, "--transport", "http", *args],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    # The CLI exits 5 when a tool answers isError.
    assert completed.returncode == (5 if expect_tool_error else 0), completed.stderr[-2000:] + completed.stdout[-2000:]
    return json.loads(completed.stdout)


@pytest.mark.slow
def test_mcp_inspector_cli_lists_schemas_and_runs_the_date_example(http_server: ServerProcess) -> None:
    url = http_server.url + "/"
    tools = {tool["name"]: tool for tool in inspector(url, "--method", "tools/list")["tools"]}
    assert sorted(tools) == sorted(tool_names())
    timeout = tools["execute_command"]["inputSchema"]["properties"]["timeout_seconds"]
    assert (timeout["minimum"], timeout["default"]) == (1, 600)
    assert tools["destroy_container"]["annotations"]["destructiveHint"] is True
    # Every parameter of every tool is typed and described, with bounds where they apply.
    for tool in tools.values():
        assert tool["description"], tool["name"]
        for name, schema in tool["inputSchema"].get("properties", {}).items():
            assert schema.get("description"), f"{tool['name']}.{name} has no description"
    wait = tools["check_container"]["inputSchema"]["properties"]["wait_seconds"]
    assert (wait["minimum"], wait["maximum"]) == (0, 50)
    assert tools["write_file"]["inputSchema"]["properties"]["encoding"]["pattern"] == "^(text|base64)$"
    assert "wait_seconds" in tools["execute_command"]["description"]  # the description teaches the flow

    created = inspector(url, "--method", "tools/call", "--tool-name", "create_container")
    container_id = created["structuredContent"]["container_id"]
    ran = inspector(url, "--method", "tools/call", "--tool-name", "execute_command",
                    "--tool-arg", f"container_id={container_id}", "--tool-arg", "command=date +%Y")
    assert ran["structuredContent"]["exit_code"] == 0 and ran["structuredContent"]["stdout"].strip().isdigit()
    bad = inspector(url, "--method", "tools/call", "--tool-name", "get_file_url",
                    "--tool-arg", f"container_id={container_id}", "--tool-arg", "path=relative.txt", expect_tool_error=True)
    assert bad.get("isError") is True and "relative" in bad["content"][0]["text"]
    inspector(url, "--method", "tools/call", "--tool-name", "destroy_container", "--tool-arg", f"container_id={container_id}")
    assert sandboxes_left(http_server.env["SANDBOX_NAMESPACE"]) == []


def test_fastmcp_run_over_http_gives_file_urls_on_its_own_port(start_server) -> None:
    port = free_port()
    fastmcp_cli = str(Path(sys.executable).parent / "fastmcp")
    # PORT names another port: the URL must follow the address the client actually used.
    server = start_server(
        {"PORT": str(free_port())},
        argv=[fastmcp_cli, "run", str(ROOT / "server.py"), "--transport", "http", "--port", str(port)], port=port,
    )
    url = server.url + "/mcp"
    created = inspector(url, "--method", "tools/call", "--tool-name", "create_container")
    container_id = created["structuredContent"]["container_id"]
    inspector(url, "--method", "tools/call", "--tool-name", "execute_command",
              "--tool-arg", f"container_id={container_id}", "--tool-arg", "command=echo via-fastmcp-run > /tmp/f.txt")
    link = inspector(url, "--method", "tools/call", "--tool-name", "get_file_url",
                     "--tool-arg", f"container_id={container_id}", "--tool-arg", "path=/tmp/f.txt")["structuredContent"]
    assert link["url"].startswith(f"http://127.0.0.1:{port}/files/")
    assert httpx.get(link["url"]).content == b"via-fastmcp-run\n"
    inspector(url, "--method", "tools/call", "--tool-name", "destroy_container", "--tool-arg", f"container_id={container_id}")
