"""Attacks on the server, each contained: authentication, tenants, DNS rebinding, quotas,
resource bombs inside sandboxes, escapes through file links, and faults of the server itself."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import (
    ROOT,
    RUN_ID,
    ServerProcess,
    disk_dir,
    podman,
    sandbox_names,
    sandboxes_left,
    structured,
    wait_for_command,
    wait_until,
)
from fastmcp import Client

from mcp_container_sandbox.sandbox.backend.disks import SPARE_PREFIX

pytestmark = pytest.mark.anyio

TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef"}
MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
INITIALIZE = (b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":"2025-06-18",'
              b'"capabilities":{},"clientInfo":{"name":"t","version":"1"}}}')


@pytest.fixture
def secured(start_server) -> ServerProcess:  # type: ignore[no-untyped-def]
    return start_server({"AUTH_TOKENS": ",".join(TOKENS.values()), "SANDBOX_MAX_PER_TENANT": "2"})


def client_for(server: ServerProcess, who: str) -> Client:
    return Client(server.url + "/mcp", auth=TOKENS[who])


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", "Bearer", "Basic YWxpY2U6eA==", "alice-token-0123456789abcdef"])
@pytest.mark.parametrize("endpoint", ["/", "/mcp"])
def test_mcp_without_a_valid_token_is_401(secured: ServerProcess, authorization: str | None, endpoint: str) -> None:
    headers = dict(MCP_HEADERS)
    if authorization is not None:
        headers["Authorization"] = authorization
    response = httpx.post(secured.url + endpoint, content=INITIALIZE, headers=headers)
    assert response.status_code == 401


async def test_health_and_file_links_stay_public_with_tokens(secured: ServerProcess) -> None:
    assert httpx.get(secured.url + "/health").status_code == 200
    assert httpx.get(secured.url + "/files/" + "A" * 32).status_code == 404
    async with client_for(secured, "alice") as alice:  # a real link, fetched without any token
        container_id = structured(await alice.call_tool("create_container", {}))["container_id"]
        await alice.call_tool("write_file", {"container_id": container_id, "path": "/tmp/shared.txt", "content": "hi"})
        link = structured(await alice.call_tool("get_file_url", {"container_id": container_id, "path": "/tmp/shared.txt"}))
        fetched = httpx.get(link["url"])
        assert fetched.status_code == 200 and fetched.text == "hi"
        await alice.call_tool("destroy_container", {"container_id": container_id})


async def test_each_token_is_a_tenant_that_cannot_see_the_others_sandboxes(secured: ServerProcess) -> None:
    async with client_for(secured, "alice") as alice, client_for(secured, "bob") as bob:
        mine = structured(await alice.call_tool("create_container", {}))["container_id"]
        await alice.call_tool("execute_command", {"container_id": mine, "command": "echo secret > /tmp/s.txt"})
        missing = "f" * 32
        for tool, extra in [
            ("execute_command", {"command": "cat /tmp/s.txt"}),
            ("check_container", {}),
            ("get_file_url", {"path": "/tmp/s.txt"}),
            ("destroy_container", {}),
        ]:
            theirs = await bob.call_tool(tool, {"container_id": mine, **extra}, raise_on_error=False)
            nobody = await bob.call_tool(tool, {"container_id": missing, **extra}, raise_on_error=False)
            assert theirs.is_error and nobody.is_error
            # Exactly the answer for a sandbox that does not exist.
            assert theirs.content[0].text.replace(mine, "ID") == nobody.content[0].text.replace(missing, "ID")
        still = structured(await alice.call_tool("execute_command", {"container_id": mine, "command": "cat /tmp/s.txt"}))
        assert still["stdout"] == "secret\n"
        await alice.call_tool("destroy_container", {"container_id": mine})


async def test_per_tenant_quota_and_a_destroyed_sandbox_frees_its_place(secured: ServerProcess) -> None:
    async with client_for(secured, "alice") as alice, client_for(secured, "bob") as bob:
        ids = [structured(await alice.call_tool("create_container", {}))["container_id"] for _ in range(2)]
        third = await alice.call_tool("create_container", {}, raise_on_error=False)
        assert third.is_error and "SANDBOX_MAX_PER_TENANT" in third.content[0].text
        bobs = structured(await bob.call_tool("create_container", {}))["container_id"]  # bob has his own places
        await alice.call_tool("destroy_container", {"container_id": ids[0]})
        ids[0] = structured(await alice.call_tool("create_container", {}))["container_id"]
        for container_id in ids:
            await alice.call_tool("destroy_container", {"container_id": container_id})
        await bob.call_tool("destroy_container", {"container_id": bobs})


# --------------------------------------------------------------------------- DNS rebinding


def test_foreign_origin_is_403_and_foreign_host_421_on_the_mcp_endpoint(http_server: ServerProcess) -> None:
    for endpoint in ["/", "/mcp"]:
        evil_origin = httpx.post(http_server.url + endpoint, content=INITIALIZE,
                                 headers={**MCP_HEADERS, "Origin": "http://evil.example"})
        assert evil_origin.status_code == 403
        evil_host = httpx.post(http_server.url + endpoint, content=INITIALIZE,
                               headers={**MCP_HEADERS, "Host": "evil.example"})
        assert evil_host.status_code == 421
    same_origin = httpx.post(http_server.url + "/mcp", content=INITIALIZE,
                             headers={**MCP_HEADERS, "Origin": http_server.url})
    assert same_origin.status_code == 200
    # Health checks and shared links answer whatever Host a platform uses.
    assert httpx.get(http_server.url + "/health", headers={"Host": "healthcheck.example"}).status_code == 200


def test_allowed_origins_and_hosts_are_configurable(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"ALLOWED_ORIGINS": "https://app.example", "ALLOWED_HOSTS": "sandbox.example"})
    ok = httpx.post(server.url + "/mcp", content=INITIALIZE,
                    headers={**MCP_HEADERS, "Origin": "https://app.example", "Host": "sandbox.example"})
    assert ok.status_code == 200


def test_binding_beyond_loopback_without_tokens_warns_loudly(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"HOST": "0.0.0.0"})
    assert "without authentication" in server.log_text()


# --------------------------------------------------------------------------- inside the sandbox


async def test_fork_bomb_is_contained(client: Client, sandbox: str) -> None:
    """The bomb's process count reaches the sandbox's limit and stays there, never past it, while
    the server and a sibling sandbox go on answering and a command in the bombed sandbox runs or gets
    the limit's own error; once the bomb's time is up the sandbox answers again."""
    sibling = structured(await client.call_tool("create_container", {}))["container_id"]
    name = f"mcp-sandbox-{sandbox}"
    assert podman("inspect", "--format", "{{.HostConfig.PidsLimit}}", name).stdout.strip() == "100"
    where = podman("inspect", "--format", "{{.State.CgroupPath}}", name).stdout.strip()[1:]
    pids = Path("/sys/fs/cgroup/pids")  # cgroup v1's pids controller, else the unified hierarchy (v2)
    cgroup = (pids if pids.is_dir() else Path("/sys/fs/cgroup")) / where
    # Every process forks two more and then becomes a sleeper: the classic bomb's shells end when a
    # fork fails, so its count can fall back to nothing; this one holds every process it gets.
    bomb = structured(await client.call_tool("execute_command", {
        "container_id": sandbox, "command": "b() { b & b & exec sleep 120; }; b", "timeout_seconds": 20}))
    assert bomb["status"] == "running"
    counts: list[int] = []
    deadline = time.monotonic() + 30
    while len([count for count in counts if count >= 95]) < 10:  # at the limit, and staying there
        assert time.monotonic() < deadline, counts
        counts.append(int((cgroup / "pids.current").read_text()))
        answered = structured(await client.call_tool("execute_command", {"container_id": sibling, "command": "echo ok"}))
        assert answered["stdout"] == "ok\n"
        assert sandbox in {box["container_id"] for box in structured(await client.call_tool("list_containers", {}))["containers"]}
        await anyio.sleep(0.1)
    full = await client.call_tool("execute_command", {"container_id": sandbox, "command": "echo no room"},
                                  raise_on_error=False)
    # A pid freed by a shell whose fork failed may let it run (the server retries for 5 s); else the
    # error names the limit and what to do, never the server's machinery.
    assert ("limit of 100 processes" in full.content[0].text if full.is_error
            else structured(full)["stdout"] == "no room\n"), full
    counts.append(int((cgroup / "pids.current").read_text()))
    assert max(counts) <= 100 and counts[-1] >= 95, counts  # never past it, still at it
    await client.call_tool("destroy_container", {"container_id": sibling})
    ended = await wait_for_command(client, sandbox, bomb["command_id"], seconds=40)
    assert ended["status"] == "timed_out", ended  # its time up, the bomb's process group is killed
    deadline = time.monotonic() + 30
    while True:
        after = await client.call_tool("execute_command", {"container_id": sandbox, "command": "echo alive"},
                                       raise_on_error=False)
        if not after.is_error and structured(after)["stdout"] == "alive\n":
            break
        assert time.monotonic() < deadline, after
        await anyio.sleep(0.5)


async def test_memory_bomb_is_killed_inside_the_sandbox(client: Client, sandbox: str) -> None:
    result = structured(await client.call_tool(
        "execute_command", {"container_id": sandbox, "command": "head -c 600000000 /dev/zero | tail > /dev/null", "timeout_seconds": 60}
    ))
    while result["status"] == "running":
        await anyio.sleep(0.5)
        result = await wait_for_command(client, sandbox, result["command_id"])
    assert result["exit_code"] != 0  # tail was OOM-killed at 256 MB
    assert result["reason"] == "oom_killed" and "memory" in result["message"]
    after = structured(await client.call_tool("execute_command", {"container_id": sandbox, "command": "echo alive"}))
    assert after["stdout"] == "alive\n"


async def test_orphans_are_reaped_no_zombies(client: Client, sandbox: str) -> None:
    """Orphans are reaped by the sandbox's init. The control: a child whose parent never waits for it
    (the parent exec'd `sleep 5`) stays a zombie while that parent lives, so the check sees zombies."""
    await client.call_tool("execute_command", {"container_id": sandbox, "command":
                           "for i in 1 2 3 4 5; do (sleep 0.2 &); done; (sh -c 'sleep 0.2 & exec sleep 5' &)"})
    deadline = time.monotonic() + 10
    while True:
        ps = structured(await client.call_tool("execute_command", {"container_id": sandbox,
                                                                   "command": "ps -o pid,ppid,stat,args"}))["stdout"]
        rows = [line.split(None, 3) for line in ps.splitlines()[1:] if len(line.split(None, 3)) == 4]
        zombies = [row for row in rows if row[2].startswith("Z")]
        if zombies and not [row for row in rows if row[3] == "sleep 0.2" and not row[2].startswith("Z")]:
            break
        assert time.monotonic() < deadline, ps
        await anyio.sleep(0.2)
    control = [row[0] for row in rows if row[3] == "sleep 5"]
    assert [row[1] for row in zombies] == control, ps  # the control's child, and nothing of the orphans


@pytest.mark.parametrize("path", ["/tmp/../etc/passwd", "/tmp/link-to-passwd", "/proc/1/root/etc/passwd", "/proc/self/root/etc/passwd"])
async def test_file_links_never_read_the_host(http_server: ServerProcess, path: str) -> None:
    async with Client(http_server.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        await client.call_tool("execute_command", {"container_id": container_id,
                                                    "command": "echo 'sandbox-only:x:1:1::/:/bin/sh' >> /etc/passwd; "
                                                               "ln -sf /etc/passwd /tmp/link-to-passwd"})
        result = await client.call_tool("get_file_url", {"container_id": container_id, "path": path}, raise_on_error=False)
        if result.is_error:  # /proc/1/root is not readable without capabilities: only that refusal will do
            assert path.startswith("/proc/1/") and "cannot be read inside the sandbox" in result.content[0].text, (
                result.content[0].text)
        else:
            body = httpx.get(structured(result)["url"]).text
            assert "sandbox-only" in body
            assert body != Path("/etc/passwd").read_text()
        await client.call_tool("destroy_container", {"container_id": container_id})


async def test_megabyte_command_line_runs(client: Client, sandbox: str) -> None:
    command = ": '" + "x" * (1_000_000 - 40) + "'\necho megabyte-ok"
    result = structured(await client.call_tool("execute_command", {"container_id": sandbox, "command": command}))
    assert result["stdout"] == "megabyte-ok\n"


@pytest.mark.slow
async def test_hundreds_of_megabytes_of_output_leave_server_memory_flat(http_server: ServerProcess) -> None:
    assert http_server.process is not None
    async with Client(http_server.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        await client.call_tool("execute_command", {"container_id": container_id, "command": "echo warm"})
        before = rss_mb(http_server.process.pid)
        result = structured(await client.call_tool("execute_command", {
            "container_id": container_id, "command": "yes 0123456789 | head -c 200000000", "timeout_seconds": 300}))
        if result["status"] == "running":
            result = await wait_for_command(client, container_id, result["command_id"], seconds=120)
        assert result["stdout_bytes"] == 200_000_000 and result["truncated"] is True
        assert rss_mb(http_server.process.pid) - before < 30
        await client.call_tool("destroy_container", {"container_id": container_id})


async def test_disk_fill_is_contained_by_the_sandbox_disk(start_server) -> None:  # type: ignore[no-untyped-def]
    namespace, limit = f"{RUN_ID}-disk", 64 * 1024 * 1024
    env = {"SANDBOX_NAMESPACE": namespace, "SANDBOX_DISK_LIMIT_BYTES": str(limit), "SANDBOX_POOL_SIZE": "0"}
    first = start_server(env)
    disks = disk_dir(namespace)
    async with Client(first.url + "/mcp") as client:
        filler = structured(await client.call_tool("create_container", {}))["container_id"]
        neighbour = structured(await client.call_tool("create_container", {}))["container_id"]
        image = disks / f"mcp-sandbox-{filler}.img"
        filled = structured(await client.call_tool("execute_command", {
            "container_id": filler, "command": "df -k / | tail -1; echo keep > /keep; "
                                               "dd if=/dev/zero of=/fill bs=1M count=500", "timeout_seconds": 120}))
        if filled["status"] == "running":
            filled = await wait_for_command(client, filler, filled["command_id"], seconds=120)
        assert filled["exit_code"] != 0 and "No space left on device" in filled["stderr"], filled
        assert int(filled["stdout"].split()[1]) <= limit // 1024  # the sandbox sees a disk of its own size
        assert image.stat().st_blocks * 512 <= limit  # and takes no more on the host
        # Run from a rootfs, the sandbox does not count as a user of its image: a holder does.
        refused = podman("rmi", os.environ["SANDBOX_IMAGE"], check=False)
        assert refused.returncode != 0 and "in use" in refused.stderr, refused
        ok = structured(await client.call_tool("execute_command", {"container_id": neighbour, "command": "echo fine > /tmp/x && cat /tmp/x"}))
        assert ok["stdout"] == "fine\n"
        freed = structured(await client.call_tool("execute_command", {"container_id": filler, "command": "rm /fill && echo freed"}))
        assert freed["stdout"] == "freed\n"
        await client.call_tool("destroy_container", {"container_id": neighbour})
        await wait_until(lambda: not (disks / f"mcp-sandbox-{neighbour}.img").exists())  # removed in the background
    # As after a reboot of the host: the container stopped, its disk unmounted. A restarted
    # server mounts the disk again and starts the sandbox, with what it held.
    first.stop(signal.SIGTERM)
    podman("stop", "-t", "0", f"mcp-sandbox-{filler}")
    for mount_point in ("root", "fs"):
        subprocess.run(["umount", str(disks / f"mcp-sandbox-{filler}" / mount_point)], check=True)
    second = start_server(env)
    async with Client(second.url + "/mcp") as client:
        kept = structured(await client.call_tool("execute_command", {"container_id": filler, "command": "cat /keep"}))
        assert kept["stdout"] == "keep\n"
        await client.call_tool("destroy_container", {"container_id": filler})
    await wait_until(lambda: not image.exists()  # the server's spare disks (.spare-*) stay mounted until it stops
                     and not [line for line in Path("/proc/mounts").read_text().splitlines()
                              if namespace in line and SPARE_PREFIX not in line])


# --------------------------------------------------------------------------- faults


@pytest.mark.slow
async def test_server_killed_mid_command_restarts_with_nothing_lost(start_server) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-sigkill"
    first = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_SYNC_WAIT_SECONDS": "1"})
    async with Client(first.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        done = structured(await client.call_tool("execute_command", {"container_id": container_id, "command": "echo finished-before"}))
        running = structured(await client.call_tool("execute_command", {"container_id": container_id, "command": "sleep 3; echo after-kill"}))
        assert running["status"] == "running"
    first.stop(signal.SIGKILL)
    assert sandbox_names(namespace) == [f"mcp-sandbox-{container_id}"]
    second = start_server({"SANDBOX_NAMESPACE": namespace}, port=first.port)
    async with Client(second.url + "/mcp") as client:
        finished = await wait_for_command(client, container_id, running["command_id"])
        assert (finished["status"], finished["stdout"]) == ("completed", "after-kill\n")
        earlier = structured(await client.call_tool("check_container", {"container_id": container_id, "command_id": done["command_id"]}))
        assert earlier["command"]["stdout"] == "finished-before\n"
        await client.call_tool("destroy_container", {"container_id": container_id})
    assert sandboxes_left(namespace) == []
    started = time.monotonic()
    assert second.stop(signal.SIGTERM) == 0 and time.monotonic() - started < 10


# --------------------------------------------------------------------------- stronger isolation


@pytest.mark.slow
async def test_gvisor_runtime_runs_sandboxes_under_its_own_kernel(start_server) -> None:  # type: ignore[no-untyped-def]
    if not Path("/usr/bin/runsc").exists():
        pytest.fail("gVisor (runsc) is not installed: run the tests with scripts/test.sh, which installs it.")
    runtime = str(ROOT / "scripts" / "runsc-no-network")
    server = start_server({"SANDBOX_RUNTIME": runtime, "SANDBOX_NETWORK": "none"})
    async with Client(server.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        name = f"mcp-sandbox-{container_id}"
        kernel = structured(await client.call_tool("execute_command", {
            "container_id": container_id, "command": "uname -r; echo 'under gvisor' > /tmp/g.txt"}))
        assert kernel["exit_code"] == 0 and "4.4.0" in kernel["stdout"]  # gVisor reports its own kernel
        link = structured(await client.call_tool("get_file_url", {"container_id": container_id, "path": "/tmp/g.txt"}))
        assert httpx.get(link["url"]).content == b"under gvisor\n"
        info = podman("--runtime", runtime, "inspect", "--format", "{{.OCIRuntime}} {{.HostConfig.PidsLimit}}", name)
        # The wrapper widens --pids-limit=100 by gVisor's own host threads: 70 + 100 x 12.
        assert info.stdout.split()[0].endswith("runsc-no-network") and info.stdout.split()[1] == "1270"
        # Under load: 40 background processes and commands beside them (runsc panicked at a
        # handful before the wrapper widened the host pids limit by gVisor's own threads).
        busy = structured(await client.call_tool("execute_command", {"container_id": container_id, "command":
            "i=0; while [ $i -lt 40 ]; do sleep 30 & i=$((i+1)); done; sleep 1; ps -o args | grep -c '^sleep 30$'"}))
        if busy["status"] == "running":  # past the sync wait: followed to its end
            busy = await wait_for_command(client, container_id, busy["command_id"])
        assert busy["stdout"].strip() == "40", busy
        for _ in range(5):
            again = structured(await client.call_tool("execute_command", {"container_id": container_id, "command": "cat /tmp/g.txt"}))
            assert again["stdout"] == "under gvisor\n"
        slow = structured(await client.call_tool("execute_command", {"container_id": container_id, "command": "sleep 60", "timeout_seconds": 1}))
        assert slow["status"] == "timed_out"
        # A fork bomb under gVisor ends its own sandbox at worst; the server and others carry on.
        other = structured(await client.call_tool("create_container", {}))["container_id"]
        bomb = structured(await client.call_tool("execute_command", {
            "container_id": container_id, "command": "bomb() { bomb | bomb & }; bomb", "timeout_seconds": 5}))
        if bomb["status"] == "running":
            bomb = (await wait_for_command(client, container_id, bomb["command_id"]))
        assert bomb["status"] in ("completed", "timed_out", "killed"), bomb
        alive = structured(await client.call_tool("execute_command", {"container_id": other, "command": "echo alive"}))
        assert alive["stdout"] == "alive\n"
        for sandbox in (container_id, other):
            await client.call_tool("destroy_container", {"container_id": sandbox}, raise_on_error=False)
    # runsc cannot pass a descriptor into its sandbox: the channels went through podman exec's pipes.
    assert "cannot pass a descriptor into sandboxes" in server.log_text()
