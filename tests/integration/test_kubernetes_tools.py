"""The whole tool flow on SANDBOX_BACKEND=kubernetes: a real server process and FastMCP's client, the
server's sandboxes made as Pods through a STAND-IN for the Kubernetes API server (tests/support/kube_api.py,
which checks each Pod against the API's schema, answers pods/exec with the kubelet's streaming protocol
and has podman kube play run the Pods: no API server or kubelet can run on these machines). Every
process in a sandbox, the agent's channel included, is an exec session: nothing of the sandbox runs on
the server's host. scripts/test-kubernetes.sh runs this module against a real cluster instead."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
from conftest import RUN_ID, ServerProcess, free_port, structured
from fastmcp import Client
from fastmcp.exceptions import ToolError
from support.kube import KUBE_NETWORK, PodRunner
from support.kube_api import KubeApiStandIn
from support.preview_app import preview_app_binary, start_app
from test_egress import fetch_listed, http_request, package_archive_host, run, via_proxy_variable

from mcp_container_sandbox.sandbox.backend.kubernetes.api import Cluster, KubeApi
from mcp_container_sandbox.sandbox.backend.kubernetes.backend import KubernetesBackend
from mcp_container_sandbox.sandbox.containers import sandbox_labels, sandbox_spec
from mcp_container_sandbox.sandbox.model import NAME_PREFIX, Sandbox
from mcp_container_sandbox.settings import KubernetesSettings

pytestmark = pytest.mark.anyio
NAMESPACE = "sandboxes"
TOKEN = "stand-in-service-account-token"


def kubeconfig(folder: Path, server: str, token: str = TOKEN) -> Path:
    path = folder / "kubeconfig"
    path.write_text(json.dumps({  # JSON is YAML
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "test", "cluster": {"server": server}}],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
    }))
    return path


@dataclass
class PodCluster:
    """Where the tests' Pods run: the stand-in (``stand_in`` set), or a real cluster."""

    kubeconfig: Path
    namespace: str
    stand_in: KubeApiStandIn | None = None

    def api(self) -> KubeApi:
        return KubeApi(Cluster.from_kubeconfig(self.kubeconfig.read_text()), self.namespace)

    async def pod(self, container_id: str) -> dict[str, Any] | None:
        api = self.api()
        try:
            pod = await api.get_pod(NAME_PREFIX + container_id)
        finally:
            await api.aclose()
        return None if pod is None or pod["metadata"].get("deletionTimestamp") else pod

    async def deleted(self, container_id: str) -> bool:
        """Whether the sandbox's Pod goes within 60 s (destroy_container answers first, as on Podman)."""
        with anyio.move_on_after(60):
            while await self.pod(container_id) is not None:
                await anyio.sleep(0.2)
            return True
        return False

    async def sweep(self, server_namespace: str) -> None:
        """Delete what servers of that SANDBOX_NAMESPACE left (their warm pools' Pods)."""
        api = self.api()
        try:
            for pod in (await api.list_pods({"mcp-sandbox.namespace": server_namespace}))[0]:
                await api.delete_pod(pod["metadata"]["name"])
        finally:
            await api.aclose()

    def env(self, state: Path, **extra: str) -> dict[str, str]:
        return {"SANDBOX_BACKEND": "kubernetes", "KUBECONFIG": str(self.kubeconfig),
                "SANDBOX_K8S_NAMESPACE": self.namespace, "SANDBOX_STATE_DIR": str(state), "SANDBOX_EGRESS": "none",
                **extra}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodCluster]:
    """The cluster scripts/test-kubernetes.sh names (MCP_SANDBOX_TEST_KUBECONFIG), else the stand-in."""
    real = os.environ.get("MCP_SANDBOX_TEST_KUBECONFIG", "")
    if real:
        yield PodCluster(Path(real), os.environ.get("MCP_SANDBOX_TEST_K8S_NAMESPACE", "mcp-sandboxes"))
        return
    folder = tmp_path_factory.mktemp("cluster")
    stand_in = KubeApiStandIn(runner=PodRunner(folder), token=TOKEN)
    with stand_in.serving(free_port()) as url:
        yield PodCluster(kubeconfig(folder, url), NAMESPACE, stand_in)


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    return structured(await client.call_tool(tool, arguments))


