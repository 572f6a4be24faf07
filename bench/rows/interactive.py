from __future__ import annotations

import anyio
import anyio.to_thread
from fastmcp import Client
from harness import Bench, structured

from mcp_container_sandbox.sandbox.backend.podman import PodmanBackend
from mcp_container_sandbox.sandbox.backend.podman_cli import Podman
from mcp_container_sandbox.sandbox.paths import AGENT_PATH
from mcp_container_sandbox.sandbox.runtime.channel import AgentChannel


async def interactive(bench: Bench, client: Client, rounds: int = 50) -> None:
    """read_file of 1 MB next to podman exec cat of the same file; a write_stdin round trip (a line
    written to cat, its echo back) next to a podman exec -i write of a line into the same FIFO."""
    container_id = structured(await client.call_tool("create_container", {}))["container_id"]
    name = f"mcp-sandbox-{container_id}"
    await client.call_tool("execute_command", {"container_id": container_id,
                                               "command": "head -c 1048576 /dev/urandom > /root/one.bin"})
    ours, raw = [], []

    async def read_ours() -> None:
        got = structured(await client.call_tool("read_file", {"container_id": container_id, "path": "/root/one.bin",
                                                              "encoding": "base64"}))
        assert got["length"] == 1048576 and got["eof"]

    async def read_raw() -> None:
        got = await anyio.run_process(["podman", "exec", name, "cat", "/root/one.bin"])
        assert len(got.stdout) == 1048576

    for _ in range(rounds):
        raw.append(await bench.timed(read_raw))
        ours.append(await bench.timed(read_ours))
    bench.row("read_file 1 MB / podman exec cat", ours, raw, note="base64 through MCP vs raw bytes")
    # Where that time goes: the same read in the server (the agent's channel, no MCP), and the
    # same result (1.4 MB of base64) from a tool that reads nothing: FastMCP's own cost.
    in_server = []
    async with anyio.create_task_group() as tasks:
        channel = AgentChannel(PodmanBackend(Podman()).exec_argv(name, AGENT_PATH, interactive=True))
        await channel.open(tasks.start_soon)
        for _ in range(rounds):
            in_server.append(await bench.timed(lambda: channel.read_file("/root/one.bin", 0, 1048576)))
        await channel.close()
    bench.row("  the read in the server / podman exec cat", in_server, raw, note="the agent's read request")
    floor = await bench.mcp_floor(rounds)
    bench.row("  FastMCP alone, same result / podman exec cat", floor, raw,
             note="a tool returning 1.4 MB of text: the floor")
    await client.call_tool("write_file", {"container_id": container_id, "path": "/root/small.txt", "content": "k" * 1024})
    small, raw_small = [], []

    async def read_small() -> None:
        got = structured(await client.call_tool("read_file", {"container_id": container_id, "path": "/root/small.txt"}))
        assert got["length"] == 1024

    for _ in range(rounds):
        raw_small.append(await bench.timed(lambda: anyio.run_process(["podman", "exec", name, "cat", "/root/small.txt"])))
        small.append(await bench.timed(read_small))
    bench.row("read_file 1 KB / podman exec cat", small, raw_small)
    cat = structured(await client.call_tool("execute_command", {
        "container_id": container_id, "command": "cat", "keep_stdin_open": True}))["command_id"]
    sink = structured(await client.call_tool("execute_command", {  # the raw writes go to a FIFO of its own
        "container_id": container_id, "command": "cat > /dev/null", "keep_stdin_open": True}))["command_id"]
    fifo = f"/run/mcp-sandbox/commands/{sink}/stdin"
    ours, raw = [], []

    async def write_ours() -> None:
        got = structured(await client.call_tool("write_stdin", {"container_id": container_id, "command_id": cat,
                                                                "data": "ping\n"}))
        assert got["stdout"] == "ping\n", got

    async def write_raw() -> None:
        await anyio.run_process(["podman", "exec", "-i", name, "sh", "-c", f"cat > {fifo}"], input=b"ping\n")

    for _ in range(rounds):
        raw.append(await bench.timed(write_raw))
        ours.append(await bench.timed(write_ours))
    bench.row("write_stdin + echo back / podman exec -i write", ours, raw,
             note="ours waits for cat's answer; raw only writes")
    await client.call_tool("destroy_container", {"container_id": container_id})
