"""The server on the hosts and images users really have: a desktop client's short PATH, rootless
Podman that would ignore the limits, an image with a read-only root and no /var, an OOM kill in
a sandbox, durations true to the millisecond on both command paths, many creates in a row, uvloop
installed beside the server, and a sandbox bridge with all of its 1,023 ports taken."""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import anyio
import httpx
import pytest
from conftest import (
    NAMESPACES,
    ROOT,
    RUN_ID,
    bridge_of,
    free_port,
    podman,
    sandboxes_left,
    structured,
    wait_for_command,
    wait_until,
)
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from mcp_container_sandbox.sandbox.network.egress import DEFAULT_NETWORK
from mcp_container_sandbox.sandbox.network.egress_rules import BRIDGE_MAX_PORTS

pytestmark = pytest.mark.anyio

DESKTOP_PATH = "/usr/local/bin:/usr/bin:/bin"  # what Claude Desktop and others hand a stdio server
MINIMAL_IMAGE = "localhost/mcp-sandbox-minimal-readonly-root:test"
ROOTLESS_USER = "mcp-sandbox-rootless"
DISK_BYTES = 64 * 1024 * 1024


async def run(client: Client, container_id: str, command: str, **extra: object) -> dict:
    return structured(await client.call_tool("execute_command", {"container_id": container_id, "command": command, **extra}))


# --------------------------------------------------------------------------- a desktop client's PATH


async def test_a_desktop_clients_short_path_still_gives_sandboxes_a_network_and_a_disk() -> None:
    port = free_port()
    namespace = f"{RUN_ID}-short-path"
    NAMESPACES.add(namespace)
    env = {**os.environ, "PATH": DESKTOP_PATH, "PORT": str(port), "SANDBOX_NAMESPACE": namespace,
           "SANDBOX_POOL_SIZE": "0", "SANDBOX_DISK_LIMIT_BYTES": str(DISK_BYTES)}
    fastmcp_cli = str(Path(sys.executable).parent / "fastmcp")
    transport = StdioTransport(command=fastmcp_cli, args=["run", str(ROOT / "server.py")], env=env, cwd=str(ROOT))
    async with Client(transport) as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        ran = await run(client, container_id, "ls /sys/class/net; cat /proc/net/route | wc -l; df -k / | tail -1")
        lines = ran["stdout"].splitlines()
        interfaces, routes, disk = lines[:-2], int(lines[-2]), lines[-1].split()
        assert "eth0" in interfaces and routes > 1, ran  # netavark found iptables: a network
        assert int(disk[1]) <= DISK_BYTES // 1024, ran  # mkfs.ext4 was found: a disk of its own
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["sandbox_disk_bytes"] == DISK_BYTES
        await client.call_tool("destroy_container", {"container_id": container_id})
    assert sandboxes_left(namespace) == []


# --------------------------------------------------------------------------- an OOM kill


