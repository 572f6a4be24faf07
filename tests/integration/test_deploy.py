"""The Railway deployment for real: the Containerfile built from a local Debian 12 base
(debootstrap, no registry), run with Podman nested inside in both privilege modes docs/deployment.md
gives, used through a real MCP client, stopped with SIGTERM, and started again on the same volume."""

from __future__ import annotations

import base64
import secrets
import subprocess
import time

import httpx
import pytest
from conftest import ROOT, free_port, podman, structured
from fastmcp import Client
from support.preview_app import preview_app_binary, start_and_wait

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

SANDBOX_IMAGE = "localhost/mcp-sandbox-busybox:latest"
# The two privilege modes of docs/deployment.md. The smallest set found with which nested
# Podman works here: mounts and namespaces (SYS_ADMIN), the sandboxes' bridge (NET_ADMIN), and a
# writable cgroup tree for the sandboxes' limits; it has no loop devices, so sandboxes get no
# disk of their own. --privileged has them: each sandbox gets its disk, on VFS storage too.
# The ulimits stay under what this host lets a process without CAP_SYS_RESOURCE set.
MODES = {
    "minimal": ["--cap-add=SYS_ADMIN", "--cap-add=NET_ADMIN", "-v", "/sys/fs/cgroup:/sys/fs/cgroup:rw"],
    "privileged": ["--privileged"],
}
ULIMITS = ["--ulimit", "nofile=20000:20000", "--ulimit", "nproc=32768:32768"]
DISK_BYTES = 2 * 1024 * 1024 * 1024  # the default SANDBOX_DISK_LIMIT_BYTES


@pytest.fixture(scope="module")
def server_image() -> str:
    base = subprocess.run(["bash", str(ROOT / "scripts" / "make-base-image.sh")], capture_output=True, text=True,
                          check=True, timeout=900).stdout.strip()
    tag = f"localhost/mcp-sandbox-server:test-{secrets.token_hex(3)}"
    started = time.monotonic()
    build = subprocess.run([
        "podman", "build", "--format", "docker", "--build-arg", f"BASE_IMAGE={base}",
        # This machine reaches PyPI through a TLS-intercepting proxy: hand the build its CAs.
        "--volume", "/etc/ssl/certs:/host-certs:ro", "--build-arg", "PIP_CERT=/host-certs/ca-certificates.crt",
        "-t", tag, "-f", str(ROOT / "Containerfile"), str(ROOT),
    ], capture_output=True, text=True, timeout=1800)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    size = int(podman("image", "inspect", "--format", "{{.Size}}", tag).stdout.strip())
    print(f"\nserver image {tag}: {size / 1e6:.0f} MB, built in {time.monotonic() - started:.0f} s")
    yield tag
    podman("rmi", "-f", tag, check=False)


