"""Named volumes (create_volume, list_volumes, delete_volume; create_container(volumes=[...])): shared
between sandboxes at once, read-write or read-only; the size enforced inside (ENOSPC) and nowhere
else; a tenant's own; kept across a restart of the server and the sandboxes that used them; not in
snapshots; not deleted while mounted. Through a real server process and FastMCP's client, on real
Podman, with and without per-sandbox disks, and under gVisor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import ROOT, RUN_ID, disk_dir, sandbox_names, wait_until
from fastmcp import Client
from test_interactive import call, refused

pytestmark = pytest.mark.anyio
TOKENS = ("token-a-volumes-0123", "token-b-volumes-0123")
MB = 1024 * 1024


async def run(client: Client, container_id: str, command: str) -> dict[str, Any]:
    return await call(client, "execute_command", container_id=container_id, command=command, timeout_seconds=60)


def volume_mounts(namespace: str) -> list[str]:
    """The volume mounts of a namespace, as the host's mount table holds them."""
    folder = str(disk_dir(namespace) / ".volumes")
    return [line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
            if line.split()[1].startswith(folder + "/")]


async def test_a_volume_is_shared_bounded_private_and_kept(start_server) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-volumes"
    env = {"SANDBOX_NAMESPACE": namespace, "AUTH_TOKENS": ",".join(TOKENS),
           "SANDBOX_MAX_VOLUMES_PER_TENANT": "2", "SANDBOX_VOLUME_MAX_BYTES": str(64 * MB)}
    server = start_server(env)
    async with Client(server.url + "/mcp", auth=TOKENS[0]) as mine, Client(server.url + "/mcp", auth=TOKENS[1]) as theirs:
        made = await call(mine, "create_volume", name="shared", size_mb=16)
        assert made["name"] == "shared" and made["size_mb"] == 16
        writer = (await call(mine, "create_container", volumes=[{"name": "shared", "path": "/data"}]))["container_id"]
        reader_made = await call(mine, "create_container", volumes=[{"name": "shared", "path": "/mnt/ro", "read_only": True}])
        reader = reader_made["container_id"]
        assert reader_made["volumes"] == [{"name": "shared", "path": "/mnt/ro", "read_only": True}]

        # Several sandboxes at once: what one writes, the other reads; the read-only one cannot write.
        assert (await run(mine, writer, "echo from-writer > /data/note && sync"))["exit_code"] == 0
        assert (await run(mine, reader, "cat /mnt/ro/note"))["stdout"] == "from-writer\n"
        denied = await run(mine, reader, "echo x > /mnt/ro/other")
        assert denied["exit_code"] != 0 and "Read-only file system" in denied["stderr"]

        # The size is the volume's own: ENOSPC inside, and the host holds no more than the size.
        full = await run(mine, writer, "dd if=/dev/zero of=/data/big bs=1M count=40 2>&1; echo rc=$?")
        assert "No space left on device" in full["stdout"] and "rc=0" not in full["stdout"]
        images = list(disk_dir(namespace).glob(".volumes/*/shared.img"))
        assert len(images) == 1 and images[0].stat().st_blocks * 512 <= 16 * MB
        assert (await run(mine, writer, "rm /data/big && echo ok > /data/after && cat /data/after"))["stdout"] == "ok\n"

        listed = (await call(mine, "list_volumes"))["volumes"]
        assert [v["name"] for v in listed] == ["shared"] and sorted(listed[0]["mounted_by"]) == sorted([writer, reader])
        assert listed[0]["used_bytes"] > 0
        in_use = await refused(mine, "delete_volume", name="shared")
        assert "is mounted by" in in_use and writer in in_use and reader in in_use

        # Another tenant's volume is no volume at all to them; they may have one of the same name.
        assert (await call(theirs, "list_volumes"))["volumes"] == []
        for said in (await refused(theirs, "create_container", volumes=[{"name": "shared", "path": "/data"}]),
                     await refused(theirs, "delete_volume", name="shared")):
            assert "No volume named 'shared'" in said
        assert (await call(theirs, "create_volume", name="shared", size_mb=8))["size_mb"] == 8

        # Quotas, and what is wrong with a request, said.
        assert "SANDBOX_VOLUME_MAX_BYTES" in await refused(mine, "create_volume", name="big", size_mb=60)
        await call(mine, "create_volume", name="second", size_mb=8)
        assert "SANDBOX_MAX_VOLUMES_PER_TENANT" in await refused(mine, "create_volume", name="third", size_mb=8)
        assert "already have a volume named 'shared'" in await refused(mine, "create_volume", name="shared", size_mb=8)
        for bad_name in ("Not Valid", "x.img", "-x"):  # a '.' could meet another volume's files
            assert "name is 1 to 63" in await refused(mine, "create_volume", name=bad_name, size_mb=8)
        for path in ("relative/path", "/proc/x", "/", "/data/../etc", "/var/lib/mcp-sandbox/x"):
            said = await refused(mine, "create_container", volumes=[{"name": "second", "path": path}])
            assert "path" in said or "cannot be mounted at" in said, (path, said)
        twice = await refused(mine, "create_container", volumes=[{"name": "shared", "path": "/a"},
                                                                 {"name": "second", "path": "/a/b"}])
        assert "/a" in twice
        assert "extra" in (await refused(mine, "create_container", volumes=[{"name": "shared", "path": "/d", "rw": 1}])).lower()

        # Snapshots do not hold volumes, and say so; a fork gets none.
        snapshot = await call(mine, "snapshot_container", container_id=writer)
        assert "volumes" in snapshot.get("note", "") and "not" in snapshot["note"]
        fork = (await call(mine, "create_container", snapshot_id=snapshot["snapshot_id"]))["container_id"]
        assert (await run(mine, fork, "test -e /data/note; echo $?"))["stdout"] == "1\n"
        await call(mine, "destroy_container", container_id=fork)

    # A restart of the server: the volumes, their files and the sandboxes mounting them stay.
    server.stop()
    server = start_server(env, port=server.port)
    async with Client(server.url + "/mcp", auth=TOKENS[0]) as mine:
        assert sorted(v["name"] for v in (await call(mine, "list_volumes"))["volumes"]) == ["second", "shared"]
        assert (await run(mine, reader, "cat /mnt/ro/after"))["stdout"] == "ok\n"
        checked = await call(mine, "check_container", container_id=writer)
        assert checked["volumes"] == [{"name": "shared", "path": "/data", "read_only": False}]
        assert "is mounted by" in await refused(mine, "delete_volume", name="shared")  # known after the restart
        for container_id in (writer, reader):
            await call(mine, "destroy_container", container_id=container_id)
        await wait_until(lambda: not sandbox_names(namespace))
        # The sandboxes that used it are gone; a new one finds the files.
        later = (await call(mine, "create_container", volumes=[{"name": "shared", "path": "/data"}]))["container_id"]
        assert (await run(mine, later, "cat /data/note"))["stdout"] == "from-writer\n"
        await call(mine, "destroy_container", container_id=later)
        await wait_until(lambda: not sandbox_names(namespace))
        for name in ("shared", "second"):
            assert (await call(mine, "delete_volume", name=name))["deleted"] is True
        assert (await call(mine, "list_volumes"))["volumes"] == []
        assert "No volume named" in await refused(mine, "delete_volume", name="shared")
    async with Client(server.url + "/mcp", auth=TOKENS[1]) as theirs:
        await call(theirs, "delete_volume", name="shared")
    assert volume_mounts(namespace) == [] and not list(disk_dir(namespace).glob(".volumes/*/*.img"))


