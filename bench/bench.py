"""Latency of the server's tools over MCP HTTP next to the raw ``podman`` CLI, in one run.

Usage: .venv/bin/python bench/bench.py [--creates N] [--execs N]
(scripts/setup.sh first; SANDBOX_IMAGE as it prints). Starts ``python server.py`` on a free
port in a namespace of its own, measures, prints a table of medians, p99s and ratios, and
removes every container it made.
"""

from __future__ import annotations

import argparse
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import anyio
import httpx
from fastmcp import Client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sandbox import LIMIT_FLAGS, ULIMIT_FLAGS  # noqa: E402


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def podman(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True).stdout.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def raw_run_argv(image: str, name: str, namespace: str) -> list[str]:
    return [
        "podman", "run", "-d", "--name", name, "--init", *LIMIT_FLAGS, *ULIMIT_FLAGS,
        "--label", f"mcp-sandbox.namespace={namespace}", "--entrypoint", "sleep", image, "2147483647",
    ]


async def timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    started = time.perf_counter()
    await fn(*args)
    return (time.perf_counter() - started) * 1000


async def bench(creates: int, execs: int, image: str) -> list[tuple[str, list[float], list[float]]]:
    namespace = f"bench-{secrets.token_hex(3)}"
    port = free_port()
    env = {**os.environ, "PORT": str(port), "SANDBOX_NAMESPACE": namespace, "SANDBOX_IMAGE": image,
           "SANDBOX_MAX_CONTAINERS": str(creates + 10), "LOG_LEVEL": "warning"}
    server = subprocess.Popen([sys.executable, str(ROOT / "server.py")], env=env, cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(url + "/health", timeout=2)
                break
            except httpx.HTTPError:
                time.sleep(0.1)
        raw_names: list[str] = []

        async def raw_create() -> None:
            name = f"bench-raw-{secrets.token_hex(6)}"
            raw_names.append(name)
            await anyio.run_process(raw_run_argv(image, name, namespace))

        async def raw_exec() -> None:
            await anyio.run_process(["podman", "exec", raw_names[0], "echo", "hi"])

        raw_create_ms, ours_create_ms, raw_exec_ms, ours_exec_ms = [], [], [], []
        async with Client(url + "/mcp") as client:
            container_ids: list[str] = []

            async def our_create() -> None:
                result = await client.call_tool("create_container", {})
                container_ids.append(result.structured_content["container_id"])

            async def our_exec() -> None:
                result = await client.call_tool("execute_command", {"container_id": container_ids[0], "command": "echo hi"})
                assert result.structured_content["stdout"] == "hi\n"

            for _ in range(creates):  # one create every 0.5 s, alternating raw and ours
                raw_create_ms.append(await timed(raw_create))
                await anyio.sleep(0.5)
                ours_create_ms.append(await timed(our_create))
                await anyio.sleep(0.5)
            for _ in range(execs):
                raw_exec_ms.append(await timed(raw_exec))
                ours_exec_ms.append(await timed(our_exec))
            for container_id in container_ids:
                await client.call_tool("destroy_container", {"container_id": container_id})
        return [
            ("create_container vs podman run -d", ours_create_ms, raw_create_ms),
            ("execute_command echo vs podman exec", ours_exec_ms, raw_exec_ms),
        ]
    finally:
        server.terminate()
        server.wait(timeout=30)
        leftovers = podman("ps", "-aq", "--filter", f"label=mcp-sandbox.namespace={namespace}").split()
        if leftovers:
            podman("rm", "-f", "-t", "0", *leftovers)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--creates", type=int, default=15)
    parser.add_argument("--execs", type=int, default=50)
    args = parser.parse_args()
    image = os.environ.get("SANDBOX_IMAGE") or "docker.io/library/alpine:3"
    rows = anyio.run(bench, args.creates, args.execs, image)
    print(f"image {image}; {args.creates} creates, {args.execs} execs; milliseconds")
    print(f"{'figure':40} {'ours p50':>9} {'ours p99':>9} {'raw p50':>9} {'raw p99':>9} {'ratio p50':>10}")
    for label, ours, raw in rows:
        print(f"{label:40} {statistics.median(ours):9.1f} {percentile(ours, 0.99):9.1f} "
              f"{statistics.median(raw):9.1f} {percentile(raw, 0.99):9.1f} {statistics.median(ours) / statistics.median(raw):10.2f}")


if __name__ == "__main__":
    main()
