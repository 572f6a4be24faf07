from __future__ import annotations

import time

import anyio
import anyio.to_thread
from fastmcp import Client
from harness import Bench, rss_mb, structured


async def live300(bench: Bench, client: Client, count: int = 300) -> None:
    assert bench.server is not None
    first = structured(await client.call_tool("create_container", {}))["container_id"]

    async def exec_samples(n: int = 100) -> list[float]:
        samples = []
        for _ in range(n):
            samples.append(await bench.timed(lambda: client.call_tool(
                "execute_command", {"container_id": first, "command": "echo hi"})))
        return samples

    await exec_samples(5)
    with_one = await exec_samples()
    ids = [first]
    semaphore = anyio.Semaphore(4)

    async def create_one() -> None:
        async with semaphore:
            ids.append(structured(await client.call_tool("create_container", {}))["container_id"])

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for _ in range(count - 1):
            tg.start_soon(create_one)
    made_in = time.monotonic() - started
    with_many = await exec_samples()
    bench.row(f"exec echo with {count} live / with 1", with_many, with_one,
             note=f"{count} sandboxes made in {made_in:.0f} s")
    bench.row(f"server RSS with {count} live sandboxes", rss_mb(bench.server.pid), None, unit="MB",
             note=f"peak {rss_mb(bench.server.pid, 'VmHWM'):.0f} MB")
    async def destroy_one(container_id: str) -> None:
        async with semaphore:
            await client.call_tool("destroy_container", {"container_id": container_id})

    async with anyio.create_task_group() as tg:
        for container_id in ids:
            tg.start_soon(destroy_one, container_id)
