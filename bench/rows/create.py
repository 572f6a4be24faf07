from __future__ import annotations

import anyio
import anyio.to_thread
from fastmcp import Client
from harness import Bench, structured


async def create(bench: Bench, client: Client, count: int) -> None:
    await anyio.sleep(5)  # let the pool fill
    ids: list[str] = []

    async def create_one() -> None:
        ids.append(structured(await client.call_tool("create_container", {}))["container_id"])

    raw_names: list[str] = []

    async def raw_create_one() -> None:
        raw_names.append(await bench.raw_create())

    peer_ids: list[str] = []
    ours, raw, peer = await bench.interleaved(create_one, raw_create_one, count, lambda: bench.peer_create_into(peer_ids))
    bench.row("create_container / podman run -d", ours, raw, peer=peer)
    # destroy_container answers once the sandbox is unusable; its container goes in the background.
    ours, raw, peer = [], [], []
    for index, (container_id, name) in enumerate(zip(ids, raw_names)):
        raw.append(await bench.timed(lambda name=name: anyio.run_process(["podman", "rm", "-f", "-t", "0", name])))
        await anyio.sleep(0.5)
        ours.append(await bench.timed(lambda cid=container_id: client.call_tool("destroy_container", {"container_id": cid})))
        await anyio.sleep(0.5)
        if bench.peer is not None:
            peer.append(await bench.peer.ms(op="destroy", id=peer_ids[index]))
            await anyio.sleep(0.5)
    bench.row("destroy_container / podman rm -f -t 0", ours, raw, peer=peer or None)
