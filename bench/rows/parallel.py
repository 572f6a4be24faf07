from __future__ import annotations

import statistics
import time

import anyio
import anyio.to_thread
from fastmcp import Client
from harness import Bench, percentile, structured


async def parallel(bench: Bench, seconds: float = 10, clients: int = 16) -> None:
    assert bench.server is not None
    raw_names = [await bench.raw_create() for _ in range(clients)]
    raw_calls = [0]

    async def raw_worker(name: str, deadline: float) -> None:
        while time.monotonic() < deadline:
            await anyio.run_process(["podman", "exec", name, "echo", "hi"])
            raw_calls[0] += 1

    async with Client(bench.url + "/mcp") as client:
        ids = [structured(await client.call_tool("create_container", {}))["container_id"] for _ in range(clients)]
        for container_id in ids:  # open every channel first
            await client.call_tool("execute_command", {"container_id": container_id, "command": "true"})
        await bench.pool_settled(bench.url)  # steady state: the pool has refilled after these creates
        ours = await bench.calls_from_clients(bench.url, ids, seconds, bench.server.pid)
        deadline = time.monotonic() + seconds
        async with anyio.create_task_group() as tg:
            for name in raw_names:
                tg.start_soon(raw_worker, name, deadline)
        for container_id in ids:
            await client.call_tool("destroy_container", {"container_id": container_id})
    await anyio.run_process(["podman", "rm", "-f", "-t", "0", *raw_names])
    peer, peer_note = None, ""
    if bench.peer is not None:  # the same: its own sandbox for each of 16 threads, for as long
        done = await bench.peer.ask(op="parallel", n=clients, seconds=seconds)
        peer = done["calls"] / seconds
        peer_note = f"; peer errors {done['errors']}, latency p50 {statistics.median(done['latency']):.1f} ms"
    bench.row(f"{clients} clients, calls/s (higher is better)", ours["calls"] / seconds, raw_calls[0] / seconds,
             unit="call/s", peer=peer,
             note=f"errors {ours['errors']}; ours latency p50 {statistics.median(ours['latency']):.1f} ms "
                  f"p99 {percentile(ours['latency'], 0.99):.1f} ms; CPU a call: server {ours['server_cpu']:.1f} ms, "
                  f"clients {ours['clients_cpu']:.1f} ms; {ours['machine']}{peer_note}")