async def test_an_oom_kill_leaves_no_file_where_the_server_was_started(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # conmon, beside each podman exec, writes a file "oom" into its working directory.
    server = start_server(cwd=tmp_path)
    async with Client(server.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        result = await run(client, container_id, "head -c 400000000 /dev/zero | tail > /dev/null", timeout_seconds=60)
        if result["status"] == "running":
            result = await wait_for_command(client, container_id, result["command_id"], seconds=60)
        assert result["reason"] == "oom_killed", result
        await client.call_tool("destroy_container", {"container_id": container_id})
    assert sorted(path.name for path in tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize("path", ["agent", "podman exec"])
async def test_duration_ms_is_true_to_the_millisecond(start_server, path: str) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"SANDBOX_AGENT": "/nonexistent/sandbox-agent"} if path == "podman exec" else {})
    async with Client(server.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        quick = await run(client, container_id, "sleep 2")
        assert quick["status"] == "completed" and 2000 <= quick["duration_ms"] <= 2300, quick
        slow = await run(client, container_id, "sleep 4")
        assert slow["status"] == "running"
        followed = structured(await client.call_tool("check_container", {
            "container_id": container_id, "command_id": slow["command_id"], "wait_seconds": 10}))["command"]
        assert followed["status"] == "completed" and 4000 <= followed["duration_ms"] <= 4500, followed
        await client.call_tool("destroy_container", {"container_id": container_id})


# --------------------------------------------------------------------------- a minimal image


@pytest.fixture(scope="module")
def minimal_image() -> str:
    """busybox in a root of mode 0555, without /var or /run: the sandbox's root cannot write to /."""
    if podman("image", "exists", MINIMAL_IMAGE, check=False).returncode == 0:
        return MINIMAL_IMAGE
    root = Path(tempfile.mkdtemp())
    try:
        for folder in ("bin", "etc", "tmp", "root", "proc", "sys", "dev"):
            (root / folder).mkdir()
        (root / "tmp").chmod(0o1777)
        shutil.copy2("/bin/busybox", root / "bin" / "busybox")
        applets = subprocess.run([str(root / "bin" / "busybox"), "--list"], capture_output=True, text=True, check=True)
        for applet in applets.stdout.split():
            if applet != "busybox":
                (root / "bin" / applet).symlink_to("busybox")
        (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
        root.chmod(0o555)
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        subprocess.run(["podman", "import", "--change", "ENV PATH=/bin", "-", MINIMAL_IMAGE], stdin=tar.stdout,
                       check=True, capture_output=True)
        tar.wait()
    finally:
        root.chmod(0o755)
        shutil.rmtree(root)
    return MINIMAL_IMAGE


def volumes_of(container_id: str) -> list[str]:
    listed = podman("inspect", "--format", '{{range .Mounts}}{{if eq .Type "volume"}}{{.Name}} {{end}}{{end}}',
                    f"mcp-sandbox-{container_id}")
    return listed.stdout.split()


@pytest.mark.parametrize("disk_bytes", [0, DISK_BYTES], ids=["without-disk", "with-disk"])
async def test_a_minimal_image_with_a_read_only_root_runs_commands(
    start_server, minimal_image: str, disk_bytes: int  # type: ignore[no-untyped-def]
) -> None:
    server = start_server({"SANDBOX_IMAGE": minimal_image, "SANDBOX_DISK_LIMIT_BYTES": str(disk_bytes)})
    disk = httpx.get(server.url + "/health").json()["sandbox_disk_bytes"]
    assert disk == disk_bytes if disk_bytes else str(disk).startswith("unbounded")
    async with Client(server.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        own_volumes = volumes_of(container_id)  # the server's folder: a volume of its own without a disk
        assert len(own_volumes) == (0 if disk_bytes else 1), own_volumes
        hello = await run(client, container_id, "echo hello; stat -c %a /")
        assert (hello["status"], hello["exit_code"]) == ("completed", 0), hello
        # Without a disk the sandbox runs on Podman's own overlay, whose root keeps the image's
        # 0555: its root user (no capabilities) cannot write there. A sandbox disk's overlay root
        # is writable (0755), as it always was.
        assert hello["stdout"].splitlines() == ["hello", "755" if disk_bytes else "555"], hello
        later = await run(client, container_id, "sleep 4; echo later")
        assert later["status"] == "running"
        assert (await wait_for_command(client, container_id, later["command_id"]))["stdout"] == "later\n"
        await client.call_tool("write_file", {"container_id": container_id, "path": "/tmp/out.txt", "content": "shared"})
        link = structured(await client.call_tool("get_file_url", {"container_id": container_id, "path": "/tmp/out.txt"}))
        assert httpx.get(link["url"]).content == b"shared"

        # The server's machinery failing is a tool error that says so, never a command's result.
        await run(client, container_id, "chmod 0555 /var/lib/mcp-sandbox/output")
        broken = await client.call_tool("execute_command", {"container_id": container_id, "command": "echo again"},
                                        raise_on_error=False)
        text = broken.content[0].text
        assert broken.is_error and "/var/lib/mcp-sandbox/output" in text and "did not run" in text, text
        await client.call_tool("destroy_container", {"container_id": container_id})
    # and it goes with the sandbox (removed in the background)
    await wait_until(lambda: all(podman("volume", "exists", volume, check=False).returncode != 0
                                 for volume in own_volumes))


# --------------------------------------------------------------------------- rootless Podman


def as_user(user: str) -> list[str]:
    entry = pwd.getpwnam(user)
    return ["setpriv", f"--reuid={entry.pw_uid}", f"--regid={entry.pw_gid}", "--init-groups", "--"]


@pytest.fixture(scope="module")
def rootless_user() -> Iterator[dict[str, str]]:
    """A normal user with subordinate ids for rootless Podman, and the environment to run as it."""
    try:
        entry = pwd.getpwnam(ROOTLESS_USER)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--shell", "/bin/sh", ROOTLESS_USER], check=True)
        entry = pwd.getpwnam(ROOTLESS_USER)
    for table, flag in (("/etc/subuid", "--add-subuids"), ("/etc/subgid", "--add-subgids")):
        path = Path(table)
        if not path.exists() or f"\n{ROOTLESS_USER}:" not in "\n" + path.read_text():
            subprocess.run(["usermod", flag, "400000-465535", ROOTLESS_USER], check=True)
    runtime_dir = Path(tempfile.mkdtemp(prefix="mcp-rootless-run-"))
    os.chown(runtime_dir, entry.pw_uid, entry.pw_gid)
    env = {"HOME": entry.pw_dir, "USER": ROOTLESS_USER, "XDG_RUNTIME_DIR": str(runtime_dir)}
    yield env
    shutil.rmtree(runtime_dir, ignore_errors=True)


def python_for(user: str) -> str:
    """An interpreter the user may run, with this run's packages: this one, or (when it lives
    under /root, as pyenv's does) the system's Python of the same version reading our venv."""
    if subprocess.run([*as_user(user), sys.executable, "-c", "import fastmcp"], capture_output=True).returncode == 0:
        return sys.executable
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    system_python = shutil.which(f"python{version}", path="/usr/local/bin:/usr/bin")
    assert system_python, f"no Python {version} that the user {user} may run"
    venv = Path(tempfile.mkdtemp(prefix="mcp-rootless-venv-"))
    venv.chmod(0o755)
    subprocess.run([system_python, "-m", "venv", "--without-pip", str(venv)], check=True)
    site_packages = next(p for p in sys.path if p.startswith(sys.prefix) and p.endswith("site-packages"))
    (venv / "lib" / f"python{version}" / "site-packages" / "mcp-sandbox-tests.pth").write_text(
        f"import site; site.addsitedir({site_packages!r})\n")
    return str(venv / "bin" / "python")


@pytest.mark.slow
async def test_rootless_podman_that_would_ignore_the_limits_is_refused(start_server, rootless_user: dict[str, str]) -> None:  # type: ignore[no-untyped-def]
    user = as_user(ROOTLESS_USER)
    user_env = {**os.environ, **rootless_user}
    image = os.environ["SANDBOX_IMAGE"]
    if subprocess.run([*user, "podman", "image", "exists", image], env=user_env).returncode != 0:
        save = subprocess.Popen(["podman", "save", image], stdout=subprocess.PIPE)
        subprocess.run([*user, "podman", "load"], stdin=save.stdout, env=user_env, check=True, capture_output=True)
        save.wait()
    # What Podman itself does here with the product's limits, as a normal user.
    premise = subprocess.run([*user, "podman", "run", "--rm", "--network=none", "--memory=256m", "--cpus=0.5",
                              "--pids-limit=100", "--entrypoint", "cat", image, "/sys/fs/cgroup/memory/memory.limit_in_bytes"],
                             env=user_env, capture_output=True, text=True, timeout=120)
    ignored = "ignored" in premise.stderr

    namespace = f"{RUN_ID}-rootless"
    server = start_server({**rootless_user, "SANDBOX_NETWORK": "none", "SANDBOX_NAMESPACE": namespace},
                          argv=[*user, python_for(ROOTLESS_USER), str(ROOT / "server.py")])
    try:
        health = httpx.get(server.url + "/health", timeout=30)
        async with Client(server.url + "/mcp") as client:
            created = await client.call_tool("create_container", {}, raise_on_error=False)
            if ignored:  # cgroup v1, as on this machine: every limit would be ignored
                assert health.status_code == 503 and "rootless" in health.json()["error"], health.text
                text = created.content[0].text
                assert created.is_error and "rootless" in text and "cgroup v2" in text and "root" in text, text
                assert "sandboxes will NOT be created" in server.log_text()
            else:  # a host that gives rootless containers their limits: sandboxes have them
                container_id = structured(created)["container_id"]
                limit = await run(client, container_id, "cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null")
                assert limit["stdout"].split()[0] == "268435456", limit
                await client.call_tool("destroy_container", {"container_id": container_id})
    finally:
        server.stop()
        left = subprocess.run([*user, "podman", "ps", "-aq", "--filter", f"label=mcp-sandbox.namespace={namespace}"],
                              env=user_env, capture_output=True, text=True).stdout.split()
        if left:
            subprocess.run([*user, "podman", "rm", "-f", "-v", *left], env=user_env, capture_output=True)
    assert not left, "the refused server left containers behind"


# --------------------------------------------------------------------------- many creates


@pytest.mark.slow
async def test_300_creates_in_a_row_and_16_at_once_all_succeed(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"SANDBOX_MAX_CONTAINERS": "320", "SANDBOX_MAX_CHANNELS": "8"})
    made: list[str] = []
    failures: list[str] = []

    async def create(client: Client) -> None:
        result = await client.call_tool("create_container", {}, raise_on_error=False)
        if result.is_error:
            failures.append(result.content[0].text)
        else:
            made.append(structured(result)["container_id"])

    async with Client(server.url + "/mcp", timeout=600) as client:
        try:
            for _ in range(300):
                await create(client)
            async with anyio.create_task_group() as group:
                for _ in range(16):
                    group.start_soon(create, client)
            assert failures == [] and len(made) == 316, failures[:3]
            ran = await run(client, made[-1], "echo last")
            assert ran["stdout"] == "last\n"
        finally:
            limiter = anyio.Semaphore(8)

            async def destroy(container_id: str) -> None:
                async with limiter:
                    await client.call_tool("destroy_container", {"container_id": container_id}, raise_on_error=False)

            async with anyio.create_task_group() as group:
                for container_id in made:
                    group.start_soon(destroy, container_id)
    # destroy_container answers at once; the 316 containers go in the background, 4 at a time.
    assert sandboxes_left(server.env["SANDBOX_NAMESPACE"], seconds=300) == []


# --------------------------------------------------------------------------- uvloop beside the server


async def test_uvloop_installed_beside_the_server_leaves_its_podman_runs_alone(start_server) -> None:  # type: ignore[no-untyped-def]
    # uvicorn runs on uvloop whenever it can import it (uvicorn[standard] installs it), and under uvloop
    # every `podman run -d` waited out its 300 s timeout: libuv leaves the output pipe's ends in podman's
    # children, and the conmon it leaves behind keeps them open. The test extras install uvloop.
    import uvloop  # noqa: F401

    server = start_server()
    async with Client(server.url + "/mcp") as client:
        with anyio.fail_after(60):
            container_id = structured(await client.call_tool("create_container", {}))["container_id"]
            assert (await run(client, container_id, "echo hi"))["stdout"] == "hi\n"
        await client.call_tool("destroy_container", {"container_id": container_id})


def test_a_server_put_on_uvloop_by_hand_says_so_and_how_to_start_it() -> None:
    namespace = f"{RUN_ID}-uvloop"
    NAMESPACES.add(namespace)
    env = {**os.environ, "SANDBOX_NAMESPACE": namespace, "SANDBOX_POOL_SIZE": "0"}
    started = subprocess.run(
        [sys.executable, "-m", "uvicorn", "--factory", "server:http_app", "--loop", "uvloop", "--port", str(free_port())],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert started.returncode != 0, started.stderr[-2000:]
    assert "runs on uvloop" in started.stderr and "--loop asyncio" in started.stderr, started.stderr[-2000:]
    assert sandboxes_left(namespace) == []


# --------------------------------------------------------------------------- a full bridge


async def test_a_full_bridge_sends_new_sandboxes_to_the_next_network(start_server) -> None:  # type: ignore[no-untyped-def]
    # Linux puts at most 1,023 ports on a bridge, one per sandbox with a network; netavark then fails
    # with "Exchange full". The test fills the bridge with veths of its own (no traffic on them): the
    # server counts every port of the bridge, whoever made it, so the next sandbox goes to the next
    # network, and sandboxes on the full one go on.
    server = start_server()
    later = f"{DEFAULT_NETWORK}-2"
    podman("network", "rm", "-f", later, check=False)  # what an earlier run left, with its anchor at most
    try:
        async with Client(server.url + "/mcp") as client:
            first = structured(await client.call_tool("create_container", {}))["container_id"]  # the bridge exists
            interface = bridge_of(DEFAULT_NETWORK)
            ports = Path(f"/sys/class/net/{interface}/brif")
            names = [f"mcpf{secrets.token_hex(2)}{index:04d}"
                     for index in range(BRIDGE_MAX_PORTS - len(list(ports.iterdir())))]
            try:
                subprocess.run(["ip", "-batch", "-"], check=True, text=True, input="".join(
                    f"link add {name} type veth peer name {name}p\nlink set {name} master {interface}\n"
                    for name in names))
                assert len(list(ports.iterdir())) == BRIDGE_MAX_PORTS
                moved = structured(await client.call_tool("create_container", {}))["container_id"]
                labels = json.loads(podman("inspect", f"mcp-sandbox-{moved}").stdout)[0]["Config"]["Labels"]
                assert labels["mcp-sandbox.network"] == later
                assert (await run(client, moved, "echo hi"))["stdout"] == "hi\n"
                assert (await run(client, first, "echo hi"))["stdout"] == "hi\n"
                health = {n["name"]: n["ports_free"] for n in httpx.get(server.url + "/health").json()["networks"]}
                assert health[DEFAULT_NETWORK] == 0 and health[later] == BRIDGE_MAX_PORTS - 2  # the sandbox, the anchor
            finally:
                subprocess.run(["ip", "-batch", "-"], check=False, text=True,
                               input="".join(f"link del {name}\n" for name in names))
            for container_id in (first, moved):
                await client.call_tool("destroy_container", {"container_id": container_id})
        await wait_until(lambda: sandboxes_left(server.env["SANDBOX_NAMESPACE"]) == [])
    finally:  # the next network is the test's: servers started later would put their rules on it
        interface = json.loads(podman("network", "inspect", later, check=False).stdout or "[{}]")[0].get(
            "network_interface")
        podman("network", "rm", "-f", later, check=False)
        if interface:
            subprocess.run(["nft", "delete", "table", "inet", f"mcp_sandbox_{interface}"], capture_output=True)
