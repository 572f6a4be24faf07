"""What create_container's allow_domains asks of the egress policy (egress.py): the list checked, why
a server cannot enforce one, the environment that points a sandbox at the proxy, and the lists kept
on the host that no sandbox holds any more."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from ..backend.abstract import BridgeNetwork
from ..errors import InvalidAllowList
from .proxy import EgressProxy, check_allow_domains


class AllowLists:
    policy: str
    why_not: str
    proxy_why_not: str
    bridge: BridgeNetwork | None
    proxy: EgressProxy
    _max_domains: int
    _state: Path

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
