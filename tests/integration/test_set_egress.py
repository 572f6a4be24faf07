"""set_egress: a running sandbox's egress changed in place, in force at once, its processes kept; open
connections that are no longer allowed are cut; kept across a restart of the server. The probes go
to a network namespace the test makes (opened to sandboxes with SANDBOX_EGRESS_ALLOW_CIDRS) and,
for a tunnel through the proxy, to the package archive this machine uses."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from conftest import structured
from fastmcp import Client
from fastmcp.exceptions import ToolError
from test_egress import Namespace, package_archive_host, reaches, run, via_proxy_variable

pytestmark = pytest.mark.anyio
ECHO = ("import socket, threading\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "s.bind(('{ip}', {port})); s.listen(16)\n"
        "def echo(c):\n    while (data := c.recv(4096)):\n        c.sendall(data)\n"
        "while True:\n    threading.Thread(target=echo, args=(s.accept()[0],), daemon=True).start()\n")


@pytest.fixture
def netns() -> Iterator[Namespace]:
    made = Namespace()
    yield made
    made.close()


async def set_egress(client: Client, container_id: str, **arguments: Any) -> dict[str, Any]:
    return structured(await client.call_tool("set_egress", {"container_id": container_id, **arguments}))["egress"]


async def lines(client: Client, container_id: str, path: str) -> int:
    return int((await run(client, container_id, f"wc -l < {path}"))["stdout"].strip() or 0)


async def start(client: Client, container_id: str, command: str) -> str:
    started = structured(await client.call_tool("execute_command", {
        "container_id": container_id, "command": command, "timeout_seconds": 120}))
    assert started["status"] == "running", started
    return started["command_id"]


async def status(client: Client, container_id: str, command_id: str, wait: float = 0) -> str:
    return structured(await client.call_tool("check_container", {
        "container_id": container_id, "command_id": command_id, "wait_seconds": wait}))["command"]["status"]


async def test_egress_changes_while_the_sandbox_runs(start_server, netns: Namespace) -> None:  # type: ignore[no-untyped-def]
    echo_port = netns.port + 1
    echo = subprocess.Popen(["ip", "netns", "exec", netns.name, sys.executable, "-c",
                             ECHO.format(ip=netns.ip, port=echo_port)])
    try:
        env = {"SANDBOX_EGRESS_ALLOW_CIDRS": f"{netns.ip}/32", "SANDBOX_SYNC_WAIT_SECONDS": "0.5"}
        server = start_server(env)
        async with Client(server.url + "/mcp") as client:
            made = structured(await client.call_tool("create_container", {}))
            container_id = made["container_id"]
            assert made["egress"]["policy"] == "public" and await reaches(client, container_id, netns.ip, netns.port)
            # An open connection carrying a line every 0.2 s, and the sandbox's network cut under it.
            pinging = await start(client, container_id, "(while :; do echo ping; sleep 0.2; done) | "
                                                        f"nc {netns.ip} {echo_port} > /tmp/echo.log")
            await wait_for_lines(client, container_id)
            cut_at = time.monotonic()
            assert await set_egress(client, container_id, network=False) == {"policy": "none"}
            await anyio.sleep(max(0.0, 1 - (time.monotonic() - cut_at)))  # in force within 1 s
            first = await lines(client, container_id, "/tmp/echo.log")
            await anyio.sleep(2)
            assert await lines(client, container_id, "/tmp/echo.log") == first  # nothing came back since
            assert not await reaches(client, container_id, netns.ip, netns.port)
            assert await status(client, container_id, pinging) == "running"  # its processes live on
            checked = structured(await client.call_tool("check_container", {"container_id": container_id}))
            assert checked["egress"] == {"policy": "none"}

            assert (await set_egress(client, container_id, network=True))["policy"] == "public"
            assert await reaches(client, container_id, netns.ip, netns.port)

            archive = package_archive_host()
            behind = await set_egress(client, container_id, allow_domains=[archive, "*.example.invalid"])
            assert behind["policy"] == "allow_domains" and behind["allow_domains"] == [archive.lower(), "*.example.invalid"]
            assert not await reaches(client, container_id, netns.ip, netns.port)
            said = (await run(client, container_id, via_proxy_variable("HEAD http://a.example.invalid/",
                                                                       "a.example.invalid")))["stdout"]
            assert said.startswith("HTTP/1.1 502") and "does not resolve" in said  # new commands use the proxy
            # A tunnel to a host that is then taken off the list is cut.
            tunnel = await start(client, container_id, "p=${http_proxy#http://}; mkfifo /tmp/f; (printf 'CONNECT " +
                                 archive + ":80 HTTP/1.1\\r\\n\\r\\n'; sleep 60) > /tmp/f 2>/dev/null & "
                                 "nc ${p%:*} ${p##*:} < /tmp/f")
            await anyio.sleep(2)
            assert await status(client, container_id, tunnel) == "running"
            await set_egress(client, container_id, allow_domains=["*.example.invalid"])
            assert await status(client, container_id, tunnel, wait=5) == "completed"

            # What is wrong with a call, said.
            for arguments, words in (({}, "exactly one"), ({"network": False, "allow_domains": ["a.org"]}, "exactly one"),
                                     ({"allow_domains": ["https://a.org/x"]}, "is not a host name pattern")):
                with pytest.raises(ToolError, match=words):
                    await client.call_tool("set_egress", {"container_id": container_id, **arguments})
            offline = structured(await client.call_tool("create_container", {"network": False}))["container_id"]
            with pytest.raises(ToolError, match="has no network interface"):
                await client.call_tool("set_egress", {"container_id": offline, "network": True})
            await set_egress(client, container_id, network=False)
        server.stop()
        # Kept across a restart of the server: still cut off.
        again = start_server({**env, "SANDBOX_NAMESPACE": server.env["SANDBOX_NAMESPACE"]})
        async with Client(again.url + "/mcp") as client:
            checked = structured(await client.call_tool("check_container", {"container_id": container_id}))
            assert checked["egress"] == {"policy": "none"}
            assert not await reaches(client, container_id, netns.ip, netns.port)
            await set_egress(client, container_id, network=True)
            assert await reaches(client, container_id, netns.ip, netns.port)
            for made_id in (container_id, offline):
                await client.call_tool("destroy_container", {"container_id": made_id})
    finally:
        echo.kill()
        echo.wait()


async def wait_for_lines(client: Client, container_id: str) -> None:
    deadline = time.monotonic() + 15
    while await lines(client, container_id, "/tmp/echo.log") < 3:
        assert time.monotonic() < deadline, "the echo never answered"
        await anyio.sleep(0.3)
