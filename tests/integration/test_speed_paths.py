"""The fast paths behave like the slow ones: the warm pool and the persistent command channel,
including what happens when the channel dies or the server restarts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from conftest import (
    APP,
    ROOT,
    RUN_ID,
    podman,
    sandbox_names,
    structured,
    wait_for_command,
    wait_until,
)
from fastmcp import Client

from mcp_container_sandbox.sandbox.backend.disks import SPARE_PREFIX, SPARES
from mcp_container_sandbox.sandbox.pool import BURST_SECONDS

pytestmark = pytest.mark.anyio


def pooled_names(namespace: str) -> set[str]:
    out = podman("ps", "-a", "--format", "{{.Names}}", "--filter", f"label=mcp-sandbox.namespace={namespace}",
                 "--filter", "label=mcp-sandbox.pooled=true").stdout
    return set(out.split())


def ended(pid: int) -> bool:
    """The process is gone, or a zombie its parent has yet to reap."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def channel_processes(container_id: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"exec (-i|--preserve-fds=1) mcp-sandbox-{container_id} /run/mcp-sandbox/agent"],
                         capture_output=True, text=True).stdout
    return [int(pid) for pid in out.split()]


@pytest.mark.slow
async def test_pool_hands_out_each_sandbox_once_with_lifetime_from_hand_out(start_server) -> None:
    namespace = f"{RUN_ID}-pool"
    server = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_POOL_SIZE": "2", "SANDBOX_TTL_SECONDS": "60"})
    await wait_until(lambda: len(pooled_names(namespace)) == 2)
    ready = pooled_names(namespace)
    await anyio.sleep(5)  # the pool members age; a handed-out sandbox's lifetime must not
    async with Client(server.url + "/mcp") as client:
        first = structured(await client.call_tool("create_container", {}))
        second = structured(await client.call_tool("create_container", {}))
        burst_ended = time.monotonic() + BURST_SECONDS
        assert first["container_id"] != second["container_id"]
        assert {f"mcp-sandbox-{first['container_id']}", f"mcp-sandbox-{second['container_id']}"} == ready
        info = structured(await client.call_tool("check_container", {"container_id": first["container_id"]}))
        assert info["seconds_remaining"] >= 58
        ran = structured(await client.call_tool("execute_command", {"container_id": first["container_id"], "command": "echo pooled"}))
        assert ran["stdout"] == "pooled\n"
        # The pool refills with new sandboxes, never the ones handed out.
        await wait_until(lambda: len(pooled_names(namespace) - ready) == 2)
        handed_out = {first["container_id"], second["container_id"]}

    # After a restart the handed-out sandboxes keep their lifetime, and the unclaimed
    # pool members go back to the pool: nothing is handed out twice, nothing leaks.
    server.stop(signal.SIGTERM)
    restarted = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_POOL_SIZE": "2", "SANDBOX_TTL_SECONDS": "60"},
                             port=server.port)
    async with Client(restarted.url + "/mcp") as client:
        info = structured(await client.call_tool("check_container", {"container_id": first["container_id"]}))
        assert 40 <= info["seconds_remaining"] <= 60
        # A burst of its own (else the pool, which recalls the two before the restart, would grow to three).
        await anyio.sleep(max(0.0, burst_ended - time.monotonic()))
        third = structured(await client.call_tool("create_container", {}))
        assert third["container_id"] not in handed_out
        for container_id in [*handed_out, third["container_id"]]:
            await client.call_tool("destroy_container", {"container_id": container_id})
    # Just the refilled pool, once the destroyed ones are gone (they go in the background: a count of
    # two can pass while one of them is still there and the pool not yet refilled).
    await wait_until(lambda: len(sandbox_names(namespace)) == 2 and set(sandbox_names(namespace)) == pooled_names(namespace))
    assert len(pooled_names(namespace)) == 2 and not set(sandbox_names(namespace)) & {f"mcp-sandbox-{c}" for c in handed_out}


@pytest.mark.slow
async def test_the_pool_grows_after_a_burst_of_creates_and_shrinks_back_when_idle(start_server) -> None:
    namespace = f"{RUN_ID}-burst"
    server = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_POOL_SIZE": "1", "SANDBOX_POOL_MAX": "4",
                           "SANDBOX_POOL_IDLE_SECONDS": "10"})

    def pool() -> dict:
        return httpx.get(server.url + "/health", timeout=10).json()["pool"]

    def unclaimed() -> int:  # pooled sandboxes in Podman, less the ones handed out (named in created)
        return len(pooled_names(namespace) - {f"mcp-sandbox-{c}" for c in created})

    created: list[str] = []
    await wait_until(lambda: pool()["ready"] == 1)
    assert pool() == {"ready": 1, "starting": 0, "target": 1, "size": 1, "max": 4}
    async with Client(server.url + "/mcp") as client:
        async def create() -> None:
            created.append(structured(await client.call_tool("create_container", {}))["container_id"])

        async with anyio.create_task_group() as group:  # a burst of 6: one from the pool, five it had not
            for _ in range(6):
                group.start_soon(create)
        assert len(set(created)) == 6
        assert pool()["target"] == 4  # the burst, within SANDBOX_POOL_MAX
        await wait_until(lambda: pool()["ready"] == 4 and unclaimed() == 4, seconds=60)
        # Idle for SANDBOX_POOL_IDLE_SECONDS: back to SANDBOX_POOL_SIZE, the extra ones removed.
        await wait_until(lambda: pool()["ready"] == 1 and unclaimed() == 1, seconds=10 + 5 + 30)
        for container_id in created:  # what was handed out is untouched by the shrinking
            ran = structured(await client.call_tool("execute_command", {"container_id": container_id, "command": "echo up"}))
            assert ran["stdout"] == "up\n"
            await client.call_tool("destroy_container", {"container_id": container_id})
    await wait_until(lambda: len(sandbox_names(namespace)) == 1)  # the pool's one: nothing else is left
    assert set(sandbox_names(namespace)) == pooled_names(namespace)


