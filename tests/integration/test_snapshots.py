"""Snapshots (issue 13): a sandbox's files kept beyond its life and forked into new sandboxes,
through a real MCP client, on real Podman, with and without sandbox disks and under gVisor."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from conftest import (
    APP,
    ROOT,
    RUN_ID,
    ServerProcess,
    podman,
    structured,
    wait_for_command,
)
from fastmcp import Client

pytestmark = pytest.mark.anyio

# What a model's work leaves in a sandbox: text and binary files, modes (setuid too), a hard
# link, symlinks both ways, empty folders, a fifo, a changed file of the image, a deleted one,
# and a folder of the image replaced by a new one (whose old files must stay gone).
CHANGES = r"""set -e
printf 'hello\n' > /root/text.txt
head -c 300000 /dev/urandom > /root/blob.bin
chmod 640 /root/text.txt; chmod 4755 /root/blob.bin
ln /root/text.txt /root/hard.txt
mkdir -p /home/srv/empty/nested-empty
ln -s /root/text.txt /home/srv/link-abs; ln -s ../root/text.txt /home/srv/link-rel
mkfifo /home/srv/fifo
echo appended >> /etc/group
rm /etc/os-release
rm -rf /usr/sbin; mkdir /usr/sbin; echo mine > /usr/sbin/only-this
"""
STATE = r"""cd /
for p in root/text.txt root/blob.bin root/hard.txt root/owned.txt home/srv/empty home/srv/empty/nested-empty home/srv/link-abs \
         home/srv/link-rel home/srv/fifo etc/group usr/sbin; do stat -c '%n %a %u %g %F %h' $p; done
