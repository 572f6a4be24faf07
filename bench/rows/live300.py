from __future__ import annotations

import time

from fastmcp import Client
from harness import Bench, four_at_a_time, rss_mb, structured


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

    async def create_one(_: int) -> None:
        ids.append(structured(await client.call_tool("create_container", {}))["container_id"])

    started = time.monotonic()
    await four_at_a_time(count - 1, create_one)
    made_in = time.monotonic() - started
    with_many = await exec_samples()
    bench.row(f"exec echo with {count} live / with 1", with_many, with_one,
             note=f"{count} sandboxes made in {made_in:.0f} s")
    bench.row(f"server RSS with {count} live sandboxes", rss_mb(bench.server.pid), None, unit="MB",
             note=f"peak {rss_mb(bench.server.pid, 'VmHWM'):.0f} MB")
    await four_at_a_time(len(ids), lambda n: client.call_tool("destroy_container", {"container_id": ids[n]}))
