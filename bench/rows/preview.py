from __future__ import annotations

import base64
import os
import statistics
import time

import anyio
import anyio.to_thread
import httpx
from fastmcp import Client
from harness import ROOT, Bench, structured
from support.sweep import build_static

from mcp_container_sandbox.sandbox.backend.podman import PodmanBackend
from mcp_container_sandbox.sandbox.backend.podman_cli import Podman


async def preview(bench: Bench, client: Client, requests: int = 200, rounds: int = 5, size_mb: int = 50) -> None:
    app = build_static(ROOT / "tests" / "support" / "apps" / "preview-app.c", ROOT / "build" / "preview-app")
    container_id = structured(await client.call_tool("create_container", {}))["container_id"]
    await client.call_tool("write_file", {"container_id": container_id, "path": "/root/preview-app", "mode": "755",
                                          "content": base64.b64encode(app).decode(), "encoding": "base64"})
    await client.call_tool("execute_command", {"container_id": container_id,
                                               "command": "/root/preview-app 8000 >/dev/null 2>&1 & sleep 0.3"})
    url = structured(await client.call_tool("expose_port", {"container_id": container_id, "port": 8000}))["url"]
    size = size_mb * 1024 * 1024

    async def inside(path: str, count: int) -> list[float]:
        ran = structured(await client.call_tool("execute_command", {
            "container_id": container_id, "command": f"/root/preview-app fetch 8000 {path} {count}",
            "timeout_seconds": 300}))
        return [int(line.split()[0]) / 1000 for line in ran["stdout"].splitlines()]

    ours, ours_rates, inside_rates, wget_rates = [], [], [], []
    async with httpx.AsyncClient(timeout=120) as http:
        await http.get(url + "big/1024")  # the connection and the sandbox's network namespace, once
        for _ in range(requests):
            started = time.perf_counter()
            got = await http.get(url + "big/1024")
            ours.append((time.perf_counter() - started) * 1000)
            assert len(got.content) == 1024
        raw = await inside("/big/1024", requests)
        for _ in range(rounds):
            started = time.perf_counter()
            # curl, as a user would download it, so the client's own cost stays small
            fetched = await anyio.run_process(["curl", "-sS", "-o", os.devnull, "-w", "%{size_download}",
                                               url + f"big/{size}"])
            assert int(fetched.stdout) == size
            ours_rates.append(size / (time.perf_counter() - started) / 1e6)
            inside_rates.append(size / ((await inside(f"/big/{size}", 1))[0] / 1000) / 1e6)
            fetched_inside = structured(await client.call_tool("execute_command", {
                "container_id": container_id, "command": f"wget -q -O /dev/null http://127.0.0.1:8000/big/{size}"}))
            assert fetched_inside["exit_code"] == 0, fetched_inside
            wget_rates.append(size / (fetched_inside["duration_ms"] / 1000) / 1e6)
    added = statistics.median(ours) - statistics.median(raw)
    bench.row("preview 1 KB GET / in-sandbox GET", ours, raw, note=f"added {added:.1f} ms at p50")
    bench.row(f"preview {size_mb} MB GET, MB/s / in-sandbox", ours_rates, inside_rates, unit="MB/s",
             note="curl through the URL vs the C client inside")
    bench.row(f"preview {size_mb} MB GET, MB/s / in-sandbox wget", ours_rates, wget_rates, unit="MB/s",
             note="vs busybox wget inside (a client as an agent would run it)")
    # The two ways into a sandbox, for a new connection: from the host into its network
    # namespace (what runc sandboxes get) and the agent's relay over podman exec (gVisor's).
    backend = PodmanBackend(Podman())
    name = f"mcp-sandbox-{container_id}"
    request = b"GET /big/1024 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    async def one_connection(relay: bool) -> None:
        stream = await (backend._relay(name, 8000) if relay else backend.connect(name, 8000))
        await stream.send(request)
        got = b""
        try:
            while True:
                got += await stream.receive()
        except anyio.EndOfStream:
            pass
        await stream.aclose()
        assert got.startswith(b"HTTP/1.1 200 OK") and len(got) > 1024, got[:200]

    direct = [await bench.timed(lambda: one_connection(False)) for _ in range(20)]
    relayed = [await bench.timed(lambda: one_connection(True)) for _ in range(20)]
    bench.row("new connection + 1 KB GET: netns / agent relay", direct, relayed,
             note="into the sandbox from the host vs podman exec sandbox-agent relay")
    await client.call_tool("destroy_container", {"container_id": container_id})