async def test_every_tool_runs_in_a_pod_through_the_api(start_server, cluster: PodCluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = start_server(cluster.env(tmp_path / "state"))
    health = httpx.get(server.url + "/health").json()
    assert health["backend"] == "kubernetes" and health["kubernetes_version"].startswith("v1.")
    assert "podPidsLimit" in health["limits"]["processes"] and health["egress"]["policy"] == "none"
    async with Client(server.url + "/mcp") as client:
        box = (await call(client, "create_container"))["container_id"]
        pod = await cluster.pod(box)
        assert pod is not None
        assert pod["metadata"]["labels"]["mcp-sandbox.egress"] == "none"
        assert pod["spec"]["containers"][0]["resources"]["limits"] == {
            "cpu": "500m", "memory": "256Mi", "ephemeral-storage": str(2 * 1024 ** 3)}
        assert pod["spec"]["activeDeadlineSeconds"] > 7000

        ran = await call(client, "execute_command", container_id=box,
                         command="echo hello; cat /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes "
                                 "2>/dev/null; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status; exit 3")
        assert ran["exit_code"] == 3 and ran["stdout"].startswith("hello\n268435456\n"), ran
        assert "CapEff:\t0000000000000000" in ran["stdout"] and re.search(r"NoNewPrivs:\s+1", ran["stdout"])

        written = await call(client, "write_file", container_id=box, path="/tmp/data.bin",
                             content=base64.b64encode(bytes(range(256)) * 64).decode(), encoding="base64")
        assert written["size_bytes"] == 16384
        read = await call(client, "read_file", container_id=box, path="/tmp/data.bin", encoding="base64")
        assert base64.b64decode(read["content"]) == bytes(range(256)) * 64
        listed = await call(client, "list_files", container_id=box, path="/tmp")
        assert "data.bin" in json.dumps(listed)

        fed = await call(client, "execute_command", container_id=box, command="tr a-z A-Z", stdin="through the api\n")
        assert fed["stdout"] == "THROUGH THE API\n"
        waiting = await call(client, "execute_command", container_id=box, command="cat", keep_stdin_open=True)
        turn = await call(client, "write_stdin", container_id=box, command_id=waiting["command_id"], data="turn\n")
        assert turn["stdout"] == "turn\n", turn
        closed = await call(client, "write_stdin", container_id=box, command_id=waiting["command_id"], data="",
                            close=True)
        assert (closed["status"], closed["exit_code"]) == ("completed", 0), closed

        trap = await call(client, "execute_command", container_id=box,
                          command="trap 'echo trapped; exit 7' INT; echo ready; while :; do sleep 0.1; done")
        sent = await call(client, "send_signal", container_id=box, command_id=trap["command_id"], signal="INT")
        assert (sent["exit_code"], sent["stdout"]) == (7, "ready\ntrapped\n"), sent

        tty = await call(client, "execute_command", container_id=box, command="test -t 1 && echo terminal", tty=True)
        assert "terminal" in tty["stdout"]

        await call(client, "execute_command", container_id=box, command="printf 'Hello World' > /tmp/hello.txt")
        link = await call(client, "get_file_url", container_id=box, path="/tmp/hello.txt")
        downloaded = httpx.get(link["url"])
        assert downloaded.status_code == 200 and downloaded.content == b"Hello World"

        await start_app(client, box, preview_app_binary(), "8000")
        preview = await call(client, "expose_port", container_id=box, port=8000)
        answered = httpx.get(preview["url"] + "hello", timeout=30)
        assert answered.status_code == 200, answered.text

        with pytest.raises(ToolError) as refused:
            await client.call_tool("snapshot_container", {"container_id": box})
        assert "Kubernetes backend" in str(refused.value)
        with pytest.raises(ToolError) as refused:
            await client.call_tool("create_container", {"network": True, "allow_domains": ["example.org"]})
        assert "SANDBOX_EGRESS is none" in str(refused.value)

        await call(client, "destroy_container", container_id=box)
        with pytest.raises(ToolError):
            await client.call_tool("execute_command", {"container_id": box, "command": "true"})
    assert await cluster.deleted(box)
    if cluster.stand_in is not None:  # what only the stand-in can tell: the channel went over exec, under v5
        assert cluster.stand_in.runner is not None
        agent = [s for s in cluster.stand_in.runner.kubelet.sessions if s["argv"][0] == "/run/mcp-sandbox/agent"]
        assert agent and all(s["protocol"] == "v5.channel.k8s.io" for s in agent)


async def test_a_restarted_server_finds_its_pods_again(start_server, cluster: PodCluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = cluster.env(tmp_path / "state", SANDBOX_NAMESPACE=f"{RUN_ID}-kube-restart")
    first = start_server(env)
    async with Client(first.url + "/mcp") as client:
        box = (await call(client, "create_container"))["container_id"]
        started = await call(client, "execute_command", container_id=box, command="sleep 2; echo survived")
    first.stop()
    second = start_server(env)
    async with Client(second.url + "/mcp") as client:
        ended = (await call(client, "check_container", container_id=box, command_id=started["command_id"],
                            wait_seconds=20))["command"]
        assert ended["stdout"] == "survived\n"
        await call(client, "destroy_container", container_id=box)
    assert await cluster.deleted(box)


async def test_a_terminal_in_a_pod_is_an_exec_session_with_a_tty(cluster: PodCluster) -> None:
    backend = KubernetesBackend(KubernetesSettings(namespace=cluster.namespace),
                                Cluster.from_kubeconfig(cluster.kubeconfig.read_text()))
    sandbox = Sandbox("ab" * 16, os.environ["SANDBOX_IMAGE"], 0, 9e9, network="none")
    await backend.start(sandbox_spec(sandbox, sandbox_labels(sandbox, f"{RUN_ID}-kube-terminal")))
    try:
        terminal = await backend.open_terminal(sandbox.name, 100, 30)
        await terminal.write(b"echo tty-$((6*7)); stty size\n")
        shown = b""
        with anyio.fail_after(30):
            while b"tty-42" not in shown:
                shown += await terminal.read()
        await terminal.resize(120, 40)
        await terminal.close()
        assert await terminal.read() == b""
    finally:
        await backend.remove(sandbox.name)
        await backend.aclose()
    assert await cluster.deleted(sandbox.container_id)
    if cluster.stand_in is not None:  # the sizes went on the resize channel
        assert cluster.stand_in.runner is not None
        assert [{"Width": 100, "Height": 30}, {"Width": 120, "Height": 40}] == cluster.stand_in.runner.kubelet.resizes[-2:]


def test_no_cluster_is_a_clear_error_at_start(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(RuntimeError) as missing:
        start_server({"SANDBOX_BACKEND": "kubernetes", "KUBECONFIG": str(tmp_path / "none")})
    assert f"no kubeconfig at {tmp_path / 'none'}" in str(missing.value)
    with pytest.raises(RuntimeError) as unreachable:
        start_server({"SANDBOX_BACKEND": "kubernetes", "KUBECONFIG": str(kubeconfig(tmp_path, f"http://127.0.0.1:{free_port()}"))})
    assert "SANDBOX_BACKEND=kubernetes, but the Kubernetes API at" in str(unreachable.value)
    assert "did not answer" in str(unreachable.value)


async def eventually(client: Client, tool: str, seconds: float = 15, **arguments: Any) -> dict[str, Any]:
    """A call that succeeds once the server has learnt what another server did (through the cluster)."""
    with anyio.fail_after(seconds):
        while True:
            try:
                return await call(client, tool, **arguments)
            except ToolError:
                await anyio.sleep(0.2)


async def test_two_servers_serve_the_same_sandboxes(start_server, cluster: PodCluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shared = f"{RUN_ID}-kube-shared"
    first = start_server(cluster.env(tmp_path / "a", SANDBOX_NAMESPACE=shared))
    second = start_server(cluster.env(tmp_path / "b", SANDBOX_NAMESPACE=shared))
    async with Client(first.url + "/mcp") as on_first, Client(second.url + "/mcp") as on_second:
        box = (await call(on_first, "create_container", idempotency_key="retried-elsewhere"))["container_id"]
        ran = await eventually(on_second, "execute_command", container_id=box, command="echo made-by-the-first")
        assert ran["stdout"] == "made-by-the-first\n"
        started = await call(on_first, "execute_command", container_id=box, command="sleep 1; echo followed")
        ended = (await call(on_second, "check_container", container_id=box, command_id=started["command_id"],
                            wait_seconds=20))["command"]
        assert (ended["status"], ended["stdout"]) == ("completed", "followed\n")
        listed = await call(on_second, "list_containers")
        assert box in json.dumps(listed)
        busy = await call(on_second, "execute_command", container_id=box, command="sleep 30")
        assert busy["command_id"] in json.dumps(await call(on_first, "list_containers"))  # started elsewhere, seen

        await call(on_first, "execute_command", container_id=box, command="printf shared > /tmp/shared.txt")
        link = await call(on_first, "get_file_url", container_id=box, path="/tmp/shared.txt")
        await start_app(on_first, box, preview_app_binary(), "8000")
        preview = await call(on_first, "expose_port", container_id=box, port=8000)
        with anyio.fail_after(15):  # the second learns the links from the Pod's records
            while (downloaded := httpx.get(link["url"].replace(first.url, second.url))).status_code != 200:
                await anyio.sleep(0.2)
        assert downloaded.content == b"shared"
        # A retry that reaches the other server gets the same sandbox: the key is recorded on the Pod (before
        # the link just served through the second, so the second has seen it).
        assert (await call(on_second, "create_container", idempotency_key="retried-elsewhere"))["container_id"] == box
        answered = httpx.get(preview["url"].replace(first.url, second.url) + "hello", timeout=30)
        assert answered.status_code == 200, answered.text

        await call(on_second, "destroy_container", container_id=box)
        with anyio.fail_after(15):  # the first hears of it through the cluster
            while True:
                try:
                    await call(on_first, "check_container", container_id=box)
                except ToolError as gone:
                    assert "No sandbox" in str(gone) and "destroyed through another server" in str(gone)
                    break
                await anyio.sleep(0.2)
        assert httpx.get(link["url"]).status_code == 404
    assert await cluster.deleted(box)


async def test_a_pooled_pod_is_handed_out_once_among_servers(start_server, cluster: PodCluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    shared = f"{RUN_ID}-kube-pool"
    env = {"SANDBOX_NAMESPACE": shared, "SANDBOX_POOL_SIZE": "1", "SANDBOX_POOL_MAX": "1"}
    maker = start_server(cluster.env(tmp_path / "maker", **env))
    with anyio.fail_after(60):  # its pool fills
        while httpx.get(maker.url + "/health").json()["pool"]["ready"] < 1:
            await anyio.sleep(0.2)
    maker.stop()  # its pooled Pod stays, unclaimed: both servers below take it into their pools
    api = cluster.api()
    try:
        [pooled] = [pod["metadata"]["name"][len(NAME_PREFIX):] for pod in
                    (await api.list_pods({"mcp-sandbox.namespace": shared, "mcp-sandbox.pooled": "true"}))[0]]
    finally:
        await api.aclose()
    first = start_server(cluster.env(tmp_path / "first", **env))
    second = start_server(cluster.env(tmp_path / "second", **env))
    for server in (first, second):  # each holds the same pooled Pod (its pool full with it)
        assert httpx.get(server.url + "/health").json()["pool"]["ready"] == 1
    async with Client(first.url + "/mcp") as on_first, Client(second.url + "/mcp") as on_second:
        async with anyio.create_task_group() as group:
            made: list[str] = []

            async def create(client: Client) -> None:
                made.append((await call(client, "create_container"))["container_id"])

            group.start_soon(create, on_first)
            group.start_soon(create, on_second)
        assert len(set(made)) == 2 and pooled in made  # one claimed the pooled Pod; the other lost and made one
        for box, other in ((made[0], on_second), (made[1], on_first)):  # each is served by both, once claimed
            ran = await eventually(other, "execute_command", container_id=box, command="echo claimed")
            assert ran["stdout"] == "claimed\n"
        for box in made:
            await call(on_first, "destroy_container", container_id=box)
    for box in made:
        assert await cluster.deleted(box)
    first.stop()
    second.stop()
    await cluster.sweep(shared)


def kube_network_gateway() -> str:
    """The gateway of the network podman kube play puts Pods on (the stand-in's "cluster network"):
    where a Pod reaches a server on this host, as it reaches the proxy Service in a cluster."""
    if subprocess.run(["podman", "network", "exists", KUBE_NETWORK]).returncode != 0:
        subprocess.run(["podman", "network", "create", KUBE_NETWORK], capture_output=True, check=True)
    inspected = json.loads(subprocess.run(["podman", "network", "inspect", KUBE_NETWORK], capture_output=True,
                                          text=True, check=True).stdout)[0]
    return next(s["gateway"] for s in inspected["subnets"] if "." in s.get("gateway", ""))


async def test_allow_domains_go_through_any_servers_proxy(start_server, cluster: PodCluster, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    if cluster.stand_in is None:
        pytest.skip("on a real cluster the proxy is a Service of the deployed servers: tested by deploying them")
    archive, gateway = package_archive_host(), kube_network_gateway()
    shared, ports = f"{RUN_ID}-kube-proxy", (free_port(), free_port())
    first, second = (start_server(cluster.env(tmp_path / str(port), SANDBOX_NAMESPACE=shared, SANDBOX_EGRESS="public",
                                              SANDBOX_PROXY_PORT=str(port), SANDBOX_K8S_PROXY=f"{gateway}:{port}"))
                     for port in ports)
    async with Client(first.url + "/mcp") as on_first, Client(second.url + "/mcp") as on_second:
        created = await call(on_first, "create_container", allow_domains=[archive])
        box, egress = created["container_id"], created["egress"]
        assert egress == {"policy": "allow_domains", "allow_domains": [archive.lower()],
                          "proxy": f"http://{gateway}:{ports[0]}"}
        pod = await cluster.pod(box)
        assert pod is not None and pod["metadata"]["labels"]["mcp-sandbox.egress"] == "proxied"
        fetched = await fetch_listed(on_first, box, archive)
        assert fetched["stdout"].startswith("HTTP/1.") and not fetched["stdout"].startswith(
            ("HTTP/1.1 403", "HTTP/1.1 502")), fetched
        refused = await run(on_first, box, via_proxy_variable("GET http://unlisted.invalid/", "unlisted.invalid"))
        assert refused["stdout"].startswith("HTTP/1.1 403") and "is not in the allow_domains" in refused["stdout"]
        # The other server's proxy learnt the list from the Pod: the sandbox is let through there too.
        with anyio.fail_after(30):
            while True:
                through_second = await run(on_first, box, http_request(f"HEAD http://{archive}/", archive,
                                                                        f"{gateway} {ports[1]}"))
                if through_second["stdout"].startswith("HTTP/1.") and "403" not in through_second["stdout"][:12]:
                    break
                await anyio.sleep(0.5)
        assert (await call(on_second, "check_container", container_id=box))["egress"]["allow_domains"] == [archive.lower()]
        # A sandbox without a list is refused by every proxy.
        plain = (await call(on_second, "create_container"))["container_id"]
        for port in ports:
            via = await run(on_second, plain, http_request(f"HEAD http://{archive}/", archive, f"{gateway} {port}"))
            assert via["stdout"].startswith("HTTP/1.1 403"), via
        for made in (box, plain):
            await call(on_second, "destroy_container", container_id=made)
    assert await cluster.deleted(box) and await cluster.deleted(plain)