RUNSC = str(ROOT / "scripts" / "runsc-no-network")


@pytest.mark.slow
@pytest.mark.parametrize(
    ("before", "after", "shape"),
    [
        ({}, {"SANDBOX_NETWORK": "none"}, "network"),
        ({"SANDBOX_NETWORK": "none"}, {"SANDBOX_NETWORK": "none", "SANDBOX_RUNTIME": RUNSC}, "runtime"),
    ],
    ids=["network", "runtime"],
)
async def test_pool_made_under_another_configuration_is_destroyed_not_handed_out(
    start_server, before: dict[str, str], after: dict[str, str], shape: str  # type: ignore[no-untyped-def]
) -> None:
    """An operator who tightens the configuration and restarts gets only sandboxes made under it."""
    namespace = f"{RUN_ID}-pool-{shape}"
    first = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_POOL_SIZE": "2", **before})
    await wait_until(lambda: len(pooled_names(namespace)) == 2, seconds=60)
    old_pool = pooled_names(namespace)
    first.stop(signal.SIGTERM)
    assert pooled_names(namespace) == old_pool  # left running for the next start

    second = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_POOL_SIZE": "2", **after})
    async with Client(second.url + "/mcp") as client:
        for _ in range(3):
            container_id = structured(await client.call_tool("create_container", {}))["container_id"]
            name = f"mcp-sandbox-{container_id}"
            assert name not in old_pool
            ran = structured(await client.call_tool("execute_command", {
                "container_id": container_id, "command": "ls /sys/class/net; uname -r"}))
            runtime = podman("inspect", "--format", "{{.OCIRuntime}}", name).stdout.strip()
            if shape == "network":
                assert ran["stdout"].split()[0] == "lo" and "eth0" not in ran["stdout"], ran
            else:
                assert runtime.endswith("runsc-no-network") and "4.4.0" in ran["stdout"], (runtime, ran)
            await client.call_tool("destroy_container", {"container_id": container_id})
    assert not old_pool & set(sandbox_names(namespace))
    assert "made under another configuration" in second.log_text() and f"{shape}:" in second.log_text()


