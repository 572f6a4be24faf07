"""``python server.py`` as a real process: the HTTP routes with httpx, and the tools over
Streamable HTTP through FastMCP's client and the official MCP SDK's client."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import httpx
import pytest
from conftest import ServerProcess, sandboxes_left, structured
from fastmcp import Client
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client

pytestmark = pytest.mark.anyio

MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def test_root_answers_server_info_naming_the_tools_mcp_lists(http_server: ServerProcess) -> None:
    response = httpx.get(http_server.url + "/")
    assert response.status_code == 200
    info = response.json()
    assert info["name"] == "mcp-container-sandbox"
    assert info["mcp_endpoint"] == "/"
    async with Client(http_server.url + "/mcp") as client:
        listed = [tool.name for tool in await client.list_tools()]
    assert info["tools"] == listed
    assert {"create_container", "execute_command", "check_container", "destroy_container", "get_file_url"} <= set(listed)


def test_root_hands_event_stream_requests_to_mcp(http_server: ServerProcess) -> None:
    response = httpx.get(http_server.url + "/", headers={"Accept": "text/event-stream"})
    # Without a session the MCP transport refuses the stream, exactly as /mcp does: MCP answered.
    direct = httpx.get(http_server.url + "/mcp", headers={"Accept": "text/event-stream"})
    assert response.status_code == direct.status_code == 400
    assert response.json()["error"] == direct.json()["error"] == {"code": -32600,
                                                                  "message": "Bad Request: Missing session ID"}


def test_health_reports_podman(http_server: ServerProcess) -> None:
    response = httpx.get(http_server.url + "/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok" and body["podman_version"]
    if os.geteuid() == 0 and Path("/dev/loop-control").exists():  # as on the CI machine
        assert body["sandbox_disk_bytes"] == 2 * 1024**3
    else:
        assert body["sandbox_disk_bytes"].startswith("unbounded: ")


async def test_health_shows_the_sandbox_networks_room(http_server: ServerProcess) -> None:
    async with Client(http_server.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        try:
            listed = httpx.get(http_server.url + "/health").json()["networks"]
            network = listed[0]  # the first sandbox network; later ones follow as each fills
            assert network["name"] == "mcp-sandbox" and network["ports_max"] == 1023
            ports = len(list(Path(f"/sys/class/net/{network['bridge']}/brif").iterdir()))
            assert 1 <= ports and network["ports_free"] <= 1023 - 1  # this sandbox's port, at least, is taken
        finally:
            await client.call_tool("destroy_container", {"container_id": container_id})


@pytest.mark.parametrize("file_id", ["x" * 32, "short", "..%2F..%2Fetc%2Fpasswd", "A" * 200])
def test_unknown_or_malformed_file_ids_are_404(http_server: ServerProcess, file_id: str) -> None:
    response = httpx.get(f"{http_server.url}/files/{file_id}")
    assert response.status_code == 404
    assert "root:" not in response.text


def test_garbage_json_rpc_gets_an_error_and_server_keeps_serving(http_server: ServerProcess) -> None:
    for body in [b"{not json", b"[]", b'{"jsonrpc": "2.0"}', b"\xff\xfe", json.dumps({"jsonrpc": "2.0", "id": 1, "method": "nope"}).encode()]:
        response = httpx.post(http_server.url + "/mcp", content=body, headers=MCP_HEADERS)
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)
    assert httpx.get(http_server.url + "/health").status_code == 200


def test_oversized_request_is_413(http_server: ServerProcess) -> None:
    response = httpx.post(http_server.url + "/mcp", content=b"x" * (9 * 1024 * 1024), headers=MCP_HEADERS)
    assert response.status_code == 413
    assert "bytes" in response.json()["error"]
    assert httpx.get(http_server.url + "/health").status_code == 200


@pytest.mark.parametrize("endpoint", ["/", "/mcp"])
async def test_usage_example_hello_world_file_shared_by_url(http_server: ServerProcess, endpoint: str) -> None:
    async with Client(http_server.url + endpoint) as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        await client.call_tool("execute_command", {"container_id": container_id, "command": "echo 'Hello World' > /tmp/hello.txt"})
        link = structured(await client.call_tool("get_file_url", {"container_id": container_id, "path": "/tmp/hello.txt"}))
        assert link["url"].startswith(http_server.url + "/files/")
        async with httpx.AsyncClient() as http:
            response = await http.get(link["url"])
            assert response.status_code == 200
            assert response.content == b"Hello World\n"
            assert response.headers["content-type"].startswith("text/plain")
            assert response.headers["content-length"] == "12"
            assert 'filename="hello.txt"' in response.headers["content-disposition"]
            # The file is read at download time, from inside the sandbox.
            await client.call_tool("execute_command", {"container_id": container_id, "command": "echo changed > /tmp/hello.txt"})
            assert (await http.get(link["url"])).content == b"changed\n"
            await client.call_tool("destroy_container", {"container_id": container_id})
            gone = await http.get(link["url"])
            assert gone.status_code == 404
            assert "destroyed" in gone.json()["error"]


async def test_large_binary_file_streams_intact(http_server: ServerProcess) -> None:
    async with Client(http_server.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        try:
            made = structured(await client.call_tool("execute_command", {
                "container_id": container_id,
                "command": "head -c 20000000 /dev/urandom > /tmp/blob.bin && sha256sum /tmp/blob.bin",
            }))
            expected = made["stdout"].split()[0]
            link = structured(await client.call_tool("get_file_url", {"container_id": container_id, "path": "/tmp/blob.bin"}))
            assert link["content_type"] == "application/octet-stream"
            digest = hashlib.sha256()
            async with httpx.AsyncClient() as http, http.stream("GET", link["url"]) as response:
                assert response.headers["content-length"] == "20000000"
                async for chunk in response.aiter_bytes():
                    digest.update(chunk)
            assert digest.hexdigest() == expected
        finally:
            await client.call_tool("destroy_container", {"container_id": container_id})


async def test_official_sdk_client_runs_the_date_example(http_server: ServerProcess) -> None:
    async with streamable_http_client(http_server.url + "/") as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        tools = await session.list_tools()
        assert {t.name for t in tools.tools} >= {"create_container", "execute_command"}
        created = await session.call_tool("create_container", {})
        assert not created.is_error
        container_id = created.structured_content["container_id"]
        result = await session.call_tool("execute_command", {"container_id": container_id, "command": "date +%Y"})
        assert result.structured_content["exit_code"] == 0 and result.structured_content["stdout"].strip().isdigit()
        bad = await session.call_tool("execute_command", {"container_id": container_id, "command": ""})
        assert bad.is_error and "empty" in bad.content[0].text
        destroyed = await session.call_tool("destroy_container", {"container_id": container_id})
        assert destroyed.structured_content["destroyed"] is True
    assert sandboxes_left(http_server.env["SANDBOX_NAMESPACE"]) == []
