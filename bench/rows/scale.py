from __future__ import annotations

import statistics
import subprocess
import time
from typing import Any

import anyio
import anyio.to_thread
import httpx2
from fastmcp import Client
from fastmcp.client.transports import StreamableHttpTransport
from harness import Bench, cpu_seconds, rss_mb, structured


def host_used_mb() -> float:
    """The host's memory in use, as `free` counts it (MemTotal less MemAvailable)."""
    fields = {line.split(":")[0]: int(line.split()[1]) for line in open("/proc/meminfo")}
    return (fields["MemTotal"] - fields["MemAvailable"]) / 1024


async def scale(bench: Bench, client: Client, most: int) -> None:
    """What grows with the number of live sandboxes, measured at 10, 100, 300, 1000 ... most."""
    assert bench.server is not None
    pid = bench.server.pid
    checkpoints = [n for n in (1, 10, 100, 300, 1000, 3000) if n < most] + [most]
    semaphore = anyio.Semaphore(4)
    ids: list[str] = []

    async def create_one(arguments: dict[str, Any] | None = None) -> str:
        async with semaphore:
            return structured(await client.call_tool("create_container", arguments or {}))["container_id"]

    async def add_one() -> None:
        ids.append(await create_one())

    async def listed() -> set[str]:
        return {c["container_id"] for c in structured(await client.call_tool("list_containers", {}))["containers"]}

    raw_name = await bench.raw_create()  # podman exec in it at each count: how the host itself slows
    await bench.pool_settled(bench.url)
    used_before = host_used_mb()  # the host's memory in use before the live sandboxes (the pool's floor made)
    header = (f"{'live':>6} {'made in s':>9} {'exec p50':>9} {'raw exec':>9} {'create p50':>10} {'list p50':>9} "
              f"{'reap s':>7} {'idle CPU %':>10} {'RSS MB':>7} {'host MB/sandbox':>15}")
    bench.lines.append(header)
    print(header, flush=True)
    first_exec = 0.0
    for count in checkpoints:
        started = time.monotonic()
        async with anyio.create_task_group() as group:
            for _ in range(count - len(ids)):
                group.start_soon(add_one)
        made_in = time.monotonic() - started
        # Steady state: the pool has followed these creates (it grows after a burst; measured while
        # it starts its sandboxes, an exec waited for the CPU: 42.8 ms at 100 live, 12-16 once it was full).
        await bench.pool_settled(bench.url)
        await anyio.sleep(2)
        execs = [await bench.timed(lambda: client.call_tool(
            "execute_command", {"container_id": ids[0], "command": "echo hi"})) for _ in range(40)]
        first_exec = first_exec or statistics.median(execs)
        raw_execs = [await bench.timed(lambda: anyio.run_process(["podman", "exec", raw_name, "echo", "hi"]))
                     for _ in range(10)]
        creates = []
        for _ in range(5):  # each destroyed at once: the count stays
            started = time.perf_counter()
            made = await create_one()
            creates.append((time.perf_counter() - started) * 1000)
            await client.call_tool("destroy_container", {"container_id": made})
            await anyio.sleep(0.5)
        # As for the execs: once the pool has replaced those five (each start is a few hundred ms of CPU
        # on a 2-core host, which the lists would otherwise share).
        await bench.pool_settled(bench.url)
        await anyio.sleep(2)
        lists = [await bench.timed(lambda: client.call_tool("list_containers", {})) for _ in range(10)]
        # Reap: three sandboxes with a lifetime of one second; how long until all three are gone.
        short = [await create_one({"ttl_seconds": 1}) for _ in range(3)]
        expired_at = time.monotonic() + 1
        while set(short) & await listed():
            await anyio.sleep(0.1)
        reap = time.monotonic() - expired_at
        cpu_before, idle_started = cpu_seconds(pid), time.monotonic()
        await anyio.sleep(10)
        idle_cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - idle_started) * 100
        line = (f"{count:>6} {made_in:>9.0f} {statistics.median(execs):>9.1f} {statistics.median(raw_execs):>9.1f} "
                f"{statistics.median(creates):>10.1f} "
                f"{statistics.median(lists):>9.1f} {reap:>7.1f} {idle_cpu:>10.1f} {rss_mb(pid):>7.0f} "
                f"{(host_used_mb() - used_before) / count:>15.2f}")
        bench.lines.append(line)
        print(line, flush=True)
    bench.row(f"exec echo with {most} live / with {checkpoints[0]}", statistics.median(execs), first_exec,
             note=f"server RSS {rss_mb(pid):.0f} MB, peak {rss_mb(pid, 'VmHWM'):.0f} MB")
    # Every destroy at once on one session: the last answers come long after the first, so this
    # client waits up to 300 s for a connection and an answer (the MCP SDK's default is 30 s for a
    # connection from its pool); a call that still fails is counted, not allowed to end the row.
    failed: list[str] = []

    async def destroy(patient: Client, container_id: str) -> None:
        try:
            await patient.call_tool("destroy_container", {"container_id": container_id})
        except Exception as exc:  # noqa: BLE001  (what failed is the row's finding)
            failed.append(f"{type(exc).__name__}: {str(exc)[:120]}")

    def patient_http(headers: Any = None, timeout: Any = None, auth: Any = None, **options: Any) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(headers=headers, auth=auth, timeout=httpx2.Timeout(300), **options)

    transport = StreamableHttpTransport(bench.url + "/mcp", httpx_client_factory=patient_http)
    async with Client(transport, timeout=300) as patient:
        started = time.monotonic()
        async with anyio.create_task_group() as group:
            for container_id in ids:
                group.start_soon(destroy, patient, container_id)
        answered = time.monotonic() - started
    ours = {f"mcp-sandbox-{container_id}" for container_id in ids}
    while ours & set(subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}", "--filter",
                                     f"label=mcp-sandbox.namespace={bench.namespace}"],
                                    capture_output=True, text=True).stdout.split()):
        await anyio.sleep(1)
    bench.row(f"destroy {len(ids)} at once: answered / all removed", answered, time.monotonic() - started, unit="s",
              note=f"{len(failed)} calls failed" + (f", the first: {failed[0]}" if failed else ""))