md5sum root/blob.bin etc/group root/text.txt
readlink home/srv/link-abs home/srv/link-rel
ls -a usr/sbin
test -e etc/os-release && echo os-release-present || echo os-release-gone
"""


async def run(client: Client, container_id: str, command: str, **extra: Any) -> dict[str, Any]:
    result = structured(await client.call_tool("execute_command", {"container_id": container_id, "command": command, **extra}))
    if result["status"] == "running":
        result = await wait_for_command(client, container_id, result["command_id"], seconds=120)
    return result


async def error_text(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    result = await client.call_tool(tool, arguments, raise_on_error=False)
    assert result.is_error, f"{tool}({arguments!r}) should have failed, got {result.structured_content}"
    return result.content[0].text


async def create(client: Client, **arguments: Any) -> str:
    return structured(await client.call_tool("create_container", arguments))["container_id"]


async def snapshot(client: Client, container_id: str, **arguments: Any) -> dict[str, Any]:
    return structured(await client.call_tool("snapshot_container", {"container_id": container_id, **arguments}))


def upper_dir(container_id: str, disk_base: str, namespace: str) -> Path:
    """The sandbox's writable layer on the host: on its own disk, or in Podman's overlay storage."""
    on_disk = Path(disk_base) / namespace / f"mcp-sandbox-{container_id}" / "fs" / "upper"
    if on_disk.is_dir():
        return on_disk
    found = podman("inspect", "--format", "{{.GraphDriver.Data.UpperDir}}", f"mcp-sandbox-{container_id}").stdout.strip()
    assert found, "the sandbox has no writable layer on this host"
    return Path(found)


async def fidelity_and_forks(client: Client, disk_base: str, namespace: str) -> None:
    """A snapshot holds every kind of change, forks are isolated from their source and each other,
    and forks of forks work."""
    source = await create(client)
    made = await run(client, source, CHANGES)
    assert made["exit_code"] == 0, (made["stdout"], made["stderr"])
    # Sandboxes run as root without CAP_CHOWN, so files of other owners come from elsewhere (an
    # image, a package): give one such file its owner on the host, as that would.
    assert (await run(client, source, "echo owned > /root/owned.txt"))["exit_code"] == 0
    os.chown(upper_dir(source, disk_base, namespace) / "root" / "owned.txt", 1234, 5678)
    before = await run(client, source, STATE)
    assert before["exit_code"] == 0 and "root/owned.txt 644 1234 5678" in before["stdout"], before
    assert "os-release-gone" in before["stdout"] and "only-this" in before["stdout"], before

    taken = await snapshot(client, source, name="my work")
    assert taken["name"] == "my work" and taken["source_container_id"] == source and taken["reason"] == "requested"
    assert re.fullmatch(r"snap-[0-9a-f]{32}", taken["snapshot_id"]) and taken["size_bytes"] > 300000
    fork = structured(await client.call_tool("create_container", {"snapshot_id": taken["snapshot_id"]}))
    assert fork["snapshot_id"] == taken["snapshot_id"] and fork["container_id"] != source
    forked = await run(client, fork["container_id"], STATE)
    assert forked["stdout"] == before["stdout"], (before["stdout"], forked["stdout"])
    # The fork has the usual limits.
    limits = await run(client, fork["container_id"], "cat /sys/fs/cgroup/memory/memory.limit_in_bytes "
                                                       "/sys/fs/cgroup/memory.max 2>/dev/null | head -1")
    assert limits["stdout"].strip() == str(256 * 1024 * 1024), limits

    # Isolation: what each writes stays its own.
    await run(client, fork["container_id"], "echo fork > /root/fork-only; echo changed-in-fork > /root/text.txt")
    await run(client, source, "echo source > /root/source-only")
    seen_by_source = await run(client, source, "cat /root/text.txt; ls /root")
    assert seen_by_source["stdout"].startswith("hello\n") and "fork-only" not in seen_by_source["stdout"]
    assert "source-only" not in (await run(client, fork["container_id"], "ls /root"))["stdout"]

    # A fork of the fork: the fork's changes on top of the first snapshot's.
    second = await snapshot(client, fork["container_id"])
    grandchild = await create(client, snapshot_id=second["snapshot_id"])
    seen = await run(client, grandchild, "cat /root/text.txt /root/fork-only; ls /root; ls /usr/sbin; "
                                         "test -e /etc/os-release || echo os-release-gone")
    assert seen["stdout"].split() == ["changed-in-fork", "fork", "blob.bin", "fork-only", "hard.txt", "owned.txt",
                                      "text.txt", "only-this", "os-release-gone"], seen
    listed = structured(await client.call_tool("list_snapshots", {}))["snapshots"]
    assert {s["snapshot_id"] for s in listed} >= {taken["snapshot_id"], second["snapshot_id"]}
    for container_id in (source, fork["container_id"], grandchild):
        await client.call_tool("destroy_container", {"container_id": container_id})
    # Snapshots outlive their sandboxes.
    again = await create(client, snapshot_id=taken["snapshot_id"])
    assert (await run(client, again, "cat /usr/sbin/only-this"))["stdout"] == "mine\n"
    await client.call_tool("destroy_container", {"container_id": again})
    for snapshot_id in (taken["snapshot_id"], second["snapshot_id"]):
        assert structured(await client.call_tool("delete_snapshot", {"snapshot_id": snapshot_id}))["deleted"] is True


async def test_snapshot_keeps_every_kind_of_change_and_forks_are_isolated(client: Client) -> None:
    settings = APP.sandboxes.settings
    assert APP.sandboxes.disks.enabled, "this host gives sandboxes disks (run as root, with loop devices)"
    await fidelity_and_forks(client, settings.disk_dir, settings.namespace)


async def test_snapshots_without_sandbox_disks(start_server) -> None:  # type: ignore[no-untyped-def]
    """Sandboxes run from Podman's overlay storage: the snapshot is its container's upper layer."""
    proc: ServerProcess = start_server({"SANDBOX_DISK_LIMIT_BYTES": "0"})
    async with Client(proc.url + "/mcp") as client:
        await fidelity_and_forks(client, "/nonexistent", proc.env["SANDBOX_NAMESPACE"])
    assert "sandbox disk use is NOT bounded" in proc.log_text()


async def test_snapshot_while_a_command_writes_is_consistent_and_the_sandbox_carries_on(client: Client) -> None:
    source = await create(client)
    writer = structured(await client.call_tool("execute_command", {
        "container_id": source, "timeout_seconds": 120,
        # Writes until the sandbox goes: a bounded loop ended within the first wait on a fast day.
        "command": "i=0; while true; do echo \"line $i\" >> /root/log.txt; i=$((i+1)); done"}))
    assert writer["status"] == "running", writer
    taken = await snapshot(client, source)
    fork = await create(client, snapshot_id=taken["snapshot_id"])
    # Every line the fork has is whole and in order: the files were read while nothing wrote.
    check = await run(client, fork, "awk '{ if ($0 != \"line \" NR-1) bad++ } END { print NR, bad+0 }' /root/log.txt")
    lines, bad = map(int, check["stdout"].split())
    assert lines > 0 and bad == 0, check
    # The source carried on writing after the snapshot.
    deadline = time.monotonic() + 20
    while (count := int((await run(client, source, "wc -l < /root/log.txt"))["stdout"])) <= lines:
        assert time.monotonic() < deadline, (count, lines)
        await anyio.sleep(0.2)
    for container_id in (source, fork):
        await client.call_tool("destroy_container", {"container_id": container_id})
    await client.call_tool("delete_snapshot", {"snapshot_id": taken["snapshot_id"]})


async def test_bad_snapshot_input_is_a_clear_error_and_the_server_keeps_serving(client: Client) -> None:
    for snapshot_id in ("snap-" + "0" * 32, "../../etc/passwd", "", "x" * 100):
        for tool, arguments in (("delete_snapshot", {"snapshot_id": snapshot_id}),
                                ("create_container", {"snapshot_id": snapshot_id})):
            text = await error_text(client, tool, arguments)
            if snapshot_id:
                assert "No snapshot with snapshot_id" in text and "list_snapshots" in text, text
            else:  # blank: refused with the field's name before any lookup
                assert "snapshot_id" in text and "a blank string" in text, text
    source = await create(client)
    text = await error_text(client, "snapshot_container", {"container_id": source, "name": "n" * 129})
    assert "128" in text, text
    taken = await snapshot(client, source)
    text = await error_text(client, "create_container", {"snapshot_id": taken["snapshot_id"], "image": "docker.io/library/debian:12"})
    assert "runs on the snapshot's image" in text and "omit the image" in text, text
    await client.call_tool("delete_snapshot", {"snapshot_id": taken["snapshot_id"]})
    text = await error_text(client, "create_container", {"snapshot_id": taken["snapshot_id"]})
    assert "No snapshot with snapshot_id" in text
    await client.call_tool("destroy_container", {"container_id": source})
    text = await error_text(client, "snapshot_container", {"container_id": source})
    assert "No sandbox with container_id" in text, text
    # Nothing half-made is left, and the server carries on.
    assert not list((Path(APP.sandboxes.settings.state_dir) / RUN_ID / "snapshots").glob("*.part"))
    fresh = await create(client)
    assert (await run(client, fresh, "echo still serving"))["stdout"] == "still serving\n"
    await client.call_tool("destroy_container", {"container_id": fresh})


@pytest.mark.slow
async def test_expiry_quotas_ttl_and_restart(start_server) -> None:  # type: ignore[no-untyped-def]
    env = {"SANDBOX_MAX_SNAPSHOTS_PER_TENANT": "2", "SANDBOX_SNAPSHOT_MAX_BYTES": str(2 * 1024 * 1024)}
    proc: ServerProcess = start_server(env)
    namespace = proc.env["SANDBOX_NAMESPACE"]
    store = Path(APP.sandboxes.settings.state_dir) / namespace / "snapshots"
    async with Client(proc.url + "/mcp") as client:
        # A snapshot at expiry, and the messages about the gone sandbox say where its files went.
        doomed = structured(await client.call_tool("create_container", {"ttl_seconds": 3, "snapshot_on_expiry": True}))
        assert doomed["snapshot_on_expiry"] is True
        doomed_id = doomed["container_id"]
        assert (await run(client, doomed_id, "echo 'work of an hour' > /root/work.txt"))["exit_code"] == 0
        checked = structured(await client.call_tool("check_container", {"container_id": doomed_id}))
        assert checked["snapshot_on_expiry"] is True
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            result = await client.call_tool("check_container", {"container_id": doomed_id}, raise_on_error=False)
            if result.is_error and "snap-" in result.content[0].text:
                break
            await anyio.sleep(0.5)
        message = result.content[0].text
        kept = re.search(r"snap-[0-9a-f]{32}", message).group(0)  # type: ignore[union-attr]
        assert "end of its lifetime" in message and f"create_container(snapshot_id='{kept}')" in message, message
        assert kept in await error_text(client, "execute_command", {"container_id": doomed_id, "command": "true"})
        listed = structured(await client.call_tool("list_snapshots", {}))["snapshots"]
        assert [(s["snapshot_id"], s["reason"], s["source_container_id"]) for s in listed] == [(kept, "expired", doomed_id)]
        fork = await create(client, snapshot_id=kept)
        assert (await run(client, fork, "cat /root/work.txt"))["stdout"] == "work of an hour\n"

        # Quotas: the count (the expired one counts) ...
        mine = await snapshot(client, fork, name="second")
        text = await error_text(client, "snapshot_container", {"container_id": fork})
        assert "2 snapshots" in text and "SANDBOX_MAX_SNAPSHOTS_PER_TENANT" in text and "delete_snapshot" in text, text
        await client.call_tool("delete_snapshot", {"snapshot_id": mine["snapshot_id"]})
        # ... and the bytes: nothing is kept of a snapshot over them, and the sandbox runs on.
        await run(client, fork, "head -c 3000000 /dev/urandom > /root/big.bin")
        text = await error_text(client, "snapshot_container", {"container_id": fork})
        assert "SANDBOX_SNAPSHOT_MAX_BYTES" in text and "delete_snapshot" in text, text
        assert [p.name for p in store.iterdir() if p.name.endswith(".part")] == []
        assert (await run(client, fork, "echo thawed", timeout_seconds=5))["stdout"] == "thawed\n"
        # A server that stops while a snapshot is taken leaves its sandbox frozen: freeze this
        # one as that would, and the next server thaws it.
        frozen = fork
        full_id = podman("inspect", "--format", "{{.Id}}", f"mcp-sandbox-{frozen}").stdout.strip()
        freezer = Path(f"/sys/fs/cgroup/freezer/libpod_parent/libpod-{full_id}/freezer.state")
        assert freezer.exists(), "cgroup v1 with Podman's cgroupfs manager, as on hosts of this kind"
        freezer.write_text("FROZEN")
        assert freezer.read_text().strip() in ("FROZEN", "FREEZING")
    assert proc.stop(signal.SIGTERM) == 0

    # A restart keeps snapshots; one taken under a short TTL is removed when it expires.
    again: ServerProcess = start_server({**env, "SANDBOX_NAMESPACE": namespace, "SANDBOX_SNAPSHOT_TTL_SECONDS": "3"})
    async with Client(again.url + "/mcp") as client:
        assert freezer.read_text().strip() == "THAWED"
        assert (await run(client, frozen, "echo thawed again", timeout_seconds=5))["stdout"] == "thawed again\n"
        await client.call_tool("destroy_container", {"container_id": frozen})
        listed = structured(await client.call_tool("list_snapshots", {}))["snapshots"]
        assert [s["snapshot_id"] for s in listed] == [kept]
        fork = await create(client, snapshot_id=kept)
        assert (await run(client, fork, "cat /root/work.txt"))["stdout"] == "work of an hour\n"
        short = await snapshot(client, fork)
        assert {s["snapshot_id"] for s in structured(await client.call_tool("list_snapshots", {}))["snapshots"]} == {kept, short["snapshot_id"]}
        deadline = time.monotonic() + 30  # its 3 s, then the reaper's next look removes its files
        files = (store / f"{short['snapshot_id']}.tar", store / f"{short['snapshot_id']}.json")
        while (listed := [s["snapshot_id"] for s in structured(await client.call_tool("list_snapshots", {}))["snapshots"]]) != [kept] \
                or any(path.exists() for path in files):
            assert time.monotonic() < deadline and set(listed) <= {kept, short["snapshot_id"]}, (listed, files)
            await anyio.sleep(0.25)
        assert "No snapshot" in await error_text(client, "create_container", {"snapshot_id": short["snapshot_id"]})
        await client.call_tool("destroy_container", {"container_id": fork})
        await client.call_tool("delete_snapshot", {"snapshot_id": kept})
    assert sorted(p.name for p in store.iterdir() if p.is_file()) == []


async def test_another_tenants_snapshot_answers_like_a_missing_one(start_server) -> None:  # type: ignore[no-untyped-def]
    proc: ServerProcess = start_server({"AUTH_TOKENS": "snap-token-a-0123456789,snap-token-b-0123456789"})
    async with Client(proc.url + "/mcp", auth="snap-token-a-0123456789") as a, \
            Client(proc.url + "/mcp", auth="snap-token-b-0123456789") as b:
        source = await create(a)
        await run(a, source, "echo secret > /root/secret.txt")
        taken = (await snapshot(a, source))["snapshot_id"]
        missing = "snap-" + "1" * 32
        assert structured(await b.call_tool("list_snapshots", {}))["snapshots"] == []
        for tool, arguments in (("delete_snapshot", {}), ("create_container", {})):
            theirs = await error_text(b, tool, {**arguments, "snapshot_id": taken})
            nobody = await error_text(b, tool, {**arguments, "snapshot_id": missing})
            assert theirs == nobody.replace(missing, taken), (theirs, nobody)
        theirs = await error_text(b, "snapshot_container", {"container_id": source})
        nobody = await error_text(b, "snapshot_container", {"container_id": "2" * 32})
        assert theirs == nobody.replace("2" * 32, source)
        # The owner still has it, whole.
        fork = await create(a, snapshot_id=taken)
        assert (await run(a, fork, "cat /root/secret.txt"))["stdout"] == "secret\n"
        for container_id in (source, fork):
            await a.call_tool("destroy_container", {"container_id": container_id})
        await a.call_tool("delete_snapshot", {"snapshot_id": taken})


async def test_snapshot_of_a_nearly_full_disk(start_server) -> None:  # type: ignore[no-untyped-def]
    proc: ServerProcess = start_server({"SANDBOX_DISK_LIMIT_BYTES": str(64 * 1024 * 1024)})
    async with Client(proc.url + "/mcp") as client:
        source = await create(client)
        filled = await run(client, source, "dd if=/dev/urandom of=/root/fill bs=1M count=100 2>&1; sync; "
                                           "md5sum /root/fill; df -k / | tail -1")
        assert "No space left on device" in filled["stdout"], filled
        md5 = re.search(r"([0-9a-f]{32})  /root/fill", filled["stdout"]).group(1)  # type: ignore[union-attr]
        used = int(filled["stdout"].splitlines()[-1].split()[-2].rstrip("%"))
        assert used >= 95, filled
        taken = await snapshot(client, source)
        assert taken["size_bytes"] > 50 * 1024 * 1024
        fork = await create(client, snapshot_id=taken["snapshot_id"])
        assert (await run(client, fork, "md5sum /root/fill"))["stdout"].split()[0] == md5
        for container_id in (source, fork):
            await client.call_tool("destroy_container", {"container_id": container_id})
        await client.call_tool("delete_snapshot", {"snapshot_id": taken["snapshot_id"]})


@pytest.mark.slow
async def test_snapshots_under_gvisor(start_server) -> None:  # type: ignore[no-untyped-def]
    if not Path("/usr/bin/runsc").exists():
        pytest.fail("gVisor (runsc) is not installed: run the tests with scripts/test.sh, which installs it.")
    proc: ServerProcess = start_server({"SANDBOX_RUNTIME": str(ROOT / "scripts" / "runsc-no-network"),
                                        "SANDBOX_NETWORK": "none"})
    async with Client(proc.url + "/mcp") as client:
        source = await create(client)
        made = await run(client, source, "uname -r; head -c 200000 /dev/urandom > /root/blob; md5sum /root/blob; "
                                         "rm /etc/os-release; mkdir /root/empty")
        kernel, md5 = made["stdout"].split()[0], made["stdout"].split()[1]
        assert kernel.startswith("4.4.0"), made
        taken = await snapshot(client, source)
        fork = await create(client, snapshot_id=taken["snapshot_id"])
        seen = await run(client, fork, "uname -r; md5sum /root/blob; test -e /etc/os-release || echo gone; ls -d /root/empty")
        assert seen["stdout"].split() == [kernel, md5, "/root/blob", "gone", "/root/empty"], seen
        for container_id in (source, fork):
            await client.call_tool("destroy_container", {"container_id": container_id})
        await client.call_tool("delete_snapshot", {"snapshot_id": taken["snapshot_id"]})
