"""deploy/kubernetes/ holds what its comments say: every object valid for the Kubernetes releases a
cluster may run, the Role exactly the verbs the server's API calls need, the sandboxes' NetworkPolicies
one per egress label the backend gives (blocking what the Podman backend's rules block), and the
Deployment's settings ones the server reads."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from test_kubernetes_pod import VERSIONS

from mcp_container_sandbox import settings
from mcp_container_sandbox.sandbox.backend.kubernetes import api
from mcp_container_sandbox.sandbox.backend.kubernetes import LABEL_EGRESS
from mcp_container_sandbox.sandbox.network.cluster_egress import PROXIED
from mcp_container_sandbox.sandbox.network.egress_rules import BLOCKED_V4, BLOCKED_V6

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
MANIFESTS = sorted(path for path in DEPLOY.glob("*.yaml") if path.name != "kustomization.yaml")


def objects() -> list[dict[str, Any]]:
    return [doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text()) if doc]


def container_env(deployment: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}


def one(kind: str, name: str = "") -> dict[str, Any]:
    [found] = [o for o in objects() if o["kind"] == kind and (not name or o["metadata"]["name"] == name)]
    return found


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_for_each_release(version: str) -> None:
    assert len(objects()) >= 10
    for manifest in objects():
        kubernetes_validate.validate(manifest, version, strict=True)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())
    assert sorted(kustomization["resources"]) == [path.name for path in MANIFESTS]


def test_the_role_grants_exactly_the_verbs_the_api_calls_use() -> None:
    granted = {resource: set(rule["verbs"]) for rule in one("Role")["rules"] for resource in rule["resources"]}
    # Each call names its verb for the 403 message: "create pods", "watch pods", ...
    called = set(re.findall(r'"(\w+) pods"', Path(api.__file__).read_text()))
    assert called and called <= granted["pods"], called - granted["pods"]
    assert granted == {"pods": {"create", "get", "list", "watch", "patch", "delete"},
                       "pods/exec": {"create", "get"}}
    binding, deployment = one("RoleBinding"), one("Deployment")
    assert binding["roleRef"]["name"] == one("Role")["metadata"]["name"]
    [subject] = binding["subjects"]
    assert (subject["name"], subject["namespace"]) == (
        deployment["spec"]["template"]["spec"]["serviceAccountName"], deployment["metadata"]["namespace"])


def test_sandboxes_namespace_is_the_one_the_server_is_told() -> None:
    deployment = one("Deployment")
    env = container_env(deployment)
    described = {name for name, _, _ in settings.VARIABLES}
    assert set(env) <= described, set(env) - described
    assert env["SANDBOX_BACKEND"] == "kubernetes"
    sandboxes = env["SANDBOX_K8S_NAMESPACE"]
    assert one("Role")["metadata"]["namespace"] == sandboxes
    assert {p["metadata"]["namespace"] for p in objects() if p["kind"] == "NetworkPolicy"} == {sandboxes}
    assert sandboxes in {o["metadata"]["name"] for o in objects() if o["kind"] == "Namespace"}
    assert deployment["spec"]["replicas"] >= 2
    assert one("Service", "mcp-sandbox")["spec"]["sessionAffinity"] == "ClientIP"  # an MCP session lives in one replica


def test_each_egress_label_has_its_policy_and_public_blocks_what_podman_blocks() -> None:
    policies = [p for p in objects() if p["kind"] == "NetworkPolicy"]
    deny = [p for p in policies if p["spec"]["podSelector"] == {}]
    assert len(deny) == 1 and "egress" not in deny[0]["spec"] and "ingress" not in deny[0]["spec"]
    assert set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    by_label = {p["spec"]["podSelector"]["matchLabels"][LABEL_EGRESS]: p for p in policies if p not in deny}
    assert set(by_label) | {"none"} == {*settings.EGRESS_POLICIES, PROXIED}  # none: the default deny alone
    assert by_label["open"]["spec"]["egress"] == [{}]
    blocks = {rule["ipBlock"]["cidr"]: rule["ipBlock"]["except"]
              for rule in by_label["public"]["spec"]["egress"][1]["to"]}
    assert blocks == {"0.0.0.0/0": list(BLOCKED_V4), "::/0": list(BLOCKED_V6)}
    dns = by_label["public"]["spec"]["egress"][0]
    assert {p["port"] for p in dns["ports"]} == {53} and "ipBlock" not in dns["to"][0]


def test_sandboxes_behind_the_proxy_reach_only_the_servers_proxy_port_through_its_service() -> None:
    proxied = next(p for p in objects() if p["kind"] == "NetworkPolicy"
                   and p["spec"]["podSelector"].get("matchLabels", {}).get(LABEL_EGRESS) == PROXIED)
    dns, to_servers = proxied["spec"]["egress"]
    assert {p["port"] for p in dns["ports"]} == {53}
    deployment, service = one("Deployment"), one("Service", "mcp-sandbox-proxy")
    [peer] = to_servers["to"]
    assert peer["podSelector"]["matchLabels"] == deployment["spec"]["template"]["metadata"]["labels"]
    assert peer["namespaceSelector"]["matchLabels"] == {"kubernetes.io/metadata.name": deployment["metadata"]["namespace"]}
    ports = {p["name"]: p["containerPort"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert [p["port"] for p in to_servers["ports"]] == [ports["proxy"]] == [settings.SandboxSettings().proxy_port]
    [service_port] = service["spec"]["ports"]
    assert service_port["targetPort"] == "proxy" and service["spec"]["selector"] == peer["podSelector"]["matchLabels"]
    host, port = container_env(deployment)["SANDBOX_K8S_PROXY"].split(":")
    assert host == f"{service['metadata']['name']}.{service['metadata']['namespace']}.svc"
    assert int(port) == service_port["port"]