async def test_a_killed_channel_process_loses_no_command(start_server) -> None:
    """The host's podman exec of a channel killed: over a socket the agent outlives it and goes on
    serving, over pipes the channel reopens; either way the next command runs and the running one
    keeps its result."""
    server = start_server({"SANDBOX_SYNC_WAIT_SECONDS": "1"})
    async with Client(server.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        running = structured(await client.call_tool(
            "execute_command", {"container_id": container_id, "command": "sleep 3; echo survived"}
        ))
        assert running["status"] == "running"
        pids = channel_processes(container_id)
        assert len(pids) == 1
        subprocess.run(["kill", "-9", str(pids[0])], check=True)
        await wait_until(lambda: ended(pids[0]))
        after = structured(await client.call_tool("execute_command", {"container_id": container_id, "command": "echo reopened"}))
        assert after["stdout"] == "reopened\n"
        finished = await wait_for_command(client, container_id, running["command_id"])
        assert (finished["status"], finished["exit_code"], finished["stdout"]) == ("completed", 0, "survived\n")
        await client.call_tool("destroy_container", {"container_id": container_id})


async def test_agent_killed_inside_the_sandbox_is_recovered(start_server) -> None:
    server = start_server()
    async with Client(server.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        assert structured(await client.call_tool("execute_command", {"container_id": container_id, "command": "true"}))["exit_code"] == 0
        # Under runc the channel is a socket passed into the sandbox: the agent reads and writes it directly.
        full_id = podman("inspect", "--format", "{{.Id}}", f"mcp-sandbox-{container_id}").stdout.strip()
        agents = [pid for pid in subprocess.run(["pgrep", "-f", "^/run/mcp-sandbox/agent [0-9]+ fd3$"], capture_output=True,
                                                text=True).stdout.split() if full_id in Path(f"/proc/{pid}/cgroup").read_text()]
        assert len(agents) == 1, agents
        ends = {os.readlink(f"/proc/{agents[0]}/fd/{fd}") for fd in (0, 1)}
        assert len(ends) == 1 and ends.pop().startswith("socket:["), ends
        podman("exec", f"mcp-sandbox-{container_id}", "sh", "-c", "kill -9 $(pidof agent)")
        await wait_until(lambda: ended(int(agents[0])))
        result = structured(await client.call_tool("execute_command", {"container_id": container_id, "command": "echo back"}))
        assert (result["exit_code"], result["stdout"]) == (0, "back\n")
        await client.call_tool("destroy_container", {"container_id": container_id})


async def test_without_the_agent_commands_still_run_through_podman_exec(start_server) -> None:
    server = start_server({"SANDBOX_AGENT": "/nonexistent/sandbox-agent"})
    async with Client(server.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        result = structured(await client.call_tool("execute_command", {"container_id": container_id, "command": "echo slow-path; exit 4"}))
        assert (result["exit_code"], result["stdout"]) == (4, "slow-path\n")
        assert channel_processes(container_id) == []
        tail = structured(await client.call_tool("check_container", {
            "container_id": container_id, "command_id": result["command_id"], "stdout_offset": 5}))["command"]
        assert tail["stdout"] == "path\n"
        written = await client.call_tool("write_file", {"container_id": container_id, "path": "/tmp/a/b.txt", "content": "x y"})
        assert written.structured_content["size_bytes"] == 3
        listed = structured(await client.call_tool("check_container", {"container_id": container_id}))["commands"]
        assert [c["command_id"] for c in listed] == [result["command_id"]]
        await client.call_tool("destroy_container", {"container_id": container_id})


async def test_a_new_sandbox_gets_its_helpers_from_its_disk_and_its_channel_before_its_first_command(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    if not APP.sandboxes.disks.enabled:
        pytest.skip(f"no sandbox disks here: {APP.sandboxes.disks.why_not}")
    runtime = APP.sandboxes.containers.exec_runtime
    installs: list[str] = []
    install = runtime.install_helpers

    async def counted(sandbox: Any) -> None:
        installs.append(sandbox.container_id)
        await install(sandbox)

    monkeypatch.setattr(runtime, "install_helpers", counted)
    container_id = structured(await client.call_tool("create_container", {}))["container_id"]
    # The channel is opened in the background while the creator reads the answer.
    await wait_until(lambda: APP.sandboxes.channels.open_one(container_id) is not None, seconds=20)
    ran = structured(await client.call_tool("execute_command", {
        "container_id": container_id,
        "command": "cmp /var/lib/mcp-sandbox/.helpers/agent /run/mcp-sandbox/agent && ls /run/mcp-sandbox"}))
    assert ran["exit_code"] == 0 and "agent" in ran["stdout"] and "lib-" in ran["stdout"], ran
    assert installs == []  # no podman exec put them there
    await client.call_tool("destroy_container", {"container_id": container_id})


async def test_a_create_takes_a_disk_made_ahead_and_another_is_made_for_the_next(
        client: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    disks = APP.sandboxes.disks
    if not disks.enabled:
        pytest.skip(f"no sandbox disks here: {disks.why_not}")
    pool = APP.sandboxes.pool

    def settled() -> bool:  # the pool makes its sandboxes (on spares too) in the background
        state = pool.describe()
        return state["ready"] >= state["target"] and not state["starting"] and len(disks._spares) == SPARES

    await wait_until(settled, seconds=60)
    spares = list(disks._spares)
    for spare in spares:
        assert os.path.ismount(disks.dir / spare / "fs")
    ran: list[tuple[str, ...]] = []
    run = disks._run

    async def counted(*argv: str) -> None:
        ran.append(argv)
        await run(*argv)

    monkeypatch.setattr(disks, "_run", counted)
    # network=false: not from the pool, so the create makes its sandbox (and its disk) itself
    container_id = structured(await client.call_tool("create_container", {"network": False}))["container_id"]
    name = f"mcp-sandbox-{container_id}"
    # No disk was made for it (what was made meanwhile is the next spare): only its overlay was mounted.
    made = [" ".join(argv) for argv in ran if argv[0] == "mkfs.ext4" or "loop,nodev" in argv]
    assert all(SPARE_PREFIX in line and name not in line for line in made), ran
    assert [argv for argv in ran if "overlay" in argv and str(disks.root(name)) in argv], ran
    assert not (disks.dir / spares[0]).exists() and disks.image_file(name).exists()
    assert os.path.ismount(disks.dir / name / "fs") and os.path.ismount(disks.root(name))
    wrote = structured(await client.call_tool("execute_command", {
        "container_id": container_id, "command": "echo on-its-disk > /tmp/spare-check && df -k / | tail -1"}))
    assert wrote["exit_code"] == 0, wrote
    assert (disks.upper(name) / "tmp" / "spare-check").read_text() == "on-its-disk\n"
    limit_kb = disks.limit_bytes // 1024
    assert 0.9 * limit_kb < int(wrote["stdout"].split()[1]) <= limit_kb, wrote  # the sandbox's own disk, as before
    await wait_until(lambda: len(disks._spares) == SPARES and spares[0] not in disks._spares, seconds=30)
    await client.call_tool("destroy_container", {"container_id": container_id})
    await wait_until(lambda: not disks.exists(name), seconds=30)
