from __future__ import annotations

import statistics
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastmcp import Client
from harness import Bench, structured

from mcp_container_sandbox.settings import SandboxSettings


async def snapshot(bench: Bench, client: Client, rounds: int = 7, size_mb: int = 100) -> None:
    source = structured(await client.call_tool("create_container", {}))["container_id"]
    await client.call_tool("execute_command", {"container_id": source, "timeout_seconds": 600, "command":
                           f"mkdir /root/data; for i in $(seq {size_mb}); do head -c 1048576 /dev/urandom "
                           "> /root/data/$i; done"})
    upper = snapshot_upper(SandboxSettings.from_env().disk_dir, bench.namespace, source)
    ours, raw, sizes = [], [], []
    archive = Path(f"/tmp/bench-snapshot-{bench.namespace}.tar")
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            await anyio.run_process(["tar", "--create", "--file", str(archive), "--directory", str(upper), "."])
            raw.append((time.perf_counter() - started) * 1000)
            archive.unlink()
            started = time.perf_counter()
            taken = structured(await client.call_tool("snapshot_container", {"container_id": source}))
            ours.append((time.perf_counter() - started) * 1000)
            sizes.append(taken["size_bytes"])
            await client.call_tool("delete_snapshot", {"snapshot_id": taken["snapshot_id"]})
    finally:
        archive.unlink(missing_ok=True)
    bench.row(f"snapshot_container {size_mb} MB / tar of the same", ours, raw,
             note=f"snapshot {statistics.median(sizes) / 1e6:.0f} MB; the sandbox is frozen meanwhile")

    await client.call_tool("execute_command", {"container_id": source, "command": "rm -rf /root/data; "
                           "head -c 1048576 /dev/urandom > /root/one.bin; mkdir -p /root/src; echo hi > /root/src/a"})
    small = structured(await client.call_tool("snapshot_container", {"container_id": source}))["snapshot_id"]
    forks, fresh, raw_runs, ids = [], [], [], []

    async def create_one(arguments: dict[str, Any]) -> None:
        ids.append(structured(await client.call_tool("create_container", arguments))["container_id"])

    for _ in range(rounds):
        raw_runs.append(await bench.timed(bench.raw_create))
        forks.append(await bench.timed(lambda: create_one({"snapshot_id": small, "network": False})))
        fresh.append(await bench.timed(lambda: create_one({"network": False})))
        for container_id in ids:
            await client.call_tool("destroy_container", {"container_id": container_id})
        ids.clear()
    bench.row("fork (snapshot 1 MB) / unpooled create", forks, fresh, note="both network=false, not from the pool")
    bench.row("fork (snapshot 1 MB) / podman run -d", forks, raw_runs)
    await client.call_tool("delete_snapshot", {"snapshot_id": small})
    await client.call_tool("destroy_container", {"container_id": source})


def snapshot_upper(disk_base: str, namespace: str, container_id: str) -> Path:
    """A sandbox's writable layer on the host: on its own disk, or in Podman's overlay storage."""
    on_disk = Path(disk_base) / namespace / f"mcp-sandbox-{container_id}" / "fs" / "upper"
    if on_disk.is_dir():
        return on_disk
    found = subprocess.run(["podman", "inspect", "--format", "{{.GraphDriver.Data.UpperDir}}",
                            f"mcp-sandbox-{container_id}"], capture_output=True, text=True).stdout.strip()
    return Path(found)
