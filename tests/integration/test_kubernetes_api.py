"""The Kubernetes API as the sandbox backend calls it (sandbox/backend/kubernetes/api.py), against a
STAND-IN for the API server's Pod endpoints (tests/support/kube_api.py: no API server runs here):
the generated Pod created, read, listed by label, watched and resumed, claimed by a patch conditioned
on its resourceVersion with two replicas racing, deleted; 403, 404, 409, 410 and 422 as the API answers
them; where the cluster is, from a kubeconfig."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import anyio
import pytest
from conftest import free_port
from support.kube_api import KubeApiStandIn

from mcp_container_sandbox.sandbox.backend.kubernetes.api import ApiError, Cluster, Conflict, Expired, KubeApi
from mcp_container_sandbox.sandbox.backend.kubernetes.pod import sandbox_pod
from mcp_container_sandbox.sandbox.containers import sandbox_labels, sandbox_spec
from mcp_container_sandbox.sandbox.model import Sandbox

pytestmark = pytest.mark.anyio
SELECTED = {"mcp-sandbox.managed": "true", "mcp-sandbox.namespace": "team-a"}


def pooled_pod(n: int) -> dict[str, Any]:
    sandbox = Sandbox(f"{n:032x}", "localhost/mcp-sandbox-busybox:latest", 1.5e9, 1.5e9 + 600)
    return sandbox_pod(sandbox_spec(sandbox, sandbox_labels(sandbox, "team-a", {"image_id": "x"})), "sandboxes")


@pytest.fixture
async def api() -> AsyncIterator[tuple[KubeApiStandIn, KubeApi]]:
    stand_in = KubeApiStandIn()
    with stand_in.serving(free_port()) as url:
        client = KubeApi(Cluster(url, token="a-service-account-token"), "sandboxes")
        try:
            yield stand_in, client
        finally:
            await client.aclose()


async def test_a_pod_is_created_read_listed_by_label_and_deleted(api: tuple[KubeApiStandIn, KubeApi]) -> None:
    stand_in, client = api
    made = await client.create_pod(pooled_pod(1))
    assert made["metadata"]["resourceVersion"] and made["status"]["phase"] == "Running"
    other = pooled_pod(2)
    other["metadata"]["labels"]["mcp-sandbox.namespace"] = "team-b"
    await client.create_pod(other)
    listed, version = await client.list_pods(SELECTED)
    assert [pod["metadata"]["name"] for pod in listed] == [made["metadata"]["name"]] and version
    assert (await client.get_pod(made["metadata"]["name"]))["metadata"]["uid"] == made["metadata"]["uid"]
    assert await client.delete_pod(made["metadata"]["name"]) is True
    assert await client.get_pod(made["metadata"]["name"]) is None
    assert await client.delete_pod(made["metadata"]["name"]) is False  # gone already: no failure


async def test_the_apis_refusals_say_what_was_wrong(api: tuple[KubeApiStandIn, KubeApi]) -> None:
    stand_in, client = api
    await client.create_pod(pooled_pod(1))
    with pytest.raises(Conflict, match="already exists"):
        await client.create_pod(pooled_pod(1))
    invalid = pooled_pod(2)
    invalid["spec"]["containers"][0]["resources"]["limits"]["cpu"] = {"not": "a quantity"}
    with pytest.raises(ApiError, match="found the object invalid") as refused:
        await client.create_pod(invalid)
    assert refused.value.status == 422
    stand_in.forbidden = {"delete"}
    with pytest.raises(ApiError, match="forbids this server to delete pods.*Role needs that verb") as forbidden:
        await client.delete_pod(pooled_pod(1)["metadata"]["name"])
    assert forbidden.value.status == 403
    unreachable = KubeApi(Cluster(f"http://127.0.0.1:{free_port()}"), "sandboxes")
    with pytest.raises(ApiError, match="did not answer"):
        await unreachable.list_pods(SELECTED)
    await unreachable.aclose()


async def test_two_replicas_racing_for_one_pooled_pod_claim_it_once(api: tuple[KubeApiStandIn, KubeApi]) -> None:
    stand_in, client = api
    for n in (1, 2):
        await client.create_pod(pooled_pod(n))
    other = KubeApi(client.cluster, "sandboxes")
    claimed: dict[str, str] = {}

    async def claim(replica: KubeApi, tenant: str) -> None:
        """A claim as the backend makes it: the first unclaimed Pod, patched at the version read; a 409 takes the next."""
        pods, _ = await replica.list_pods({**SELECTED, "mcp-sandbox.pooled": "true"})
        for pod in pods:
            try:
                await replica.patch_pod(pod["metadata"]["name"], {"metadata": {"labels": {
                    "mcp-sandbox.pooled": None, "mcp-sandbox.tenant": tenant}}}, pod["metadata"]["resourceVersion"])
            except Conflict:
                continue
            claimed[tenant] = pod["metadata"]["name"]
            return

    try:
        async with anyio.create_task_group() as group:
            group.start_soon(claim, client, "t-ada")
            group.start_soon(claim, other, "t-grace")
    finally:
        await other.aclose()
    assert set(claimed) == {"t-ada", "t-grace"} and len(set(claimed.values())) == 2, claimed
    pods, _ = await client.list_pods(SELECTED)
    assert sorted(pod["metadata"]["labels"].get("mcp-sandbox.tenant", "") for pod in pods) == ["t-ada", "t-grace"]
    assert not [pod for pod in pods if pod["metadata"]["labels"].get("mcp-sandbox.pooled")]


async def test_a_watch_tells_each_change_resumes_from_a_version_and_an_old_one_is_expired(
        api: tuple[KubeApiStandIn, KubeApi]) -> None:
    stand_in, client = api
    _, version = await client.list_pods(SELECTED)
    seen: list[tuple[str, str]] = []

    async def watch(since: str, count: int) -> str:
        async for kind, pod in client.watch_pods(SELECTED, since):
            seen.append((kind, pod["metadata"]["name"]))
            since = pod["metadata"]["resourceVersion"]
            if len(seen) == count:
                break
        return since

    with anyio.fail_after(30):
        async with anyio.create_task_group() as group:
            group.start_soon(watch, version, 2)
            await anyio.sleep(0.2)
            made = await client.create_pod(pooled_pod(1))
            await client.patch_pod(made["metadata"]["name"], {"metadata": {"annotations": {"seen": "yes"}}})
        name = made["metadata"]["name"]
        assert seen == [("ADDED", name), ("MODIFIED", name)]
        last = (await client.get_pod(name))["metadata"]["resourceVersion"]
        await client.delete_pod(name)
        await watch(last, 3)  # resumed where it stopped: only what came after
        assert seen[2] == ("DELETED", name)
        for n in range(2, 60):  # past the window the stand-in keeps, as etcd's compaction does
            await client.create_pod(pooled_pod(n))
        with pytest.raises(Expired, match="list again"):
            await watch(version, 99)


def test_where_the_cluster_is_comes_from_the_kubeconfigs_current_context(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import yaml

    config = {"current-context": "team", "contexts": [{"name": "team", "context": {"cluster": "c", "user": "u"}}],
              "clusters": [{"name": "c", "cluster": {"server": "https://203.0.113.5:6443/",
                                                     "insecure-skip-tls-verify": True}}],
              "users": [{"name": "u", "user": {"token": "sa-token"}}]}
    (tmp_path / "config").write_text(yaml.safe_dump(config))
    found = Cluster.find({"KUBECONFIG": str(tmp_path / "config")})
    assert (found.server, found.token, found.ssl_context) == ("https://203.0.113.5:6443", "sa-token", False)
    config["users"][0]["user"] = {"exec": {"command": "aws"}}
    with pytest.raises(ValueError, match="plugin"):
        Cluster.from_kubeconfig(yaml.safe_dump(config))
    with pytest.raises(ValueError, match="no kubeconfig at"):
        Cluster.find({"KUBECONFIG": str(tmp_path / "missing"), "HOME": str(tmp_path)})
