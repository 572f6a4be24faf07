"""Where an unpooled create_container's time goes, stage by stage, on real Podman.

Runs a SandboxManager in this process (no pool, a namespace of its own), wraps the stages of a
create with timers (the sandbox's disk: mkfs and mounts; podman run; the check of its limits;
the helpers' install; the command channel's opening) and the first command after it (at once, and half a second later as an agent's would come), makes
``--count`` sandboxes one after another, and prints the median of each stage next to a raw
``podman run -d`` and ``podman exec`` of the same image in the same run. Removes what it made.

    ./scripts/bench.sh --profile-create [--count 15] [--at-once 16]
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # support/: the sweep and the test apps

from support.sweep import image_holders, release_namespace, release_network_namespaces, remove_image_holders  # noqa: E402

from mcp_container_sandbox.sandbox import (  # noqa: E402
    LIMIT_FLAGS,
    ULIMIT_FLAGS,
    SandboxManager,
    SandboxSettings,
)

STAGES: dict[str, list[float]] = defaultdict(list)


def timed(label: str, fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await fn(*args, **kwargs)
        finally:
            STAGES[label].append((time.perf_counter() - started) * 1000)
    return wrapper


async def burst(manager: SandboxManager, image: str, namespace: str, size: int) -> None:
    """``size`` creates at once, next to ``size`` raw podman run at once, with the stages timed."""
    async def raw_one() -> None:
        started = time.perf_counter()
        await anyio.run_process(["podman", "run", "-d", "--name", f"profile-raw-{secrets.token_hex(4)}", "--init",
                                 *LIMIT_FLAGS, *ULIMIT_FLAGS, "--label", f"mcp-sandbox.namespace={namespace}",
                                 "--entrypoint", "sleep", image, "2147483647"])
        STAGES[f"raw: {size} podman run -d at once"].append((time.perf_counter() - started) * 1000)

    ids: list[str] = []

    async def ours_one() -> None:
        started = time.perf_counter()
        ids.append((await manager.create()).container_id)
        STAGES[f"create: whole, {size} at once"].append((time.perf_counter() - started) * 1000)

    await manager.destroy((await manager.create()).container_id)  # what the first create finds out, found
    for one in (raw_one, ours_one):
        async with anyio.create_task_group() as group:
            for _ in range(size):
                group.start_soon(one)
        await anyio.sleep(3)
    for container_id in ids:
        await manager.destroy(container_id)


async def main(count: int, at_once: int) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    namespace = f"profile-{secrets.token_hex(3)}"
    settings = SandboxSettings.from_env({**os.environ, "SANDBOX_NAMESPACE": namespace, "SANDBOX_POOL_SIZE": "0"})
    holders = image_holders()
    manager = SandboxManager(settings)
    await manager.start()
    disks, backend, runtime = manager.disks, manager.backend, manager.containers.exec_runtime
    disks._run = timed("disk: mkfs.ext4 / mount (each)", disks._run)  # type: ignore[method-assign]
    disks.create = timed("disk: all of it", disks.create)  # type: ignore[method-assign]
    backend.start = timed("podman run (with --rootfs)", backend.start)  # type: ignore[method-assign]
    manager.limits.verify = timed("limits check", manager.limits.verify)  # type: ignore[method-assign]
    runtime.install_helpers = timed("helpers install (podman exec)", runtime.install_helpers)  # type: ignore[method-assign]
    manager.channels.get = timed("channel open (podman exec -i agent)", manager.channels.get)  # type: ignore[method-assign]
    try:
        if at_once:
            await burst(manager, settings.image, namespace, at_once)
        for round_ in range(count if not at_once else 0):
            name = f"profile-raw-{secrets.token_hex(4)}"
            started = time.perf_counter()
            await anyio.run_process(["podman", "run", "-d", "--name", name, "--init", *LIMIT_FLAGS, *ULIMIT_FLAGS,
                                     "--label", f"mcp-sandbox.namespace={namespace}", "--entrypoint", "sleep",
                                     settings.image, "2147483647"])
            STAGES["raw: podman run -d"].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await anyio.run_process(["podman", "exec", name, "echo", "hi"])
            STAGES["raw: podman exec echo hi"].append((time.perf_counter() - started) * 1000)
            await anyio.sleep(0.3)
            started = time.perf_counter()
            sandbox = await manager.create()
            STAGES["create: whole (manager.create)"].append((time.perf_counter() - started) * 1000)
            label = "first command, at once (manager.execute)"
            if round_ % 2:  # as an agent would: its model reads the answer before it asks for more
                await anyio.sleep(0.5)
                label = "first command, 0.5 s after create"
            started = time.perf_counter()
            state = await manager.execute(sandbox.container_id, "echo hi", 30)
            assert state.stdout == "hi\n", state
            STAGES[label].append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            await manager.execute(sandbox.container_id, "echo hi", 30)
            STAGES["second command: whole"].append((time.perf_counter() - started) * 1000)
            await manager.destroy(sandbox.container_id)
            await anyio.sleep(0.3)
    finally:
        await manager.stop()
        left = (await anyio.run_process(["podman", "ps", "-aq", "--filter", f"label=mcp-sandbox.namespace={namespace}"]
                                        )).stdout.decode().split()
        if left:  # the raw ones, and a sandbox a failure left
            await anyio.run_process(["podman", "rm", "-f", "-v", "-t", "0", *left], check=False)
        release_namespace(settings.disk_dir, namespace)
        shutil.rmtree(Path(settings.state_dir) / namespace, ignore_errors=True)
        remove_image_holders(holders)
        release_network_namespaces()
    print(f"image {settings.image}; {count} creates; medians (p90) in ms")
    for label, samples in STAGES.items():
        ordered = sorted(samples)
        print(f"  {label:44} {statistics.median(samples):8.1f} ({ordered[int(0.9 * (len(ordered) - 1))]:.1f})"
              f"  n={len(samples)}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=15)
    parser.add_argument("--at-once", type=int, default=0, help="instead: this many creates at once (a burst)")
    arguments = parser.parse_args()
    anyio.run(main, arguments.count, arguments.at_once)
