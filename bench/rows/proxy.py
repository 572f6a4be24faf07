from __future__ import annotations

import statistics
import time

import anyio
import anyio.to_thread
from fastmcp import Client
from harness import Bench, structured
from target import TARGET_NAME


async def proxy(bench: Bench, client: Client, requests: int = 20, rounds: int = 5, size_mb: int = 50) -> None:
    assert bench.target is not None
    name, direct_ip = TARGET_NAME, bench.target.ip
    pooled, listed = [], []
    ids = []
    for _ in range(rounds * 2):
        await anyio.sleep(1)  # the pool refills
        started = time.perf_counter()
        ids.append(structured(await client.call_tool("create_container", {}))["container_id"])
        pooled.append((time.perf_counter() - started) * 1000)
        await anyio.sleep(1)
        started = time.perf_counter()
        created = structured(await client.call_tool("create_container", {"allow_domains": [name]}))
        listed.append((time.perf_counter() - started) * 1000)
        ids.append(created["container_id"])
    bench.row("create with allow_domains / pooled create", listed, pooled)
    direct_id, proxied_id = ids[0], ids[1]
    proxy = created["egress"]["proxy"].removeprefix("http://").split(":")

    def loop(line: str, where: str, n: int) -> str:
        return (f"for i in $(seq {n}); do printf '{line} HTTP/1.0\\r\\nHost: {name}\\r\\n\\r\\n' | nc {where} "
                "> /dev/null; done")

    async def per_request(container_id: str, command: str) -> float:
        result = structured(await client.call_tool("execute_command", {
            "container_id": container_id, "command": command, "timeout_seconds": 300}))
        assert result["exit_code"] == 0, result
        return result["duration_ms"] / requests

    async def download(container_id: str, command: str) -> float:
        result = structured(await client.call_tool("execute_command", {
            "container_id": container_id, "command": command + " | wc -c", "timeout_seconds": 300}))
        assert int(result["stdout"]) >= size_mb * 1024 * 1024, result
        return size_mb * 1024 * 1024 / (result["duration_ms"] / 1000) / 1e6

    through, direct = [], []
    fetch_through = loop(f"GET http://{name}/1024", f"{proxy[0]} {proxy[1]}", requests)
    fetch_direct = loop("GET /1024", f"{direct_ip} 80", requests)
    for _ in range(rounds):
        through.append(await per_request(proxied_id, fetch_through))
        direct.append(await per_request(direct_id, fetch_direct))
    bench.row("1 KB request via proxy / direct", through, direct,
             note=f"added {statistics.median(through) - statistics.median(direct):+.1f} ms a request")
    big = size_mb * 1024 * 1024
    through, direct = [], []
    for _ in range(rounds):
        through.append(await download(proxied_id, f"printf 'GET http://{name}/{big} HTTP/1.0\\r\\n\\r\\n' | "
                                                   f"nc {proxy[0]} {proxy[1]}"))
        direct.append(await download(direct_id, f"printf 'GET /{big} HTTP/1.0\\r\\n\\r\\n' | nc {direct_ip} 80"))
    bench.row(f"{size_mb} MB download via proxy / direct, MB/s", through, direct, unit="MB/s")
    for container_id in ids:
        await client.call_tool("destroy_container", {"container_id": container_id})
