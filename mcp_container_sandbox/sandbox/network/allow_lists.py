"""What create_container's allow_domains and set_egress ask of the egress policy (egress.py): the list
checked, why a server cannot enforce one, the environment that points a sandbox at the proxy, a
sandbox cut off from every network while it runs, and the lists kept on the host that no sandbox
holds any more."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..backend.abstract import Backend, BridgeNetwork
from ..errors import InvalidAllowList, SandboxError
from ..model import Sandbox
from .egress_rules import run_nft, table_name
from ..paths import CA_BUNDLE_PATH, CA_PATH
from .proxy import EgressProxy, check_allow_domains
from .sandbox_networks import SandboxNetworks
from .secret_rules import SecretRule
from .secrets import SecretStore, check_secrets, host_bundle, secret_environment

logger = logging.getLogger("mcp_sandbox.egress")


class AllowLists:
    policy: str
    why_not: str
    proxy_why_not: str
    backend: Backend
    bridge: BridgeNetwork | None
    sandbox_networks: SandboxNetworks
    proxy: EgressProxy
    _max_domains: int
    _state: Path
    _env: dict[str, str]
    _restricted: dict[str, tuple[str, tuple[str, ...]]]
    _cut: dict[str, str]
    _rules: dict[str, tuple[SecretRule, ...]]
    secrets: SecretStore

    def check_secrets(self, asked: Sequence[dict[str, str]], domains: Sequence[str]) -> tuple[SecretRule, ...]:
        """create_container's secrets, checked against its allow-list and the server's secrets."""
        return check_secrets(asked, domains, self.secrets)

    def sandbox_environment(self, container_id: str) -> bytes:
        """The environment file of a sandbox behind the proxy: the proxy, and its secrets' placeholders."""
        return (self.environment(self.proxy_url_for(container_id))
                + secret_environment(self._rules.get(container_id, ()), CA_BUNDLE_PATH, CA_PATH))

    def proxy_url_for(self, container_id: str) -> str:
        """The proxy's URL as the sandbox reaches it ("": the proxy's own)."""
        return ""

    def _table_of(self, address: str) -> str:
        """The nftables table of the sandbox network that holds the address."""
        bridge = self.sandbox_networks.of_address(address) or self.bridge
        assert bridge is not None
        return table_name(bridge)

    def ca_files(self) -> list[tuple[str, bytes]]:
        """What a sandbox with secrets gets to trust the proxy: its CA, and the host's trust store with it."""
        assert self.proxy.ca is not None
        return [(CA_PATH, self.proxy.ca.cert_pem), (CA_BUNDLE_PATH, host_bundle() + b"\n" + self.proxy.ca.cert_pem)]

    async def cut_off(self, container_id: str, address: str) -> None:
        """set_egress(network=false): nothing reaches the sandbox or leaves it through the host from now
        on, its allow-list (if it had one) included; kept on the host across restarts of the server."""
        if self.bridge is None:
            raise SandboxError(f"A sandbox's network can be turned off while it runs only under SANDBOX_EGRESS=public "
                               f"({self.why_not or 'SANDBOX_EGRESS is ' + self.policy}).")
        self._state.mkdir(parents=True, exist_ok=True)
        (self._state / f"{container_id}.json").write_text(json.dumps({  # its secrets too, for when it is let out again
            "address": address, "cut": True, "secrets": [rule.record() for rule in self._rules.get(container_id, ())]}))
        self._cut[container_id] = address
        await run_nft(self._env, "add", "element", "inet", self._table_of(address), "cut_off", f"{{ {address} }}")
        restricted = self._restricted.pop(container_id, None)
        if restricted is not None:
            await self._drop_element("proxied", restricted[0])

    async def _drop_element(self, name: str, address: str) -> None:
        """An address out of the set ``proxied`` or ``cut_off``, unless another sandbox here holds it there."""
        held = [a for a, _ in self._restricted.values()] if name == "proxied" else list(self._cut.values())
        if self.bridge is None or address in held:
            return
        if name == "proxied":
            self.proxy.forget(address)
        try:
            await run_nft(self._env, "delete", "element", "inet", self._table_of(address), name, f"{{ {address} }}")
        except SandboxError as exc:
            logger.warning("could not take %s out of the %s set: %s", address, name, exc)

    async def readopt(self, sandbox: Sandbox) -> None:
        """After a restart of the server: a sandbox behind the proxy stays behind it (the allow-list
        is kept on the host, where the sandbox cannot change it), at the address it has now (a
        sandbox started again after a reboot of the host may have another)."""
        container_id = sandbox.container_id
        path = self._state / f"{container_id}.json"
        try:
            saved = json.loads(path.read_text())
        except (OSError, ValueError):
            return
        why = self._why_no_allow_lists() if not saved.get("cut") else self._cannot_install()
        if why:
            raise SandboxError(why)
        try:
            sandbox.address = await self.backend.address(sandbox.name, sandbox.network) or str(saved["address"])
        except SandboxError:
            sandbox.address = str(saved["address"])
        rules = [SecretRule(**rule) for rule in saved.get("secrets", [])]
        if saved.get("cut"):
            self._rules[container_id] = tuple(rules)
            await self.cut_off(container_id, sandbox.address)
        else:
            await self.restrict(container_id, sandbox.address, [str(d) for d in saved["domains"]], rules)

    def check_allow_domains(self, domains: object, network: bool | None) -> tuple[str, ...]:
        """create_container's allow_domains, checked; InvalidAllowList says what is wrong and what to do."""
        if network is False:
            raise InvalidAllowList("allow_domains needs a network; omit network=false, or omit allow_domains for a "
                                   "sandbox with no network at all.")
        why = self._why_no_allow_lists()
        if why:
            raise InvalidAllowList(f"allow_domains cannot be enforced on this server ({why}). Create the sandbox "
                                   "without allow_domains, or ask its operator to run it under SANDBOX_EGRESS=public.")
        return check_allow_domains(domains, self._max_domains)

    def _why_no_allow_lists(self) -> str:
        """Why this server cannot put sandboxes behind the proxy ("" when it can)."""
        if self.policy != "public":
            return f"SANDBOX_EGRESS is {self.policy}"
        return self.why_not or self.proxy_why_not or ("" if self.bridge is not None else "no sandbox network")

    def environment(self, url: str = "") -> bytes:
        """The environment file of a sandbox behind the proxy (paths.ENV_PATH): the proxy's URL."""
        url = url or self.proxy.url
        local = "localhost,127.0.0.1,::1"
        return "".join(f"{key}={value}\n" for key, value in (
            ("http_proxy", url), ("https_proxy", url), ("HTTP_PROXY", url), ("HTTPS_PROXY", url),
            ("no_proxy", local), ("NO_PROXY", local))).encode()

    def learn(self, container_id: str, address: str, records: Mapping[str, str]) -> None:
        """Another server's allow-list for a shared sandbox: none here (one server's, kept on its host)."""

    def forget_saved(self, keep: set[str]) -> None:
        """Remove the saved allow-lists of sandboxes that are gone."""
        if self._state.is_dir():
            for path in self._state.glob("*.json"):
                if path.stem not in keep:
                    path.unlink(missing_ok=True)
