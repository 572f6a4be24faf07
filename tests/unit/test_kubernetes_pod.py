"""The Pod a sandbox is (sandbox/backend/kubernetes/pod.py): the product's limits as Kubernetes says
them, valid against the Kubernetes API's own schemas (kubernetes-validate, offline), and what cannot be
a Pod refused with a reason. tests/integration/test_kubernetes_kube_play.py runs it under podman kube play."""

from __future__ import annotations

import json
import subprocess
import sys

import kubernetes_validate
import pytest

from mcp_container_sandbox.sandbox.backend.abstract import ContainerSpec
from mcp_container_sandbox.sandbox.backend.kubernetes.pod import quantity, sandbox_pod
from mcp_container_sandbox.sandbox.containers import sandbox_labels, sandbox_spec
from mcp_container_sandbox.sandbox.model import Sandbox
from mcp_container_sandbox.settings import KubernetesSettings

VERSIONS = ("1.31.0", "1.33.0", "1.35.0", "1.37.0")  # the releases a cluster may run now, oldest supported first


def spec(pooled: bool = False, tenant: str = "t-0123456789abcdef") -> ContainerSpec:
    sandbox = Sandbox("0123456789abcdef0123456789abcdef", "localhost/mcp-sandbox-busybox:latest", 1.5e9, 1.5e9 + 7200,
                      tenant=tenant)
    made_under = {"image_id": "sha256:" + "a" * 64, "limits": "--memory=256m --cpus=0.5"} if pooled else None
    return sandbox_spec(sandbox, sandbox_labels(sandbox, "team-a", made_under))


def test_a_sandbox_pod_has_the_products_limits_and_hands_nothing_of_the_cluster_in() -> None:
    pod = sandbox_pod(spec(), "sandboxes", disk_bytes=2 << 30, lifetime_seconds=7200)
    container = pod["spec"]["containers"][0]
    limits = {"cpu": "500m", "memory": "256Mi", "ephemeral-storage": str(2 << 30)}
    assert container["resources"] == {"requests": limits, "limits": limits}  # Guaranteed QoS
    assert container["securityContext"] == {"capabilities": {"drop": ["ALL"]}, "allowPrivilegeEscalation": False,
                                            "privileged": False, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["spec"]["automountServiceAccountToken"] is False and pod["spec"]["enableServiceLinks"] is False
    assert pod["spec"]["activeDeadlineSeconds"] == 7200 + 300  # the reaper first; the deadline is the backstop
    state = next(v for v in pod["spec"]["volumes"] if v["emptyDir"].get("medium") == "Memory")
    assert state["emptyDir"]["sizeLimit"] == "64Mi"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/run/mcp-sandbox", "/var/lib/mcp-sandbox"}
    assert pod["metadata"]["labels"] == {"mcp-sandbox.managed": "true", "mcp-sandbox.namespace": "team-a",
                                         "mcp-sandbox.tenant": "t-0123456789abcdef"}
    # What no label value may hold (an image name) is kept as an annotation, with every label.
    assert pod["metadata"]["annotations"]["mcp-sandbox.image"] == "localhost/mcp-sandbox-busybox:latest"


@pytest.mark.parametrize("version", VERSIONS)
def test_every_sandbox_pod_is_valid_for_the_kubernetes_api(version: str) -> None:
    placed = KubernetesSettings.from_env({"SANDBOX_K8S_RUNTIME_CLASS": "gvisor",
                                          "SANDBOX_K8S_NODE_SELECTOR": "pool=sandboxes",
                                          "SANDBOX_K8S_TOLERATIONS": "sandboxes=true:NoSchedule,dedicated"})
    pods = [sandbox_pod(spec(), "sandboxes", 2 << 30, 7200, egress="public"),
            sandbox_pod(spec(pooled=True), "sandboxes", 0, None, placed.runtime_class, placed.node_selector,
                        placed.tolerations)]
    for pod in pods:
        assert kubernetes_validate.validate(pod, version, strict=True)
    assert pods[1]["spec"]["tolerations"] == [
        {"key": "sandboxes", "operator": "Equal", "value": "true", "effect": "NoSchedule"},
        {"key": "dedicated", "operator": "Exists"}]
    assert "activeDeadlineSeconds" not in pods[1]["spec"]  # a pooled one gets its deadline when claimed
    assert pods[1]["metadata"]["labels"]["mcp-sandbox.pooled"] == "true"
    assert pods[0]["metadata"]["labels"]["mcp-sandbox.egress"] == "public"  # what its NetworkPolicy selects
    assert "mcp-sandbox.egress" not in pods[1]["metadata"]["labels"]


def test_the_validator_refuses_what_the_api_server_would() -> None:
    pod = sandbox_pod(spec(), "sandboxes", 0, 60)
    pod["spec"]["containers"][0]["securityContext"]["capabilities"]["drop"] = "ALL"  # a string, not a list
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, VERSIONS[-1], strict=True)


def test_what_cannot_be_a_pod_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="not a Kubernetes label value"):
        sandbox_pod(spec(tenant="t-" + "x" * 70), "sandboxes")
    with pytest.raises(ValueError, match="Podman's only"):
        sandbox_pod(ContainerSpec("mcp-sandbox-x", {}, ("sleep", "1"), rootfs="/var/lib/disks/x"), "sandboxes")
    with pytest.raises(ValueError, match="no host folders"):
        sandbox_pod(ContainerSpec("mcp-sandbox-x", {}, ("sleep", "1"), image="i", volumes=("/srv:/data",)), "s")
    assert [quantity(size) for size in ("64m", "1g", "512k", "65536")] == ["64Mi", "1Gi", "512Ki", "65536"]


@pytest.mark.parametrize("variable, value", [("SANDBOX_K8S_NODE_SELECTOR", "pool"),
                                             ("SANDBOX_K8S_TOLERATIONS", "key=value:Sometimes")])
def test_a_placement_that_cannot_be_read_is_refused_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(ValueError, match=variable):
        KubernetesSettings.from_env({variable: value})


def test_the_command_prints_the_pod_under_the_settings_in_force() -> None:
    printed = subprocess.run(
        [sys.executable, "-m", "mcp_container_sandbox", "kube", "pod-manifest"], capture_output=True, text=True,
        check=True, timeout=60, env={"SANDBOX_K8S_NAMESPACE": "agents", "SANDBOX_K8S_RUNTIME_CLASS": "gvisor",
                                     "SANDBOX_TTL_SECONDS": "600", "SANDBOX_IMAGE": "python:3.12-slim",
                                     "PATH": "/usr/bin:/bin"}).stdout
    pod = json.loads(printed)
    assert pod["metadata"]["namespace"] == "agents" and pod["spec"]["runtimeClassName"] == "gvisor"
    assert pod["spec"]["containers"][0]["image"] == "python:3.12-slim"
    assert pod["spec"]["activeDeadlineSeconds"] == 600 + 300
    assert kubernetes_validate.validate(pod, VERSIONS[-1], strict=True)
