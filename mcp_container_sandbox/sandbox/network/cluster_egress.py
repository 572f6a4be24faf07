"""The egress policy where the backend's cluster enforces it (Kubernetes): no rules on this host, but
a label on each sandbox's Pod (``mcp-sandbox.egress``: public, none or open) that the sandboxes'
NetworkPolicies select by (deploy/kubernetes/sandbox-networkpolicies.yaml). Whether they are in force
is the cluster's CNI plugin's business, which the server cannot see: /health says so rather than
claim it (docs/kubernetes.md lists the plugins that enforce NetworkPolicy)."""

from __future__ import annotations

from .egress import Egress

POD_NETWORK = "pod-network"  # a sandbox with a network: the cluster's, under the Pod's NetworkPolicy


class ClusterEgress(Egress):
    async def start(self) -> None:
        self.why_not, self.bridge, self.dns = "", None, ()
        self.network = "none" if self.policy == "none" else POD_NETWORK
        self.proxy_why_not = "allow_domains are not available on the Kubernetes backend (docs/kubernetes.md)"

    def describe(self) -> dict[str, object]:
        return {"policy": self.policy, "enforced_by": "the cluster's NetworkPolicy for label mcp-sandbox.egress="
                f"{self.policy} (deploy/kubernetes/), if its CNI plugin enforces NetworkPolicy",
                "allow_domains": self.proxy_why_not}

    def of(self, network: str, container_id: str = "") -> dict[str, object]:
        return {"policy": "none" if network == "none" else self.policy}

    async def keep(self) -> None:
        return None

    def _why_no_allow_lists(self) -> str:
        return self.proxy_why_not