async def test_volumes_without_sandbox_disks_and_under_gvisor(start_server) -> None:  # type: ignore[no-untyped-def]
    if not Path("/usr/bin/runsc").exists():
        pytest.fail("gVisor (runsc) is not installed: run the tests with scripts/test.sh, which installs it.")
    namespace = f"{RUN_ID}-volumes-gvisor"
    plain = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_DISK_LIMIT_BYTES": "0"})
    async with Client(plain.url + "/mcp") as client:
        await call(client, "create_volume", name="plain", size_mb=8)
        made = (await call(client, "create_container", volumes=[{"name": "plain", "path": "/work/shared"}]))["container_id"]
        full = await run(client, made, "echo one > /work/shared/f; dd if=/dev/zero of=/work/shared/big bs=1M count=20 2>&1")
        assert "No space left on device" in full["stdout"]
        await call(client, "destroy_container", container_id=made)
    plain.stop()
    runtime = str(ROOT / "scripts" / "runsc-no-network")
    gvisor = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_RUNTIME": runtime, "SANDBOX_NETWORK": "none"})
    async with Client(gvisor.url + "/mcp") as client:
        made = (await call(client, "create_container", volumes=[{"name": "plain", "path": "/data"}]))["container_id"]
        under = await run(client, made, "uname -r; cat /data/f; rm /data/big; echo two >> /data/f; "
                                        "dd if=/dev/zero of=/data/big bs=1M count=20 2>&1")
        assert "4.4.0" in under["stdout"] and "one\n" in under["stdout"]
        assert "No space left on device" in under["stdout"]
        await call(client, "destroy_container", container_id=made)
        assert "is mounted by" not in str(await call(client, "delete_volume", name="plain"))
    assert volume_mounts(namespace) == []
