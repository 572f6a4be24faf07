"""The egress policy where the backend's cluster enforces it (Kubernetes): no rules on this host, but
a label on each sandbox's Pod (``mcp-sandbox.egress``: public, none, open, or proxied) that the
sandboxes' NetworkPolicies select by (deploy/kubernetes/sandbox-networkpolicies.yaml). Whether they
are in force is the cluster's CNI plugin's business, which the server cannot see: /health says so
rather than claim it (docs/kubernetes.md lists the plugins that enforce NetworkPolicy).

``allow_domains``: every server runs the egress proxy on its own Pod (SANDBOX_PROXY_PORT), behind a
Service sandboxes reach at SANDBOX_K8S_PROXY. A sandbox behind it is labelled ``proxied`` (its
NetworkPolicy lets it reach only the servers' proxy port and the cluster's DNS), and its allow-list is
recorded on its Pod, so every server's proxy knows it by the Pod's address (learn)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ...settings import SandboxSettings
from ..backend.abstract import Backend
from ..errors import InvalidAllowList
from ..model import NAME_PREFIX
from .egress import Egress
from .secret_rules import SecretRule

POD_NETWORK = "pod-network"  # a sandbox with a network: the cluster's, under the Pod's NetworkPolicy
PROXIED = "proxied"  # the egress label of a sandbox behind the proxy
RECORD = "allow:domains"  # its allow-list, on its Pod: the patterns, space-separated


class ClusterEgress(Egress):
    def __init__(self, settings: SandboxSettings, backend: Backend, env: dict[str, str]) -> None:
        super().__init__(settings, backend, env)
        self._sandboxes_reach = settings.kubernetes.proxy

    async def start(self) -> None:
        self.why_not, self.bridge, self.dns = "", None, ()
        self.network = "none" if self.policy == "none" else POD_NETWORK
        if self.policy != "public":
            self.proxy_why_not = f"SANDBOX_EGRESS is {self.policy}"
        elif not self._sandboxes_reach:
            self.proxy_why_not = ("SANDBOX_K8S_PROXY is not set (the Service at which sandboxes reach the servers' "
                                  "proxy; docs/kubernetes.md)")
        else:
            try:
                await self.proxy.start("0.0.0.0", self._proxy_port)
                self.proxy_why_not = ""
            except OSError as exc:
                self.proxy_why_not = f"the proxy could not listen on port {self._proxy_port} ({exc})"

    def describe(self) -> dict[str, object]:
        return {"policy": self.policy, "enforced_by": "the cluster's NetworkPolicy for label mcp-sandbox.egress="
                f"{self.policy} (deploy/kubernetes/), if its CNI plugin enforces NetworkPolicy",
                "allow_domains": self.proxy_why_not or f"through the proxy at {self._proxy_url()}"}

    def of(self, network: str, container_id: str = "") -> dict[str, object]:
        restricted = self._restricted.get(container_id)
        if restricted is not None:
            return {"policy": "allow_domains", "allow_domains": list(restricted[1]), "proxy": self._proxy_url()}
        return {"policy": "none" if network == "none" else self.policy}

    async def keep(self) -> None:
        return None

    def check_secrets(self, asked: Sequence[dict[str, str]], domains: Sequence[str]) -> tuple[()]:
        if asked:
            raise InvalidAllowList("secrets are not available on the Kubernetes backend yet: every server's proxy "
                                   "would need them. Create the sandbox without secrets.")
        return ()

    def _why_no_allow_lists(self) -> str:
        return self.proxy_why_not

    def proxy_url_for(self, container_id: str) -> str:
        return self._proxy_url()

    def _proxy_url(self) -> str:
        return f"http://{self._sandboxes_reach}"

    def environment(self, url: str = "") -> bytes:
        return super().environment(url or self._proxy_url())

    async def restrict(self, container_id: str, address: str, domains: Sequence[str],
                       rules: Sequence[SecretRule] | None = None) -> None:
        """Behind the proxy: its allow-list recorded on its Pod (every server's proxy learns it), then
        the label that lets it reach nothing but the proxy."""
        name = NAME_PREFIX + container_id
        await self.backend.put_records(name, {RECORD: " ".join(domains)})
        self._allow(container_id, address, tuple(domains))
        await self.backend.set_egress(name, PROXIED)  # type: ignore[attr-defined]  (KubernetesBackend's)

    def learn(self, container_id: str, address: str, records: Mapping[str, str]) -> None:
        domains = tuple(records.get(RECORD, "").split())
        if domains and address and self._restricted.get(container_id) != (address, domains):
            self._allow(container_id, address, domains)

    def _allow(self, container_id: str, address: str, domains: tuple[str, ...]) -> None:
        self._restricted[container_id] = (address, domains)
        self.proxy.allow(address, container_id, domains)

    async def readopt(self, sandbox: object) -> None:
        return None  # its allow-list is on its Pod: learnt as the server follows the Pods

    async def release(self, container_id: str) -> None:
        restricted = self._restricted.pop(container_id, None)
        if restricted is not None and not any(other == restricted[0] for other, _ in self._restricted.values()):
            self.proxy.forget(restricted[0])

