"""Soak at scale: N live sandboxes (1,000 by default) while C clients (16) create sandboxes, run
commands in them and destroy them, for M minutes (30), against ``python server.py``.

Usage (after scripts/setup.sh; SANDBOX_IMAGE as it prints):
    .venv/bin/python bench/soak_scale.py [--live 1000] [--clients 16] [--minutes 30]

It passes when there were no errors (a tool error or a wrong result), the server's RSS was flat (the
mean of the last 5 minutes within 10% of the first 5), the exec p50 of the last 5 minutes was
within 1.2x the first 5, every live sandbox was still there at the end, and nothing was left once
they were destroyed: no container, disk, mount or loop device of the run's namespace. The live
sandboxes have no network (a Linux bridge takes 1,023 ports); the clients' sandboxes do. Each
window is the first and last 5 minutes of the churn (or a sixth of the run when shorter).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from fastmcp import Client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from harness import four_at_a_time, free_port, rss_mb, serve  # noqa: E402  (puts tests/ on the path for support.sweep)
from support.sweep import image_holders, release_namespace, release_network_namespaces, remove_image_holders  # noqa: E402

from mcp_container_sandbox.settings import SandboxSettings  # noqa: E402


@dataclass
class Record:
    execs: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the churn, ms)
    rss: list[tuple[float, float]] = field(default_factory=list)  # (seconds into the churn, MB)
    errors: list[str] = field(default_factory=list)
    cycles: int = 0


def window(samples: list[tuple[float, float]], start: float, end: float) -> list[float]:
    return [value for at, value in samples if start <= at < end]


async def make_live(client: Client, count: int) -> list[str]:
    ids: list[str] = []

    async def one(_: int) -> None:
        ids.append((await client.call_tool("create_container", {"network": False})).structured_content["container_id"])

    await four_at_a_time(count, one)
    return ids


async def churn(url: str, n: int, until: float, started: float, record: Record) -> None:
    """One client: create a sandbox, five commands (timed), a file, destroy; again until the end."""
    async with Client(url + "/mcp", timeout=120) as client:
        while time.monotonic() < until:
            try:
                box = (await client.call_tool("create_container", {})).structured_content["container_id"]
                for step in range(5):
                    began = time.perf_counter()
                    ran = (await client.call_tool("execute_command", {"container_id": box, "command":
                                                                      f"echo {n}-{step}"})).structured_content
                    record.execs.append((time.monotonic() - started, (time.perf_counter() - began) * 1000))
                    if ran["stdout"] != f"{n}-{step}\n":
                        record.errors.append(f"client {n}: wrong output {ran}")
                await client.call_tool("write_file", {"container_id": box, "path": "/tmp/f", "content": str(n)})
                read = (await client.call_tool("read_file", {"container_id": box, "path": "/tmp/f"})).structured_content
                if read["content"] != str(n):
                    record.errors.append(f"client {n}: read back {read}")
                await client.call_tool("destroy_container", {"container_id": box})
                record.cycles += 1
            except Exception as exc:  # a failed call is what a soak counts
                record.errors.append(f"client {n}: {type(exc).__name__}: {exc}"[:300])


def names_in(namespace: str, *filters: str) -> set[str]:
    argv = ["podman", "ps", "-a", "--format", "{{.Names}}", "--filter", f"label=mcp-sandbox.namespace={namespace}"]
    for extra in filters:
        argv += ["--filter", extra]
    return set(subprocess.run(argv, capture_output=True, text=True).stdout.split())


def leftovers(namespace: str, disk_dir: str) -> dict[str, int]:
    """What the run's sandboxes left (the warm pool's own sandboxes and spare disks aside)."""
    pooled = names_in(namespace, "label=mcp-sandbox.pooled=true")
    folder = f"{disk_dir}/{namespace}/"

    def ours(line: str) -> bool:
        return folder in line and ".spare-" not in line and not any(f"{folder}{name}" in line for name in pooled)

    mounts = [line for line in Path("/proc/mounts").read_text().splitlines() if ours(line)]
    loops = [line for line in subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout.splitlines()
             if ours(line)]
    return {"containers": len(names_in(namespace) - pooled), "mounts": len(mounts), "loop devices": len(loops)}


async def soak(live: int, clients: int, minutes: float) -> int:
    namespace, port = f"soak-{secrets.token_hex(3)}", free_port()
    holders_before, disk_dir = image_holders(), SandboxSettings.from_env().disk_dir
    most = live + 2 * clients + 20
    env = {**os.environ, "PORT": str(port), "SANDBOX_NAMESPACE": namespace, "LOG_LEVEL": "warning",
           "SANDBOX_MAX_CONTAINERS": str(most), "SANDBOX_MAX_PER_TENANT": str(most)}
    server = serve(port, env)
    url, record, missing, left = f"http://127.0.0.1:{port}", Record(), set(), {}
    try:
        async with Client(url + "/mcp", timeout=300) as client:
            made_at = time.monotonic()
            ids = await make_live(client, live)
            print(f"{live} live sandboxes made in {time.monotonic() - made_at:.0f} s", flush=True)
            started = time.monotonic()
            until = started + minutes * 60

            async def sample() -> None:
                while time.monotonic() < until:
                    record.rss.append((time.monotonic() - started, rss_mb(server.pid)))
                    await anyio.sleep(min(10.0, minutes * 3))  # every 10 s; at least 20 looks in a short run

            async with anyio.create_task_group() as group:
                group.start_soon(sample)
                for n in range(clients):
                    group.start_soon(churn, url, n, until, started, record)
            others = len(names_in(namespace)) - live
            print(f"when the churn stopped, {others} containers besides the live ones (the pool's, and destroyed "
                  "ones still being removed)", flush=True)
            listed = {c["container_id"] for c in (await client.call_tool("list_containers", {})).structured_content[
                "containers"]}
            missing = set(ids) - listed
            destroyed_at = time.monotonic()
            async with anyio.create_task_group() as group:
                for container_id in ids:
                    group.start_soon(client.call_tool, "destroy_container", {"container_id": container_id})
            print(f"destroy_container of all {live} answered in {time.monotonic() - destroyed_at:.1f} s", flush=True)
        gone_by = time.monotonic() + 900  # Podman removes 1,000 containers in about 3 minutes
        while any(leftovers(namespace, disk_dir).values()) and time.monotonic() < gone_by:
            await anyio.sleep(5)
        left = leftovers(namespace, disk_dir)
        print(f"all removed {time.monotonic() - destroyed_at:.0f} s after the destroys began", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=120)
        everything = names_in(namespace)
        if everything:
            subprocess.run(["podman", "rm", "-f", "-v", "-t", "0", *everything], capture_output=True)
    release_namespace(disk_dir, namespace)
    remove_image_holders(holders_before)
    release_network_namespaces()
    return report(record, minutes, missing, left)


def report(record: Record, minutes: float, missing: set[str], left: dict[str, int]) -> int:
    span = min(300.0, minutes * 60 / 6)
    end = minutes * 60
    rss_first, rss_last = window(record.rss, 0, span), window(record.rss, end - span, end + 1)
    exec_first, exec_last = window(record.execs, 0, span), window(record.execs, end - span, end + 1)
    figures = {
        "cycles": record.cycles, "execs": len(record.execs), "errors": len(record.errors),
        "rss_first_mb": statistics.mean(rss_first), "rss_last_mb": statistics.mean(rss_last),
        "exec_p50_first_ms": statistics.median(exec_first), "exec_p50_last_ms": statistics.median(exec_last),
        "live_missing": len(missing), "left": left,
    }
    rss_ratio = figures["rss_last_mb"] / figures["rss_first_mb"]
    exec_ratio = figures["exec_p50_last_ms"] / figures["exec_p50_first_ms"]
    print(json.dumps(figures, indent=1))
    print(f"RSS last/first {rss_ratio:.3f} (goal within 10%); exec p50 last/first {exec_ratio:.3f} (goal <= 1.2)")
    for line in record.errors[:20]:
        print("  " + line)
    ok = (not record.errors and abs(rss_ratio - 1) <= 0.10 and exec_ratio <= 1.2 and not missing
          and not any(left.values()))
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--live", type=int, default=1000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--minutes", type=float, default=30)
    args = parser.parse_args()
    sys.exit(anyio.run(soak, args.live, args.clients, args.minutes))


if __name__ == "__main__":
    main()
