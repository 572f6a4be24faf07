from __future__ import annotations

import anyio
import anyio.to_thread
from fastmcp import Client
from harness import Bench, free_port


async def unpooled(bench: Bench, count: int) -> None:
    """Creates on a server without a pool, and the first command in each new sandbox."""
    port = free_port()
    server = bench.spawn_server(f"{bench.namespace}-unpooled", port, {"SANDBOX_POOL_SIZE": "0"})
    try:
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            ids: list[str] = []
            names: list[str] = []
            peer_ids: list[str] = []
            ours, raw, peer = await bench.interleaved(lambda: bench.create_into(client, ids),
                                                     lambda: bench.raw_create_into(names), count,
                                                     lambda: bench.peer_create_into(peer_ids))
            bench.row("create_container, no pool / podman run -d", ours, raw, peer=peer)
            first, raw_first, peer_first = [], [], []
            for index, (container_id, name) in enumerate(zip(ids, names)):
                raw_first.append(await bench.timed(lambda name=name: anyio.run_process(["podman", "exec", name, "echo", "hi"])))
                first.append(await bench.timed(lambda cid=container_id: client.call_tool(
                    "execute_command", {"container_id": cid, "command": "echo hi"})))
                if bench.peer is not None:
                    peer_first.append(await bench.peer.ms(op="exec", id=peer_ids[index], command="echo hi"))
            bench.row("first command in a new sandbox, no pool / exec", first, raw_first, peer=peer_first or None)
            for container_id in ids:
                await client.call_tool("destroy_container", {"container_id": container_id})
            for peer_id in peer_ids:
                await bench.peer.ask(op="destroy", id=peer_id)
            await anyio.run_process(["podman", "rm", "-f", "-t", "0", *names])
    finally:
        server.terminate()
        server.wait(timeout=60)
