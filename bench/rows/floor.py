from __future__ import annotations

import subprocess
import sys
from typing import Any

import anyio
import anyio.to_thread
import httpx
from fastmcp import Client
from harness import ROOT, Bench, PlainMcp, free_port, structured


async def floor(bench: Bench, client: Client, container_id: str, count: int, paced: int, seconds: float = 10,
                clients: int = 16) -> None:
    """What any tool call costs here: a tool that does nothing, on a bare FastMCP server over the same
    transport with the same client (bench/floor_server.py), next to our execute_command "echo hi"
    in a tight loop, and next to destroy_container at the create row's pace (``paced`` of each)."""
    assert bench.server is not None
    port = free_port()
    bare = subprocess.Popen([sys.executable, str(ROOT / "bench" / "floor_server.py"), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.post(url + "/mcp", timeout=2)
                break
            except httpx.HTTPError:
                await anyio.sleep(0.1)
        async with Client(url + "/mcp") as floor_client:
            async def ours_one() -> None:
                await client.call_tool("execute_command", {"container_id": container_id, "command": "echo hi"})

            async def floor_one() -> None:
                await floor_client.call_tool("execute_command", {"container_id": container_id, "command": "echo hi"})

            await ours_one()
            await floor_one()
            ours, floor = [], []
            for _ in range(count):
                floor.append(await bench.timed(floor_one))
                ours.append(await bench.timed(ours_one))
            bench.row("execute_command / a no-op tool, bare FastMCP", ours, floor)
            async with PlainMcp(bench.url + "/mcp") as plain_ours, PlainMcp(url + "/mcp") as plain_floor:
                arguments = {"container_id": container_id, "command": "echo hi"}
                await plain_ours.call("execute_command", arguments)
                await plain_floor.call("execute_command", arguments)
                ours, floor = [], []
                for _ in range(count):
                    floor.append(await bench.timed(lambda: plain_floor.call("execute_command", arguments)))
                    ours.append(await bench.timed(lambda: plain_ours.call("execute_command", arguments)))
            bench.row("the same, httpx alone as the client", ours, floor,
                     note="no MCP client library: the servers' share of a call")
            # The create and destroy rows send one call every 0.5 s, and a call after a pause costs
            # more than one of a tight loop (caches, idle CPUs): the floor at that pace, beside destroy.
            ours, floor = [], []
            for _ in range(paced):
                made = structured(await client.call_tool("create_container", {}))["container_id"]
                await anyio.sleep(0.5)
                floor.append(await bench.timed(floor_one))
                await anyio.sleep(0.5)
                ours.append(await bench.timed(
                    lambda made=made: client.call_tool("destroy_container", {"container_id": made})))
                await anyio.sleep(0.5)
            bench.row("destroy_container / no-op tool, 1 per 0.5 s", ours, floor)
            ids = [structured(await client.call_tool("create_container", {}))["container_id"] for _ in range(clients)]
            for made in ids:
                await client.call_tool("execute_command", {"container_id": made, "command": "true"})
            await bench.pool_settled(bench.url)
            ours_many = await bench.calls_from_clients(bench.url, ids, seconds, bench.server.pid)
            floor_many = await bench.calls_from_clients(url, ids, seconds, bare.pid)
            for made in ids:
                await client.call_tool("destroy_container", {"container_id": made})

        def cpu(done: dict[str, Any]) -> str:
            return f"server {done['server_cpu']:.1f} ms, clients {done['clients_cpu']:.1f} ms"

        bench.row(f"{clients} clients, calls/s / no-op tool, bare FastMCP", ours_many["calls"] / seconds,
                 floor_many["calls"] / seconds, unit="call/s",
                 note=f"CPU a call: ours {cpu(ours_many)}; bare {cpu(floor_many)}; ours: {ours_many['machine']}")
    finally:
        bare.terminate()
        bare.wait(timeout=30)
