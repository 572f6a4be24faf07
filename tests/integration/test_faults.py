"""Faults injected into a real server process: SIGKILL while a tool is at work underneath (a create,
a destroy, a snapshot, a fork, a write), then a restart on the same namespace. Afterwards nothing
is leaked or handed out twice: the sandboxes Podman has are exactly the ones list_containers
shows, each usable; disks, mounts and loop devices belong to those sandboxes (or to the server's
spare disks) only; no removal stays marked; the snapshots listed are whole and can be forked."""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import RUN_ID, disk_dir, in_memory_app, sandbox_names, structured
from fastmcp import Client

from mcp_container_sandbox.sandbox.backend.disks import SPARE_PREFIX

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        for task in Path(f"/proc/{todo.pop()}/task").glob("*"):
            try:
                kids = [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def argv_of(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


async def kill_when(server: Any, matches: Callable[[list[str]], bool], seconds: float = 30) -> list[str]:
    """SIGKILL the server as soon as one of its child processes matches (the operation is under way)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for pid in descendants(server.process.pid):
            argv = argv_of(pid)
            if matches(argv):
                server.process.send_signal(signal.SIGKILL)
                server.process.wait()
                return argv
        await anyio.sleep(0.002)
    raise AssertionError("the operation never reached the step the test kills at")


def podman_step(*words: str) -> Callable[[list[str]], bool]:
    return lambda argv: bool(argv) and argv[0].endswith("podman") and all(word in argv for word in words)


def network_step(argv: list[str]) -> bool:
    """A new container's network being set up: by the server (`ip -batch`, backend/own_netns.py), or by
    netavark (SANDBOX_NETNS=podman; a child of Podman's API service or of a `podman run`, once the
    container exists): a create under way, whichever way the server asks Podman."""
    return bool(argv) and (argv[0].endswith("netavark") or (Path(argv[0]).name == "ip" and "-batch" in argv))


def runtime_step(*words: str) -> Callable[[list[str]], bool]:
    """Podman calling the OCI runtime (`runc kill`, a child of the API's service or of `podman rm`)."""
    return lambda argv: bool(argv) and Path(argv[0]).name in ("runc", "crun") and all(word in argv for word in words)


def disks_of(namespace: str) -> set[str]:
    """The sandbox names that hold a disk (image, mount or loop device) in the namespace's folder."""
    folder = disk_dir(namespace)
    held = {path.name.removesuffix(".img") for path in folder.glob("mcp-sandbox-*")} if folder.exists() else set()
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    held |= {Path(m).parent.name for m in mounts if m.startswith(f"{folder}/mcp-sandbox-")}
    loops = subprocess.run(["losetup", "-a"], capture_output=True, text=True).stdout
    held |= {Path(line.split("(")[-1].rstrip(")")).name.removesuffix(".img") for line in loops.splitlines()
             if f"{folder}/mcp-sandbox-" in line}
    return held


async def settled(client: Client, namespace: str, seconds: float = 60) -> set[str]:
    """Once the restarted server has finished what the killed one left: the sandboxes it lists,
    checked to be exactly Podman's, the holders of disks, and each usable."""
    deadline = time.monotonic() + seconds
    while True:
        listed = {box["container_id"] for box in structured(await client.call_tool("list_containers", {}))["containers"]}
        names = {f"mcp-sandbox-{container_id}" for container_id in listed}
        state = Path(in_memory_app().sandboxes.settings.state_dir) / namespace
        marks = [*(state / "removing").glob("*"), *state.rglob("*.part")]  # removals, half-written files
        if set(sandbox_names(namespace)) == names and disks_of(namespace) <= names and not marks:
            break
        assert time.monotonic() < deadline, (names, sandbox_names(namespace), disks_of(namespace), marks)
        await anyio.sleep(0.5)
    for container_id in listed:
        ran = structured(await client.call_tool("execute_command", {"container_id": container_id, "command": "echo ok"}))
        assert ran["stdout"] == "ok\n", ran
    return listed


def after(seconds: float) -> Callable[[list[str]], bool]:
    """For a step that starts no process of its own (a write goes through the open agent channel):
    the moment ``seconds`` after the first look."""
    first: list[float] = []
    return lambda argv: (first.append(time.monotonic()) or True) and time.monotonic() - first[0] >= seconds


@pytest.mark.parametrize("step", ["create", "destroy", "write", "snapshot", "fork"])
async def test_the_server_killed_mid_operation_leaves_nothing_behind(start_server, step: str) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-fault-{step}"
    env = {"SANDBOX_NAMESPACE": namespace}
    if step == "fork":  # netavark's step comes after the container is made: that case too
        env["SANDBOX_NETNS"] = "podman"
    first = start_server(env)
    async with Client(first.url + "/mcp") as client:
        kept = structured(await client.call_tool("create_container", {}))["container_id"]
        await client.call_tool("write_file", {"container_id": kept, "path": "/root/kept.txt", "content": "kept"})
        snapshot_id = None
        if step == "fork":
            snapshot_id = structured(await client.call_tool("snapshot_container", {"container_id": kept}))["snapshot_id"]
        victim = kept if step in ("destroy", "write", "snapshot") else None
        if step == "snapshot":  # enough to pack that the kill lands while tar runs
            await client.call_tool("execute_command", {"container_id": kept, "command":
                                                       "head -c 60000000 /dev/urandom > /root/blob"})
    calls = {
        "create": ("create_container", {}, network_step),
        "fork": ("create_container", {"snapshot_id": snapshot_id}, network_step),
        "destroy": ("destroy_container", {"container_id": victim}, runtime_step("kill")),
        "write": ("write_file", {"container_id": victim, "path": "/root/big.bin", "encoding": "base64",
                                 "content": "A" * 8_000_000}, after(0.05)),
        "snapshot": ("snapshot_container", {"container_id": victim}, lambda argv: bool(argv) and argv[0] == "tar"),
    }
    tool, arguments, at = calls[step]
    killed_at: list[str] = []

    async def call_and_kill() -> None:
        async with Client(first.url + "/mcp") as client, anyio.create_task_group() as group:
            group.start_soon(client.call_tool, tool, arguments)
            killed_at.extend(await kill_when(first, at))
            group.cancel_scope.cancel()

    try:
        await call_and_kill()
    except Exception as exc:  # the server died under the call: the client's connection breaks
        if not killed_at:
            raise AssertionError("the call failed before the server was killed") from exc
    assert killed_at
    if step == "snapshot":  # the kill landed mid-pack: a half-written archive is left for the restart
        assert list((Path(in_memory_app().sandboxes.settings.state_dir) / namespace).rglob("*.part"))
    second = start_server(env, port=first.port)
    async with Client(second.url + "/mcp") as client:
        live = await settled(client, namespace)
        if step != "destroy":
            assert kept in live  # what was not being removed is still there, whole
            read = structured(await client.call_tool("read_file", {"container_id": kept, "path": "/root/kept.txt"}))
            assert read["content"] == "kept"
        for snap in structured(await client.call_tool("list_snapshots", {}))["snapshots"]:
            forked = structured(await client.call_tool("create_container", {"snapshot_id": snap["snapshot_id"]}))
            read = structured(await client.call_tool("read_file", {"container_id": forked["container_id"],
                                                                   "path": "/root/kept.txt"}))
            assert read["content"] == "kept"
            await client.call_tool("destroy_container", {"container_id": forked["container_id"]})
            await client.call_tool("delete_snapshot", {"snapshot_id": snap["snapshot_id"]})
        for container_id in live:
            await client.call_tool("destroy_container", {"container_id": container_id})
        assert await settled(client, namespace) == set()
    second.stop()
    assert sandbox_names(namespace) == [] and not [name for name in disks_of(namespace) if SPARE_PREFIX not in name]


SHIM = """#!/bin/sh
# Podman, except that a create ('podman [--runtime R] run ...') hangs while {stall} exists.
if [ -e {stall} ] && {{ [ "$1" = run ] || [ "$3" = run ]; }}; then exec sleep 3600; fi
exec {podman} "$@"
"""


async def test_a_hanging_podman_fails_the_tool_in_time_and_the_server_serves_others(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-fault-hang"
    stall, shim = tmp_path / "stall", tmp_path / "podman"
    shim.write_text(SHIM.format(stall=stall, podman=shutil.which("podman")))
    shim.chmod(0o755)
    # Podman's CLI alone: test_podman_api.py hangs the API's service.
    server = start_server({"SANDBOX_NAMESPACE": namespace, "PODMAN": str(shim), "SANDBOX_PODMAN_TIMEOUT_SECONDS": "3",
                           "SANDBOX_PODMAN_API": "off"})
    async with Client(server.url + "/mcp") as client:
        served = structured(await client.call_tool("create_container", {}))["container_id"]
        stall.touch()
        answers: list[tuple[float, Any]] = []

        async def create() -> None:
            started = time.monotonic()
            answers.append((time.monotonic() - started,
                            await client.call_tool("create_container", {}, raise_on_error=False)))

        async with anyio.create_task_group() as group:
            group.start_soon(create)
            while not [pid for pid in descendants(server.process.pid) if argv_of(pid)[:2] == ["sleep", "3600"]]:
                await anyio.sleep(0.01)
            # While Podman hangs on the create, the server goes on serving the others.
            ran = structured(await client.call_tool("execute_command", {"container_id": served, "command": "echo on"}))
            assert ran["stdout"] == "on\n" and not answers
        (elapsed, refused), = answers
        assert refused.is_error and "no answer within 3 s" in refused.content[0].text, refused
        assert elapsed < 20, elapsed  # 3 s, on a loaded machine
        stall.unlink()
        assert not [pid for pid in descendants(server.process.pid) if argv_of(pid)[:2] == ["sleep", "3600"]]
        again = structured(await client.call_tool("create_container", {}))["container_id"]
        assert set(sandbox_names(namespace)) == {f"mcp-sandbox-{served}", f"mcp-sandbox-{again}"}
        for container_id in (served, again):
            await client.call_tool("destroy_container", {"container_id": container_id})
        assert await settled(client, namespace) == set()


UNSTARTED_SHIM = """#!/bin/sh
# Podman, except that while {created} exists a create's 'podman run -d' only makes the container
# (its start lost, as seen once under churn) and answers 0, once; while {nostart} also exists, it
# does so every time and 'podman start' does nothing either.
runtime=""
if [ "$1" = --runtime ]; then runtime="$1 $2"; shift 2; fi
if [ "$1" = run ] && [ -e {created} ]; then
  [ -e {nostart} ] || rm -f {created}
  shift; [ "$1" = -d ] && shift
  exec {podman} $runtime create "$@"
fi
if [ "$1" = start ] && [ -e {nostart} ]; then exit 0; fi
exec {podman} $runtime "$@"
"""


async def test_a_container_podman_did_not_start_is_never_handed_out(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-fault-unstarted"
    created, nostart, shim = tmp_path / "created", tmp_path / "nostart", tmp_path / "podman"
    shim.write_text(UNSTARTED_SHIM.format(created=created, nostart=nostart, podman=shutil.which("podman")))
    shim.chmod(0o755)
    server = start_server({"SANDBOX_NAMESPACE": namespace, "PODMAN": str(shim), "SANDBOX_PODMAN_API": "off"})
    async with Client(server.url + "/mcp") as client:
        created.touch()
        started = structured(await client.call_tool("create_container", {}))["container_id"]
        assert not created.exists()  # the shim did leave this one unstarted
        ran = structured(await client.call_tool("execute_command", {"container_id": started, "command": "echo up"}))
        assert ran["stdout"] == "up\n", ran
        assert "starting it again" in server.log_text()
        created.touch()
        nostart.touch()
        refused = await client.call_tool("create_container", {}, raise_on_error=False)
        assert refused.is_error and "not running" in refused.content[0].text and "Try again" in refused.content[0].text, refused
        nostart.unlink()
        created.unlink()
        assert await settled(client, namespace) == {started}
        await client.call_tool("destroy_container", {"container_id": started})
        assert await settled(client, namespace) == set()
