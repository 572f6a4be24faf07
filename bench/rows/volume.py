"""A volume's write throughput against the sandbox's own disk: the same dd (with fsync), in the same
sandbox, to the volume's mount and to a folder of the sandbox's own. Goal (issue 29): the volume
at 0.8x the disk's throughput or better, i.e. a time ratio of 1.25 or less."""

from __future__ import annotations

import statistics
import time

from fastmcp import Client
from harness import Bench, structured


async def volume(bench: Bench, client: Client, rounds: int = 10, size_mb: int = 128) -> None:
    name = f"bench-{bench.namespace[-8:].lower()}".replace("_", "-")
    await client.call_tool("create_volume", {"name": name, "size_mb": size_mb * 2})
    sandbox = structured(await client.call_tool("create_container", {
        "volumes": [{"name": name, "path": "/data"}]}))["container_id"]
    try:
        on_volume, on_disk = [], []
        for round_ in range(rounds):  # each goes first every other round: neither meets the other's writeback
            pair = [("/data", on_volume), ("/root", on_disk)]
            for folder, times in pair if round_ % 2 == 0 else reversed(pair):
                times.append(await dd_ms(client, sandbox, folder, size_mb))
        mb_s = lambda times: size_mb / (statistics.median(times) / 1000)  # noqa: E731
        bench.row(f"volume write {size_mb} MB (fsync) / own disk", on_volume, on_disk,
                  note=f"{mb_s(on_volume):.0f} MB/s vs {mb_s(on_disk):.0f} MB/s (goal: time ratio <= 1.25)")
    finally:
        await client.call_tool("destroy_container", {"container_id": sandbox})
        await client.call_tool("delete_volume", {"name": name})


async def dd_ms(client: Client, sandbox: str, folder: str, size_mb: int) -> float:
    """The time of one execute_command that writes the file and syncs it, in ms (the call's own few
    ms included, on both sides of the ratio); the file is removed after."""
    started = time.perf_counter()
    said = structured(await client.call_tool("execute_command", {
        "container_id": sandbox, "timeout_seconds": 300,
        "command": f"dd if=/dev/zero of={folder}/f bs=1M count={size_mb} conv=fsync 2>&1"}))
    took = (time.perf_counter() - started) * 1000
    if said["exit_code"] != 0:
        raise RuntimeError(f"dd said {said['stdout']!r} {said['stderr']!r}")
    await client.call_tool("execute_command", {"container_id": sandbox, "command": f"rm -f {folder}/f"})
    return took
