from __future__ import annotations

import anyio
import anyio.to_thread
from fastmcp import Client
from harness import Bench, structured


async def life(bench: Bench, client: Client, count: int) -> None:
    """A sandbox's whole life: create, one command, destroy; next to the same through the CLI and the peer."""

    async def ours_one() -> None:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        result = await client.call_tool("execute_command", {"container_id": container_id, "command": "echo hi"})
        assert structured(result)["stdout"] == "hi\n"
        await client.call_tool("destroy_container", {"container_id": container_id})

    async def raw_one() -> None:
        name = await bench.raw_create()
        await anyio.run_process(["podman", "exec", name, "echo", "hi"])
        await anyio.run_process(["podman", "rm", "-f", "-t", "0", name])

    async def peer_one() -> float:
        assert bench.peer is not None
        return await bench.peer.ms(op="life")

    await anyio.sleep(5)  # let the pool fill
    ours, raw, peer = await bench.interleaved(ours_one, raw_one, count, peer_one)
    bench.row("whole life: create+echo+destroy / CLI", ours, raw, peer=peer)
