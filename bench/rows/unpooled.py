from __future__ import annotations

import secrets
import time
from dataclasses import replace
from pathlib import Path

import anyio
import anyio.to_thread
import httpx
from fastmcp import Client
from harness import Bench, free_port

from mcp_container_sandbox.sandbox.backend.podman_specgen import spec_generator
from mcp_container_sandbox.sandbox.containers import sandbox_spec
from mcp_container_sandbox.sandbox.model import LABEL_NAMESPACE, Sandbox
from mcp_container_sandbox.sandbox.network.egress import DEFAULT_NETWORK
from mcp_container_sandbox.settings import SandboxSettings


async def api_alone(bench: Bench, socket: Path, names: list[str]) -> float:
    """Our sandbox's container (as containers.sandbox_spec makes it, from the image rather than a disk
    of its own, so with neither the disk's root nor its data folder's bind mount) created and started
    through Podman's API on the peer's service, nothing else: ms."""
    sandbox = Sandbox(secrets.token_hex(16), bench.image, 0, 0,
                      network=SandboxSettings.from_env().network or DEFAULT_NETWORK)
    body = spec_generator(replace(sandbox_spec(sandbox, {LABEL_NAMESPACE: bench.namespace}), volumes=()))
    names.append(sandbox.name)
    async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(socket)), timeout=60) as api:
        started = time.perf_counter()
        (await api.post("http://podman/v4.0.0/libpod/containers/create", json=body)).raise_for_status()
        (await api.post(f"http://podman/v4.0.0/libpod/containers/{sandbox.name}/start")).raise_for_status()
        return (time.perf_counter() - started) * 1000


async def unpooled(bench: Bench, count: int) -> None:
    """Creates on a server without a pool, and the first command in each new sandbox."""
    port = free_port()
    server = bench.spawn_server(f"{bench.namespace}-unpooled", port, {"SANDBOX_POOL_SIZE": "0"})
    try:
        async with Client(f"http://127.0.0.1:{port}/mcp") as client:
            ids: list[str] = []
            names: list[str] = []
            peer_ids: list[str] = []
            ours, raw, peer = await bench.interleaved(lambda: bench.create_into(client, ids),
                                                     lambda: bench.raw_create_into(names), count,
                                                     lambda: bench.peer_create_into(peer_ids))
            bench.row("create_container, no pool / podman run -d", ours, raw, peer=peer)
            first, raw_first, peer_first = [], [], []
            for index, (container_id, name) in enumerate(zip(ids, names)):
                raw_first.append(await bench.timed(lambda name=name: anyio.run_process(["podman", "exec", name, "echo", "hi"])))
                first.append(await bench.timed(lambda cid=container_id: client.call_tool(
                    "execute_command", {"container_id": cid, "command": "echo hi"})))
                if bench.peer is not None:
                    peer_first.append(await bench.peer.ms(op="exec", id=peer_ids[index], command="echo hi"))
            bench.row("first command in a new sandbox, no pool / exec", first, raw_first, peer=peer_first or None)
            if bench.peer is not None:  # the floor under both: Podman's API alone, for each one's container
                api, peer_api = [], []
                for _ in range(count):  # in turns with a podman run -d, as the row above
                    await bench.raw_create_into(names)
                    await anyio.sleep(0.5)
                    api.append(await api_alone(bench, bench.peer.socket, names))
                    await anyio.sleep(0.5)
                    peer_api.append(await bench.peer.ms(op="bare"))
                    await anyio.sleep(0.5)
                bench.row("Podman API alone: create + start", api, None, peer=peer_api,
                          note="our container / the peer's (podman-py)")
            for container_id in ids:
                await client.call_tool("destroy_container", {"container_id": container_id})
            for peer_id in peer_ids:
                await bench.peer.ask(op="destroy", id=peer_id)
            await anyio.run_process(["podman", "rm", "-f", "-t", "0", *names])
    finally:
        server.terminate()
        server.wait(timeout=60)
