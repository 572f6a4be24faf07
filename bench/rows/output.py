from __future__ import annotations

import anyio
import anyio.to_thread
from fastmcp import Client
from harness import Bench, rss_mb, structured


async def output(bench: Bench, client: Client, container_id: str) -> None:
    assert bench.server is not None
    before = rss_mb(bench.server.pid)
    peak_before = rss_mb(bench.server.pid, "VmHWM")
    result = structured(await client.call_tool("execute_command", {
        "container_id": container_id, "command": "yes 0123456789abcdef | head -c 300000000; echo end", "timeout_seconds": 600,
    }))
    while result["status"] == "running":
        await anyio.sleep(1)
        result = structured(await client.call_tool(
            "check_container", {"container_id": container_id, "command_id": result["command_id"]}))["command"]
    after = rss_mb(bench.server.pid)
    peak = rss_mb(bench.server.pid, "VmHWM")
    assert result["stdout_bytes"] >= 300_000_000, result
    bench.row("300 MB of output: server RSS growth", after - before, None, unit="MB",
             note=f"peak grew {peak - peak_before:.0f} MB; {result['stdout_bytes']:,} bytes printed")
    await client.call_tool("execute_command", {"container_id": container_id, "command": f"rm -f {result['stdout_path']}"})