def wait_healthy(url: str, name: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/health", timeout=3).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    logs = podman("logs", name, check=False)
    raise AssertionError(f"the deployed server never became healthy: {(logs.stdout + logs.stderr)[-3000:]}")


@pytest.mark.parametrize("mode", sorted(MODES))
async def test_deployment_runs_nested_podman_and_keeps_images_on_its_volume(server_image: str, mode: str) -> None:
    name = f"mcp-deploy-{mode}-{secrets.token_hex(3)}"
    volume = f"{name}-storage"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    run = ["podman", "run", "-d", "--name", name, *MODES[mode], *ULIMITS, "-p", f"127.0.0.1:{port}:3000",
           "-v", f"{volume}:/var/lib/containers", "-e", f"BASE_URL={url}", "-e", f"SANDBOX_IMAGE={SANDBOX_IMAGE}",
           "-e", "SANDBOX_POOL_SIZE=0", "-e", "AUTH_TOKENS=deploy-test-token", server_image]
    try:
        subprocess.run(run, check=True, capture_output=True, timeout=120)
        wait_healthy(url, name)
        # No registry here: load the sandbox image into the nested storage, as an operator would.
        save = subprocess.Popen(["podman", "save", SANDBOX_IMAGE], stdout=subprocess.PIPE)
        subprocess.run(["podman", "exec", "-i", name, "podman", "load"], stdin=save.stdout, check=True,
                       capture_output=True, timeout=300)
        save.wait()

        # Whether sandboxes get disks was decided at start, and /health says which.
        disk = httpx.get(url + "/health").json()["sandbox_disk_bytes"]
        assert disk == DISK_BYTES if mode == "privileged" else str(disk).startswith("unbounded"), disk
        # The egress policy holds inside the deployment too: its own rules in its own namespace.
        assert httpx.get(url + "/health").json()["egress"]["policy"] == "public"
        assert "table inet mcp_sandbox_" in podman("exec", name, "nft", "list", "tables").stdout
        async with Client(url + "/mcp", auth="deploy-test-token") as client:
            created = structured(await client.call_tool("create_container", {}))
            container_id = created["container_id"]
            assert created["egress"] == {"policy": "public"}
            # The server's own port, on the address its sandboxes see as their gateway, is out of reach.
            probe = structured(await client.call_tool("execute_command", {
                "container_id": container_id, "command": "gw=$(ip route | awk '/^default/ {print $3}'); echo $gw; "
                "printf 'GET /health HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $gw 3000"}))
            gateway = probe["stdout"].split()[0]
            assert "HTTP/1." not in probe["stdout"], probe
            # ... though the server answers there (the control: only the rules stand between).
            assert '"status"' in podman("exec", name, "curl", "-sS", f"http://{gateway}:3000/health").stdout
            ran = structured(await client.call_tool("execute_command", {
                "container_id": container_id,
                "command": "echo 'Hello from a nested sandbox' > /tmp/hello.txt; date -u +%Y; df -k / | tail -1"}))
            year, df = ran["stdout"].splitlines()
            assert ran["exit_code"] == 0 and year.isdigit(), ran
            if mode == "privileged":  # the sandbox's own disk
                assert int(df.split()[1]) <= DISK_BYTES // 1024, df
            link = structured(await client.call_tool("get_file_url", {"container_id": container_id, "path": "/tmp/hello.txt"}))
            assert link["url"].startswith(url + "/files/")
            assert httpx.get(link["url"]).content == b"Hello from a nested sandbox\n"
            # Snapshots: on the sandbox's disk's overlay; without disks, VFS storage keeps no layer of changes.
            taken = await client.call_tool("snapshot_container", {"container_id": container_id}, raise_on_error=False)
            if mode == "privileged":
                snapshot_id = structured(taken)["snapshot_id"]
                fork = structured(await client.call_tool("create_container", {"snapshot_id": snapshot_id}))["container_id"]
                seen = structured(await client.call_tool("execute_command", {"container_id": fork, "command": "cat /tmp/hello.txt"}))
                assert seen["stdout"] == "Hello from a nested sandbox\n", seen
                await client.call_tool("destroy_container", {"container_id": fork})
            else:
                assert taken.is_error and "Snapshots need the sandbox's files in an overlay" in taken.content[0].text, taken
            # Volumes: loop-mounted like the sandboxes' disks, so only where loop devices are.
            if mode == "privileged":
                await client.call_tool("create_volume", {"name": "kept", "size_mb": 8})
                holder = structured(await client.call_tool("create_container", {
                    "volumes": [{"name": "kept", "path": "/data"}]}))["container_id"]
                wrote = structured(await client.call_tool("execute_command", {"container_id": holder, "command":
                                   "echo kept > /data/k; dd if=/dev/zero of=/data/big bs=1M count=16 2>&1; rm /data/big"}))
                assert "No space left on device" in wrote["stdout"], wrote
                await client.call_tool("destroy_container", {"container_id": holder})
            else:
                refused = await client.call_tool("create_volume", {"name": "kept", "size_mb": 8}, raise_on_error=False)
                assert refused.is_error and "Volumes are not available on this server" in refused.content[0].text, refused
            # A preview URL reaches a port inside the nested sandbox, through the deployment's one port.
            app = preview_app_binary()
            await client.call_tool("write_file", {"container_id": container_id, "path": "/root/preview-app", "mode": "755",
                                                  "content": base64.b64encode(app).decode(), "encoding": "base64"})
            started = structured(await client.call_tool("execute_command", {"container_id": container_id,
                                                                            "command": start_and_wait("8000")}))
            assert started["stdout"] == "up\n", started
            preview = structured(await client.call_tool("expose_port", {"container_id": container_id, "port": 8000}))
            assert preview["url"].startswith(url + "/ports/")
            assert httpx.get(preview["url"] + "hello", timeout=30).text.startswith("hello ")
            assert structured(await client.call_tool("destroy_container", {"container_id": container_id}))["destroyed"]
        assert httpx.get(link["url"]).status_code == 404

        started = time.monotonic()
        subprocess.run(["podman", "stop", "-t", "10", name], check=True, capture_output=True, timeout=60)
        assert time.monotonic() - started < 10
        assert podman("inspect", "--format", "{{.State.ExitCode}}", name).stdout.strip() == "0"

        subprocess.run(["podman", "start", name], check=True, capture_output=True, timeout=120)
        wait_healthy(url, name)
        kept = podman("exec", name, "podman", "image", "exists", SANDBOX_IMAGE, check=False)
        assert kept.returncode == 0, "the sandbox image did not survive the restart on the volume"
        if mode == "privileged":  # and the snapshot and the sandboxes' volume, kept on the volume, did too
            async with Client(url + "/mcp", auth="deploy-test-token") as client:
                holder = structured(await client.call_tool("create_container", {
                    "volumes": [{"name": "kept", "path": "/data"}]}))["container_id"]
                seen = structured(await client.call_tool("execute_command", {"container_id": holder, "command": "cat /data/k"}))
                assert seen["stdout"] == "kept\n", seen
                await client.call_tool("destroy_container", {"container_id": holder})
                listed = structured(await client.call_tool("list_snapshots", {}))["snapshots"]
                assert [s["snapshot_id"] for s in listed] == [snapshot_id], listed
                fork = structured(await client.call_tool("create_container", {"snapshot_id": snapshot_id}))["container_id"]
                seen = structured(await client.call_tool("execute_command", {"container_id": fork, "command": "cat /tmp/hello.txt"}))
                assert seen["stdout"] == "Hello from a nested sandbox\n", seen
                await client.call_tool("destroy_container", {"container_id": fork})
    finally:
        podman("rm", "-f", "-v", "-t", "0", name, check=False)
        podman("volume", "rm", "-f", volume, check=False)
