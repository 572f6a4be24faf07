from __future__ import annotations

import os
import subprocess
import time

import anyio
import anyio.to_thread
from fastmcp import Client
from harness import Bench, rss_mb, structured


async def download(bench: Bench, client: Client, container_id: str, raw_name: str, size_mb: int = 100) -> None:
    assert bench.server is not None
    make = f"head -c {size_mb * 1024 * 1024} /dev/urandom > /tmp/big.bin"
    await client.call_tool("execute_command", {"container_id": container_id, "command": make, "timeout_seconds": 300})
    await anyio.run_process(["podman", "exec", raw_name, "sh", "-c", make])
    link = structured(await client.call_tool("get_file_url", {"container_id": container_id, "path": "/tmp/big.bin"}))
    ours, raw = [], []
    peak_growth = 0.0
    for _ in range(5):
        before = rss_mb(bench.server.pid)
        started = time.perf_counter()
        # curl, as a user would download it, so the client's own cost stays small
        fetched = await anyio.run_process(["curl", "-sS", "-o", os.devnull, "-w", "%{size_download}", link["url"]])
        got = int(fetched.stdout)
        elapsed = time.perf_counter() - started
        peak_growth = max(peak_growth, rss_mb(bench.server.pid) - before)
        assert got == size_mb * 1024 * 1024
        ours.append(got / elapsed / 1e6)
        started = time.perf_counter()
        with open(os.devnull, "wb") as devnull:
            subprocess.run(["podman", "exec", raw_name, "cat", "/tmp/big.bin"], stdout=devnull, check=True)
        raw.append(got / (time.perf_counter() - started) / 1e6)
    bench.row(f"download {size_mb} MB, MB/s (higher is better)", ours, raw, unit="MB/s",
             note=f"server RSS change during a download {peak_growth:+.0f} MB")
