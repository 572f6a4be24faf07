"""Podman's REST API path (backend/podman_api.py, podman_engine.py) on real Podman: it makes the very
container the CLI makes; a service that dies or hangs costs no sandbox and is replaced; the CLI
alone (SANDBOX_PODMAN_API=off) and a service of the system's (unix://) serve a whole life."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import RUN_ID, podman, sandbox_image, sandbox_names, structured
from fastmcp import Client
from test_faults import argv_of, descendants, settled

from mcp_container_sandbox.sandbox.backend.abstract import ContainerSpec
from mcp_container_sandbox.sandbox.backend.podman import run_args
from mcp_container_sandbox.sandbox.backend.podman_api import PodmanApi, PodmanService
from mcp_container_sandbox.sandbox.backend.podman_cli import Podman
from mcp_container_sandbox.sandbox.backend.podman_engine import PodmanEngine

pytestmark = pytest.mark.anyio

# What differs between two containers made alike: their identity, and what is named after it.
IDENTITY = {"Id", "Name", "Created", "ConmonPidFile", "PidFile", "StaticDir", "CreateCommand", "UpperDir", "WorkDir",
            "Aliases"}


def differences(cli: Any, api: Any, path: str = "") -> list[str]:
    if isinstance(cli, dict) and isinstance(api, dict):
        return [found for key in sorted(set(cli) | set(api)) if key not in IDENTITY
                for found in differences(cli.get(key), api.get(key), f"{path}.{key}")]
    if isinstance(cli, list) and isinstance(api, list) and len(cli) == len(api):
        return [found for index, pair in enumerate(zip(cli, api)) for found in differences(*pair, f"{path}[{index}]")]
    return [] if cli == api else [f"{path}: {json.dumps(cli)[:200]} (CLI) != {json.dumps(api)[:200]} (API)"]


def alike(inspected: dict[str, Any]) -> dict[str, Any]:
    """The inspection with its anonymous volumes' random names said alike, and its environment and
    mounts in order (Podman keeps each in a map: their order changes from one container to the next)."""
    text = json.dumps(inspected)
    for mount in inspected.get("Mounts") or []:
        if mount.get("Type") == "volume":
            text = text.replace(mount["Name"], "<anonymous volume>")
    said = json.loads(text)
    said["Config"]["Env"] = sorted(said["Config"]["Env"])
    said["HostConfig"]["Binds"] = sorted(said["HostConfig"].get("Binds") or [])
    said["Mounts"] = sorted(said.get("Mounts") or [], key=lambda mount: mount["Destination"])
    return said


def service_of(server: Any) -> list[int]:
    return [pid for pid in descendants(server.process.pid) if argv_of(pid)[1:3] == ["system", "service"]]


async def test_the_api_makes_the_very_container_the_cli_makes(tmp_path: Path) -> None:
    """Every field of `podman inspect` but the container's identity is the same for a sandbox's
    container made by `podman create` with run_args and by the API with spec_generator: its
    limits, hardening, mounts, network (netavark's, none, a namespace of the server's), DNS, labels,
    command."""
    (tmp_path / "root" / "w").mkdir(parents=True)
    netns = f"{RUN_ID}-api"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    (tmp_path / "bind").mkdir()
    specs = [
        ContainerSpec("from-image", {f"{RUN_ID}.api": "image"}, ("sleep", "99"), image=sandbox_image(),
                      network="podman", tmpfs=("/run/state:size=64m,mode=700",), volumes=("/data",),
                      dns=("10.88.0.1",)),
        ContainerSpec("from-root", {f"{RUN_ID}.api": "root"}, ("/bin/sh", "-c", "sleep 9"), rootfs=str(tmp_path / "root"),
                      network="none", env=("A=1", "B=x=y"), workdir="/w",
                      volumes=(f"{tmp_path / 'bind'}:/data", f"{tmp_path / 'bind'}:/ro:ro")),
        ContainerSpec("in-netns", {f"{RUN_ID}.api": "netns"}, ("sleep", "99"), image=sandbox_image(),
                      network=f"ns:/run/netns/{netns}", dns=("10.88.0.1",)),
    ]
    podman_cli = Podman()
    service = PodmanService(podman_cli)
    engines = {"cli": PodmanEngine(podman_cli), "api": PodmanEngine(podman_cli, PodmanApi(service))}
    try:
        for spec in specs:
            inspected = {}
            for label, engine in engines.items():
                made = replace(spec, name=f"{RUN_ID}-{label}-{spec.name}")
                container_id, _ = await engine.create(made, run_args(made))
                try:
                    inspected[label] = alike(json.loads(podman("inspect", made.name).stdout)[0])
                finally:
                    podman("rm", "-f", "-v", made.name)
                assert inspected[label]["Id"] == container_id
            assert inspected["api"]["HostConfig"]["Memory"] == 256 * 1024 * 1024  # the comparison saw the limits
            assert differences(inspected["cli"], inspected["api"]) == []
        assert inspected["api"]["HostConfig"]["NetworkMode"] == f"ns:/run/netns/{netns}"  # the last pair's
        assert service.running()  # the API, not the CLI, made the second container of each pair
    finally:
        service.stop()
        podman_cli.close()
        subprocess.run(["ip", "netns", "delete", netns])


async def test_a_killed_service_costs_no_create_and_comes_back(start_server) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-api-killed"
    server = start_server({"SANDBOX_NAMESPACE": namespace})
    (first,) = service_of(server)
    async with Client(server.url + "/mcp") as client:
        os.kill(first, signal.SIGKILL)
        made = [structured(await client.call_tool("create_container", {}))["container_id"] for _ in range(2)]
        deadline = time.monotonic() + 30
        while not service_of(server):  # started again (at most every 5 s) by a request that found it gone
            assert time.monotonic() < deadline, server.log_text()[-2000:]
            made.append(structured(await client.call_tool("create_container", {}))["container_id"])
            await anyio.sleep(1)
        assert service_of(server) != [first]
        assert "starting it again" in server.log_text()
        made.append(structured(await client.call_tool("create_container", {}))["container_id"])
        for container_id in made:
            ran = structured(await client.call_tool("execute_command", {"container_id": container_id, "command": "echo ok"}))
            assert ran["stdout"] == "ok\n"
            await client.call_tool("destroy_container", {"container_id": container_id})
        assert await settled(client, namespace) == set()


async def test_a_hanging_service_fails_the_create_in_time_and_nothing_it_made_stays(start_server) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-api-hang"
    server = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_PODMAN_TIMEOUT_SECONDS": "3"})
    async with Client(server.url + "/mcp") as client:
        served = structured(await client.call_tool("create_container", {}))["container_id"]
        (hung,) = service_of(server)
        os.kill(hung, signal.SIGSTOP)
        try:
            answers: list[tuple[float, Any]] = []

            async def create() -> None:
                started = time.monotonic()
                answer = await client.call_tool("create_container", {}, raise_on_error=False)
                answers.append((time.monotonic() - started, answer))

            async with anyio.create_task_group() as group:
                group.start_soon(create)
                # While the service hangs, commands (podman exec) are served.
                ran = structured(await client.call_tool("execute_command", {"container_id": served, "command": "echo on"}))
                assert ran["stdout"] == "on\n"
        finally:
            if Path(f"/proc/{hung}").exists():
                os.kill(hung, signal.SIGCONT)
        (elapsed, refused), = answers
        assert refused.is_error and "no answer within 3 s" in refused.content[0].text, refused
        assert elapsed < 20, elapsed  # 3 s, on a loaded machine
        assert not Path(f"/proc/{hung}").exists() or argv_of(hung)[1:3] != ["system", "service"]  # killed
        again = structured(await client.call_tool("create_container", {}))["container_id"]
        assert service_of(server) and service_of(server) != [hung]
        assert set(sandbox_names(namespace)) == {f"mcp-sandbox-{served}", f"mcp-sandbox-{again}"}
        for container_id in (served, again):
            await client.call_tool("destroy_container", {"container_id": container_id})
        assert await settled(client, namespace) == set()


@pytest.mark.parametrize("api", ["off", "system"])
async def test_a_whole_life_without_a_service_of_the_servers_own(start_server, tmp_path: Path, api: str) -> None:  # type: ignore[no-untyped-def]
    """SANDBOX_PODMAN_API=off: Podman's CLI alone; unix://: a service the server did not start."""
    namespace = f"{RUN_ID}-api-{api}"
    system = None
    env = {"SANDBOX_NAMESPACE": namespace, "SANDBOX_PODMAN_API": "off"}
    if api == "system":
        socket = tmp_path / "podman.sock"
        log = open(tmp_path / "service.log", "wb")  # at debug level it logs every request
        system = subprocess.Popen(["podman", "--log-level=debug", "system", "service", "--time=0", f"unix://{socket}"],
                                  cwd=tmp_path, stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert time.monotonic() < deadline
            await anyio.sleep(0.05)
        env["SANDBOX_PODMAN_API"] = f"unix://{socket}"
    try:
        server = start_server(env)
        assert service_of(server) == []
        async with Client(server.url + "/mcp") as client:
            made = structured(await client.call_tool("create_container", {}))["container_id"]
            inspected = json.loads(podman("inspect", f"mcp-sandbox-{made}").stdout)[0]["HostConfig"]
            assert (inspected["Memory"], inspected["CpuQuota"], inspected["CpuPeriod"], inspected["PidsLimit"]) == (
                256 * 1024 * 1024, 50_000, 100_000, 100)
            await client.call_tool("write_file", {"container_id": made, "path": "/root/a.txt", "content": "a"})
            snapshot = structured(await client.call_tool("snapshot_container", {"container_id": made}))["snapshot_id"]
            forked = structured(await client.call_tool("create_container", {"snapshot_id": snapshot}))["container_id"]
            read = structured(await client.call_tool("read_file", {"container_id": forked, "path": "/root/a.txt"}))
            assert read["content"] == "a"
            listed = {box["container_id"] for box in structured(await client.call_tool("list_containers", {}))["containers"]}
            assert listed == {made, forked}
        server.stop()
        if system is not None:  # the system's service made them
            assert "POST /v4.0.0/libpod/containers/create" in (tmp_path / "service.log").read_text(errors="replace")
        again = start_server(env, port=server.port)  # adopted by a restarted server, through the same path
        async with Client(again.url + "/mcp") as client:
            assert await settled(client, namespace) == {made, forked}
            for container_id in (made, forked):
                await client.call_tool("destroy_container", {"container_id": container_id})
            await client.call_tool("delete_snapshot", {"snapshot_id": snapshot})
            assert await settled(client, namespace) == set()
    finally:
        if system is not None:
            system.terminate()
            system.wait(timeout=30)
            log.close()
