from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
from fastmcp import Client
from harness import Bench, free_port, percentile


async def burst(bench: Bench, size: int = 16) -> None:
    """``size`` creates at once on a server at the default settings, twice: first with its pool at
    the floor, then once the pool has followed the first burst; 16 raw podman run at once before each."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = bench.spawn_server(f"{bench.namespace}-burst", port, {})

    async def at_once(one: Callable[[], Awaitable[Any]]) -> list[float]:
        times: list[float] = []

        async def timed_one() -> None:
            times.append(await bench.timed(one))

        async with anyio.create_task_group() as group:
            for _ in range(size):
                group.start_soon(timed_one)
        return times

    try:
        # What a burst beyond any started pool costs at least: containers already created (image,
        # storage, config done) and only started, all at once, against 16 raw runs at once.
        await bench.pool_settled(url)
        raw_names: list[str] = []
        runs = await at_once(lambda: bench.raw_create_into(raw_names))
        await anyio.run_process(["podman", "rm", "-f", "-t", "0", *raw_names])
        created = [await bench.raw_create(("create",)) for _ in range(size)]
        await anyio.sleep(2)
        queue = iter(created)
        starts = await at_once(lambda: anyio.run_process(["podman", "start", next(queue)]))
        await anyio.run_process(["podman", "rm", "-f", "-t", "0", *created])
        bench.row(f"{size} podman start at once (created) / {size} runs", starts, runs,
                 note=f"p99 ratio {percentile(starts, 0.99) / percentile(runs, 0.99):.3f}: the floor of a "
                      "burst that finds no started sandbox")
        await anyio.sleep(2)
        async with Client(url + "/mcp") as client:
            for label in ("pool at its floor", "pool grown"):
                await bench.pool_settled(url)
                raw_names: list[str] = []
                raw = await at_once(lambda: bench.raw_create_into(raw_names))
                await anyio.run_process(["podman", "rm", "-f", "-t", "0", *raw_names])
                await anyio.sleep(2)
                state = await bench.pool_settled(url)
                ids: list[str] = []
                ours = await at_once(lambda: bench.create_into(client, ids))
                peer = None
                if bench.peer is not None:  # the peer has no pool: each of its opens starts a container
                    await anyio.sleep(2)
                    peer = (await bench.peer.ask(op="burst", n=size))["times"]
                bench.row(f"{size} creates at once, {label} / {size} runs", ours, raw, peer=peer,
                         note=f"pool ready {state['ready']} before; p99 ratio "
                              f"{percentile(ours, 0.99) / percentile(raw, 0.99):.3f}"
                              + ("" if peer is None else f"; peer p99 {percentile(peer, 0.99):.1f}"))
                for container_id in ids:
                    await client.call_tool("destroy_container", {"container_id": container_id})
    finally:
        server.terminate()
        server.wait(timeout=60)
