"""Faults in what lies under a running server: a sandbox's conmon SIGKILLed, the state folder's
file system full, the sandbox disk folder's file system full, a sandbox's network namespace
file gone, the host's wall clock stepped an hour forward and back. Each time the tools answer
(a result, or an error that says what is wrong), no other sandbox is touched, and once the fault
is gone the server goes on with nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import RUN_ID, podman, sandbox_names, structured
from fastmcp import Client
from test_faults import disks_of, settled

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Any]:
    """Mounts a tmpfs of the given size (MB) at a folder of the test's; unmounted after."""
    made: list[Path] = []

    def mount(name: str, megabytes: int) -> Path:
        folder = tmp_path / name
        folder.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(folder)], check=True)
        made.append(folder)
        return folder

    yield mount
    for folder in made:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> Path:
    """Writes a file until the file system is full; returns it (remove it to free the space)."""
    filler = folder / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=1M"], capture_output=True)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def text_of(result: Any) -> str:
    return result.content[0].text if result.content else ""


def clear_refusal(result: Any) -> str:
    """The error's text, checked to say what went wrong and not to be a bare internal error."""
    assert result.is_error, result
    said = text_of(result)
    assert "Internal error" not in said and "Traceback" not in said and len(said) > 40, said
    return said


async def echo(client: Client, container_id: str, text: str = "ok") -> None:
    ran = structured(await client.call_tool("execute_command", {"container_id": container_id, "command": f"echo {text}"}))
    assert ran["stdout"] == f"{text}\n", ran


# --------------------------------------------------------------------------- conmon


async def test_a_sandbox_whose_conmon_is_killed_still_answers_and_goes_whole(start_server) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-fault-conmon"
    server = start_server({"SANDBOX_NAMESPACE": namespace})
    async with Client(server.url + "/mcp") as client:
        victim, other = [structured(await client.call_tool("create_container", {}))["container_id"] for _ in range(2)]
        conmon = int(podman("inspect", "--format", "{{.State.ConmonPid}}", f"mcp-sandbox-{victim}").stdout)
        os.kill(conmon, signal.SIGKILL)
        while Path(f"/proc/{conmon}").exists():
            await anyio.sleep(0.05)
        # Its container runs on without its monitor: commands run, files are read.
        await echo(client, victim, "still")
        await client.call_tool("write_file", {"container_id": victim, "path": "/root/f", "content": "kept"})
        assert structured(await client.call_tool("read_file", {"container_id": victim, "path": "/root/f"}))["content"] == "kept"
        await echo(client, other)
        await client.call_tool("destroy_container", {"container_id": victim})
        assert await settled(client, namespace) == {other}
        await echo(client, other)
        await client.call_tool("destroy_container", {"container_id": other})
        assert await settled(client, namespace) == set()


# --------------------------------------------------------------------------- full file systems


async def test_a_full_state_folder_fails_what_must_write_there_clearly_and_nothing_else(  # type: ignore[no-untyped-def]
        start_server, small_fs) -> None:
    namespace = f"{RUN_ID}-fault-state-full"
    state = small_fs("state", 16)
    server = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_STATE_DIR": str(state)})
    async with Client(server.url + "/mcp") as client:
        box = structured(await client.call_tool("create_container", {}))["container_id"]
        await client.call_tool("execute_command", {"container_id": box, "command": "head -c 4000000 /dev/urandom > /root/blob"})
        filler = fill(state)
        # What only runs in the sandbox goes on.
        await echo(client, box)
        other = structured(await client.call_tool("create_container", {}))["container_id"]
        await echo(client, other)
        # A snapshot is written there: it fails saying so, and leaves no half-written archive.
        refused = await client.call_tool("snapshot_container", {"container_id": box}, raise_on_error=False)
        said = clear_refusal(refused)
        assert "space" in said.lower(), said
        assert not list(state.rglob("*.part")) and structured(await client.call_tool("list_snapshots", {}))["snapshots"] == []
        await echo(client, box)  # thawed
        # Once there is room again, the same call works.
        filler.unlink()
        snapshot = structured(await client.call_tool("snapshot_container", {"container_id": box}))["snapshot_id"]
        await client.call_tool("delete_snapshot", {"snapshot_id": snapshot})
        for container_id in (box, other):
            await client.call_tool("destroy_container", {"container_id": container_id})
        assert await settled(client, namespace) == set()


