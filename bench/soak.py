"""Soak: many tool calls from concurrent clients against ``python server.py``; counts errors.

Usage (after scripts/setup.sh; SANDBOX_IMAGE as it prints):
    .venv/bin/python bench/soak.py [--calls 10000] [--clients 16]
Each client owns a sandbox and cycles through execute_command (ok, failing, stderr),
check_container and get_file_url. A tool error or a wrong result counts as an error; the run
ends with the server's RSS, the count of sandboxes left behind (must be 0) and exit status 1
if anything went wrong.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import time
from pathlib import Path

import anyio
from fastmcp import Client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from harness import free_port, rss_mb, serve  # noqa: E402  (puts tests/ on the path for support.sweep)
from support.sweep import image_holders, release_namespace, release_network_namespaces, remove_image_holders  # noqa: E402

from mcp_container_sandbox.settings import SandboxSettings  # noqa: E402


async def soak(calls: int, clients: int) -> int:
    namespace = f"soak-{secrets.token_hex(3)}"
    holders_before = image_holders()
    port = free_port()
    env = {**os.environ, "PORT": str(port), "SANDBOX_NAMESPACE": namespace, "LOG_LEVEL": "warning",
           "SANDBOX_MAX_CONTAINERS": str(clients + 4)}
    server = serve(port, env)
    url = f"http://127.0.0.1:{port}"
    done = [0]
    errors: list[str] = []

    async def worker(n: int) -> None:
        async with Client(url + "/mcp") as client:
            container_id = (await client.call_tool("create_container", {})).structured_content["container_id"]
            step = 0
            while done[0] < calls:
                step += 1
                done[0] += 1
                kind = step % 5
                try:
                    if kind == 0:
                        r = await client.call_tool("check_container", {"container_id": container_id})
                        ok = r.structured_content["status"] == "running"
                    elif kind == 1:
                        r = await client.call_tool("execute_command", {"container_id": container_id, "command": "exit 3"})
                        ok = r.structured_content["exit_code"] == 3
                    elif kind == 2:
                        r = await client.call_tool("execute_command", {"container_id": container_id, "command": f"echo {step} > /tmp/f; echo e >&2"})
                        ok = r.structured_content["stderr"] == "e\n"
                    elif kind == 3:
                        r = await client.call_tool("get_file_url", {"container_id": container_id, "path": "/tmp/f"})
                        ok = r.structured_content["size_bytes"] > 0
                    else:
                        r = await client.call_tool("execute_command", {"container_id": container_id, "command": f"echo {n}-{step}"})
                        ok = r.structured_content["stdout"] == f"{n}-{step}\n"
                    if not ok:
                        errors.append(f"client {n} step {step}: wrong result {r.structured_content}")
                except Exception as exc:  # a failed call is what a soak counts
                    errors.append(f"client {n} step {step}: {type(exc).__name__}: {exc}")
            await client.call_tool("destroy_container", {"container_id": container_id})

    started = time.monotonic()
    try:
        async with anyio.create_task_group() as tg:
            for n in range(clients):
                tg.start_soon(worker, n)
        elapsed = time.monotonic() - started
        rss = rss_mb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=60)
        def names(*filters: str) -> set[str]:
            argv = ["podman", "ps", "-aq", "--filter", f"label=mcp-sandbox.namespace={namespace}"]
            for extra in filters:
                argv += ["--filter", extra]
            return set(subprocess.run(argv, capture_output=True, text=True).stdout.split())

        everything = names()
        left = everything - names("label=mcp-sandbox.pooled=true")
        if everything:
            subprocess.run(["podman", "rm", "-f", "-v", "-t", "0", *everything], capture_output=True)
        release_namespace(SandboxSettings.from_env().disk_dir, namespace)
        remove_image_holders(holders_before)
        release_network_namespaces()
    print(f"{done[0]} calls from {clients} clients in {elapsed:.1f} s ({done[0] / elapsed:.0f} calls/s): "
          f"{len(errors)} errors; server RSS {rss:.0f} MB; {len(left)} non-pool sandboxes left behind")
    for line in errors[:20]:
        print("  " + line)
    return 1 if errors or left else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--clients", type=int, default=16)
    args = parser.parse_args()
    sys.exit(anyio.run(soak, args.calls, args.clients))


if __name__ == "__main__":
    main()
