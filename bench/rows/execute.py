from __future__ import annotations

import anyio
import anyio.to_thread
from fastmcp import Client
from harness import Bench, structured


async def execute(bench: Bench, client: Client, container_id: str, raw_name: str, count: int) -> list[float]:
    ours, raw = [], []

    async def ours_one() -> None:
        result = await client.call_tool("execute_command", {"container_id": container_id, "command": "echo hi"})
        assert structured(result)["stdout"] == "hi\n"

    async def raw_one() -> None:
        await anyio.run_process(["podman", "exec", raw_name, "echo", "hi"])

    await ours_one()  # the channel opens on the first call
    peer: list[float] = []
    peer_id = None if bench.peer is None else (await bench.peer.ask(op="create"))["id"]
    for _ in range(count):
        raw.append(await bench.timed(raw_one))
        ours.append(await bench.timed(ours_one))
        if bench.peer is not None:
            peer.append(await bench.peer.ms(op="exec", id=peer_id, command="echo hi"))
    if bench.peer is not None:
        await bench.peer.ask(op="destroy", id=peer_id)
    bench.row("execute_command echo / podman exec echo", ours, raw, peer=peer or None)
    return ours