async def test_a_full_disk_folder_fails_creates_clearly_and_leaves_no_disk(start_server, small_fs) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-fault-disks-full"
    disks = small_fs("disks", 64)
    server = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_DISK_DIR": str(disks)})
    async with Client(server.url + "/mcp") as client:
        box = structured(await client.call_tool("create_container", {}))["container_id"]
        filler = fill(disks)
        made = []  # the two disks made ahead (spares) are handed out first; then a disk must be made
        for _ in range(3):
            result = await client.call_tool("create_container", {}, raise_on_error=False)
            if result.is_error:
                break
            made.append(structured(result)["container_id"])
        said = clear_refusal(result)
        assert "SANDBOX_DISK_DIR" in said or "space" in said.lower(), said
        for container_id in (box, *made):
            await echo(client, container_id)  # the sandboxes that have their disks go on
        assert sorted(sandbox_names(namespace)) == sorted(f"mcp-sandbox-{c}" for c in (box, *made))
        filler.unlink()
        again = structured(await client.call_tool("create_container", {}))["container_id"]
        await echo(client, again)
        for container_id in (box, *made, again):
            await client.call_tool("destroy_container", {"container_id": container_id})
        assert await settled(client, namespace) == set()
    assert not [held for held in disks_of(namespace) if held.startswith("mcp-sandbox-") and "spare" not in held]


# --------------------------------------------------------------------------- the network namespace


async def test_a_sandbox_whose_network_namespace_file_is_gone_answers_and_goes_whole(start_server) -> None:  # type: ignore[no-untyped-def]
    """While one running container's file under /run/netns is missing, Podman lists no container
    at all (`podman ps` fails naming it). The server's next comparison with Podman (every 30 s)
    puts the file back: a bind mount of the namespace the container's processes still hold.
    (A namespace netavark made: one the server made, SANDBOX_NETNS=server, Podman never looks at
    again once the container runs.)"""
    namespace = f"{RUN_ID}-fault-netns"
    server = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_NETNS": "podman"})
    async with Client(server.url + "/mcp") as client:
        victim, other = [structured(await client.call_tool("create_container", {}))["container_id"] for _ in range(2)]
        path = podman("inspect", "--format", "{{.NetworkSettings.SandboxKey}}", f"mcp-sandbox-{victim}").stdout.strip()
        assert path.startswith("/run/netns/"), path
        namespace_inode = os.stat(path).st_ino
        deleted = subprocess.run(["ip", "netns", "delete", Path(path).name], capture_output=True, text=True)
        assert deleted.returncode == 0 and not Path(path).exists(), (deleted.stderr, open("/proc/self/mountinfo").read())
        listing = podman("ps", "-a", "--filter", f"label=mcp-sandbox.namespace={namespace}", check=False)
        assert listing.returncode != 0 and "network namespace" in listing.stderr, listing  # the fault, as Podman has it
        await echo(client, victim, "still")
        await echo(client, other)
        deadline = time.monotonic() + 45
        while not Path(path).exists():
            assert time.monotonic() < deadline, server.log_text()[-4000:]
            await anyio.sleep(0.5)
        assert os.stat(path).st_ino == namespace_inode  # the sandbox's own namespace, not a new one
        assert "put back" in server.log_text()
        assert set(sandbox_names(namespace)) == {f"mcp-sandbox-{victim}", f"mcp-sandbox-{other}"}
        await echo(client, victim, "still")
        await client.call_tool("destroy_container", {"container_id": victim})
        assert await settled(client, namespace) == {other}
        await client.call_tool("destroy_container", {"container_id": other})
        assert await settled(client, namespace) == set()
    assert not Path(path).exists()


# --------------------------------------------------------------------------- the wall clock


def step_clock(seconds: float) -> None:
    time.clock_settime(time.CLOCK_REALTIME, time.clock_gettime(time.CLOCK_REALTIME) + seconds)


async def test_the_wall_clock_stepped_an_hour_either_way_moves_no_lifetime(start_server) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-fault-clock"
    server = start_server({"SANDBOX_NAMESPACE": namespace})
    stepped = 0.0
    try:
        async with Client(server.url + "/mcp") as client:
            made = time.monotonic()
            box = structured(await client.call_tool("create_container", {"ttl_seconds": 40}))["container_id"]
            for step in (3600.0, -3600.0):
                step_clock(step)
                stepped += step
                await anyio.sleep(2)  # the reaper has looked
                listed = structured(await client.call_tool("list_containers", {}))["containers"]
                assert [entry["container_id"] for entry in listed] == [box]
                left = structured(await client.call_tool("check_container", {"container_id": box}))["seconds_remaining"]
                expected = 40 - (time.monotonic() - made)
                assert expected - 3 <= left <= expected + 1, (left, expected)
                await echo(client, box)
            # And it ends when its 40 seconds are up, not an hour early or late.
            while box in {entry["container_id"] for entry in
                          structured(await client.call_tool("list_containers", {}))["containers"]}:
                assert time.monotonic() - made < 50
                await anyio.sleep(0.5)
            assert time.monotonic() - made >= 38
            assert "the system clock jumped +3600" in server.log_text()
            assert await settled(client, namespace) == set()
    finally:
        step_clock(-stepped)
