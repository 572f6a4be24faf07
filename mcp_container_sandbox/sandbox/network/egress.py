"""Where sandboxes may connect: the egress policy (SANDBOX_EGRESS), enforced by the host's kernel.

Under ``public`` sandboxes live on a bridge network of the server's own, and one nftables table
of the server's own (``inet mcp_sandbox``, which matches only packets that come in on that
bridge, so the host's other traffic never meets it) decides:

* to the host itself, on any of its addresses (the ``input`` hook): only DNS to the bridge's
  gateway, where Podman's resolver answers; nothing else;
* through the host (the ``forward`` hook, which also sees traffic between sandboxes on the
  bridge): DNS (port 53) to the host's own resolvers; the operator's SANDBOX_EGRESS_ALLOW_CIDRS;
  then nothing private, loopback, link-local (cloud metadata), shared, multicast or broadcast;
  the rest of the internet.

Sandboxes ask the host's resolvers (those of /etc/resolv.conf that a sandbox can reach through
the host: not loopback, not one of the host's own addresses) directly, with ``--dns``, before
Podman's resolver on the gateway (aardvark-dns), which drops queries while containers come and go
on its network (containers/aardvark-dns#389) and stays second, for when those do not answer.
Where the host has no such resolver, the gateway's answers alone, as Podman sets it.

A sandbox cannot change this from inside: it has no capabilities (--cap-drop=ALL), so it can
change neither its addresses nor its routes, nor send raw packets; the rules live in the host's
network namespace, which it cannot enter.
"""

from __future__ import annotations

import ipaddress
import json
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

from ...settings import SandboxSettings
from ..backend.abstract import Backend, BridgeNetwork
from ..errors import SandboxError
from ..model import LABEL_MANAGED, Sandbox
from .egress_rules import (
    BLOCKED_V4,
    BLOCKED_V6,
    BRIDGE_MAX_PORTS,
    bridge_ports_free,
    cannot_run_nft,
    hold_address,
    host_addresses,
    listening_ports,
    remake_table,
    ruleset,
    run_nft,
    sandbox_resolvers,
    table_name,
    upstream_resolvers,
)
from .allow_lists import AllowLists
from .certificates import ProxyCA
from .proxy import EgressProxy
from .secret_rules import SecretRule
from .secrets import SecretStore

logger = logging.getLogger("mcp_sandbox.egress")

# The network sandboxes live on under the public policy, unless SANDBOX_NETWORK names another.
DEFAULT_NETWORK = "mcp-sandbox"
class Egress(AllowLists):
    """The policy in force: decided and installed at start (again after a reboot of the host), it
    says which network new sandboxes join; and the allow-lists of sandboxes behind the proxy."""

    def __init__(self, settings: SandboxSettings, backend: Backend, env: dict[str, str]) -> None:
        self.policy, self.allow_cidrs = settings.egress, settings.egress_allow_cidrs
        self._wanted_network, self.backend, self._env = settings.network, backend, env
        self.network = "none"  # until start decides
        self.bridge: BridgeNetwork | None = None
        self.why_not = ""  # why the public policy could not be put in force ("" while it is)
        self.dns: tuple[str, ...] = ()  # the resolvers sandboxes on the public network ask (--dns)
        self.proxy = EgressProxy((*BLOCKED_V4, *BLOCKED_V6), self.allow_cidrs, host_addresses)
        self.proxy_why_not = "the proxy runs only under SANDBOX_EGRESS=public"
        self._proxy_port, self._max_domains = settings.proxy_port, settings.max_allow_domains
        self._needed = settings.max_containers + (max(settings.pool_size, settings.pool_max) if settings.pool_size else 0)
        self._state = Path(settings.state_dir) / settings.namespace / "egress"
        self._restricted: dict[str, tuple[str, tuple[str, ...]]] = {}  # container id -> (address, domains)
        self._cut: dict[str, str] = {}  # container id -> address, of sandboxes set_egress cut off
        self._rules: dict[str, tuple[SecretRule, ...]] = {}  # container id -> its secrets (secrets.py)
        self.secrets = SecretStore(settings.secrets_file)
        self.proxy.secret_value, self.proxy.ca = self.secrets.value, ProxyCA(self._state.parent / "ca", settings.namespace)
        self._stale: dict[str, set[str]] = {}  # by set: addresses no container held at the last look
        self._hold_failed = False  # said once: the bridge's address could not be held

    def describe(self) -> dict[str, object]:
        """What /health says of the policy."""
        described: dict[str, object] = {"policy": self.policy if not self.why_not else "none"}
        if self.policy == "public" and not self.why_not and self.allow_cidrs:
            described["allow_cidrs"] = list(self.allow_cidrs)
        if self.why_not:
            described["why"] = f"SANDBOX_EGRESS=public could not be enforced here ({self.why_not}), so sandboxes get no network"
        elif self.policy == "public":
            described["allow_domains"] = self.proxy_why_not or f"through the proxy at {self.proxy.url}"
        return described

    def networks(self) -> list[dict[str, object]]:
        """What /health says of the sandbox networks: each one's bridge and the ports it has left
        (a Linux bridge takes BRIDGE_MAX_PORTS, one a sandbox with a network)."""
        if self.bridge is None:
            return []
        free = self.bridge_ports_free()
        return [{"name": self.bridge.name, "bridge": self.bridge.interface,
                 "ports_free": BRIDGE_MAX_PORTS if free is None else free, "ports_max": BRIDGE_MAX_PORTS}]

    def of(self, network: str, container_id: str = "") -> dict[str, object]:
        """What create_container and check_container say of a sandbox's egress."""
        if network == "none" or container_id in self._cut:
            return {"policy": "none"}
        restricted = self._restricted.get(container_id)
        if restricted is not None:
            secrets = [{"name": r.name, "host": r.host, "header": r.header} for r in self._rules.get(container_id, ())]
            return {"policy": "allow_domains", "allow_domains": list(restricted[1]), "proxy": self.proxy.url,
                    **({"secrets": secrets} if secrets else {})}
        if network == (self.bridge.name if self.bridge else DEFAULT_NETWORK):
            # The rules stay while any sandbox is on the server's network, whatever the policy now.
            return {"policy": "public", "allow_cidrs": list(self.allow_cidrs)} if self.allow_cidrs else {"policy": "public"}
        return {"policy": "open", "network": network or "podman"}

    async def start(self) -> None:
        self.why_not, self.bridge, self.dns = "", None, ()
        if self.policy == "none" or self._wanted_network == "none":
            self.network = "none"
        elif self.policy == "open":
            self.network = self._wanted_network  # "" is Podman's default bridge, as before
            if self._wanted_network:
                await self._drop_rules(self._wanted_network)
        else:
            self.why_not = self._cannot_install()
            if not self.why_not:
                try:
                    self.bridge = await self.backend.bridge_network(self._wanted_network or DEFAULT_NETWORK,
                                                                    {LABEL_MANAGED: "true"})
                    self.dns = sandbox_resolvers(upstream_resolvers(), host_addresses(), self.bridge.gateways)
                    await self._start_proxy()
                    await self._install()
                    self.hold_bridge_address()
                except SandboxError as exc:
                    self.why_not, self.bridge = str(exc), None
            if self.why_not:
                logger.warning("SANDBOX_EGRESS=public cannot be enforced (%s): sandboxes get NO network. Run the "
                               "server as root with nft, or choose SANDBOX_EGRESS=none or open.", self.why_not)
                self.network, self.dns = "none", ()
                return
            assert self.bridge is not None
            self.network = self.bridge.name
            room = sum(ipaddress.ip_network(subnet).num_addresses - 3 for subnet in self.bridge.subnets
                       if ipaddress.ip_network(subnet).version == 4)
            if min(room, BRIDGE_MAX_PORTS) < self._needed:
                logger.warning("network %s has room for %d sandboxes, fewer than SANDBOX_MAX_CONTAINERS plus the "
                               "pool (%d): %s", self.bridge.name, min(room, BRIDGE_MAX_PORTS), self._needed,
                               "give it a larger subnet" if room < BRIDGE_MAX_PORTS else
                               f"a Linux bridge takes at most {BRIDGE_MAX_PORTS} ports; lower SANDBOX_MAX_CONTAINERS "
                               "or run a second server on another network (SANDBOX_NETWORK)")
            logger.info("egress policy public on network %s (bridge %s), nftables table inet %s; allow_domains: %s",
                        self.bridge.name, self.bridge.interface, table_name(self.bridge),
                        self.proxy_why_not or f"proxy at {self.proxy.url}")

    async def stop(self) -> None:
        await self.proxy.stop()

    def bridge_ports_free(self, sys_class_net: str = "/sys/class/net") -> int | None:
        """Ports the sandbox bridge can still take (BRIDGE_MAX_PORTS less those it has, whoever
        made them: other servers' sandboxes on the same network count too); None without a bridge
        or before netavark made it (no sandbox on it yet)."""
        return None if self.bridge is None else bridge_ports_free(self.bridge.interface, sys_class_net)

    def hold_bridge_address(self) -> None:
        """Keep the gateway's MAC address from changing as sandboxes come and go (see hold_address);
        called at start, after each container start on the bridge (netavark makes the bridge anew
        when a network's first container starts) and by the reaper. A few file reads when held."""
        if self.bridge is None:
            return
        try:
            if hold_address(self.bridge.interface):
                logger.info("holding the MAC address of bridge %s", self.bridge.interface)
        except OSError as exc:
            if not self._hold_failed:
                self._hold_failed = True
                logger.warning("could not hold the MAC address of bridge %s (%s): sandboxes may lose the gateway "
                               "for seconds whenever others start or go", self.bridge.interface, exc)

    async def _start_proxy(self) -> None:
        assert self.bridge is not None
        gateways = [g for g in self.bridge.gateways if ipaddress.ip_address(g).version == 4]
        if not gateways:
            self.proxy_why_not = f"the network {self.bridge.name} has no IPv4 gateway for the proxy"
            return
        try:
            await self.proxy.start(gateways[0], self._proxy_port)
            self.proxy_why_not = ""
        except OSError as exc:
            self.proxy_why_not = f"the proxy could not listen on {gateways[0]}:{self._proxy_port} ({exc}); " \
                                 "choose another SANDBOX_PROXY_PORT"
            logger.warning("allow_domains are unavailable: %s", self.proxy_why_not)

    async def _install(self) -> None:
        assert self.bridge is not None
        upstream = [r for r in self.dns if r not in self.bridge.gateways]
        await self._nft("-f", "-", script=ruleset(self.bridge, self.allow_cidrs,
                                                  0 if self.proxy_why_not else self.proxy.port, upstream))
        await self._add_elements("proxied", (address for address, _ in self._restricted.values()))
        await self._add_elements("cut_off", self._cut.values())
        try:
            await self._prune()
        except (SandboxError, ValueError, KeyError) as exc:  # tidying only: the rules are in place
            logger.warning("could not tidy the shared sets of the egress rules: %s", exc)

    async def _prune(self) -> None:
        """Take out what servers that ended without cleaning up left in the shared sets: addresses
        no container on the network holds (Podman hands them out again, and a public sandbox given
        one would be cut off from everything, DNS included), and proxy ports nothing listens on at
        the gateway (a sandbox behind the proxy could reach whatever listens there later)."""
        assert self.bridge is not None
        table = table_name(self.bridge)
        for name, ours in (("proxied", {address for address, _ in self._restricted.values()}),
                           ("cut_off", set(self._cut.values()))):
            listed = {str(e) for e in await self._elements(name)} - ours
            held = await self.backend.network_addresses(self.bridge.name) if listed else set()
            if listed and held is not None:
                # Seen stale twice in a row: an address is taken out only when no container held it at
                # either look (never one of a sandbox another server is putting behind its proxy now).
                stale, self._stale[name] = (listed - held) & self._stale.get(name, set()), listed - held
                if stale:
                    logger.info("taking %d addresses of sandboxes that are gone out of the %s set", len(stale), name)
                    await self._nft("delete", "element", "inet", table, name, f"{{ {', '.join(sorted(stale))} }}")
        gateways = [g for g in self.bridge.gateways if ipaddress.ip_address(g).version == 4]
        ports = {int(e) for e in await self._elements("proxy_ports")} - {self.proxy.port}
        idle = ports - listening_ports(gateways)
        if idle:
            await self._nft("delete", "element", "inet", table, "proxy_ports",
                            f"{{ {', '.join(str(p) for p in sorted(idle))} }}")
            # A server that started meanwhile listened before it added its port, which this
            # deletion may have undone: a port listened on now goes back.
            back = idle & listening_ports(gateways)
            if back:
                await self._nft("add", "element", "inet", table, "proxy_ports",
                                f"{{ {', '.join(str(p) for p in sorted(back))} }}")

    async def _elements(self, name: str) -> list[object]:
        assert self.bridge is not None
        listed = json.loads(await self._nft("-j", "list", "set", "inet", table_name(self.bridge), name))
        return next((item["set"].get("elem", []) for item in listed.get("nftables", []) if "set" in item), [])

    async def _add_elements(self, name: str, addresses: Iterable[str]) -> None:
        assert self.bridge is not None
        listed = sorted(set(addresses))
        if listed:
            await self._nft("add", "element", "inet", table_name(self.bridge), name, f"{{ {', '.join(listed)} }}")

    async def keep(self) -> None:
        """Put the rules back if something removed them (a firewall reload, ``nft flush ruleset``);
        the reaper calls this now and then."""
        if self.bridge is None:
            return
        self.hold_bridge_address()
        try:
            if not await self.listing():
                logger.warning("the egress rules of network %s were removed outside this server; installing them "
                               "again", self.bridge.name)
                await self._install()
            else:
                # Another server on the network may have made the table anew.
                await self._add_elements("proxied", (address for address, _ in self._restricted.values()))
                await self._add_elements("cut_off", self._cut.values())
                if self.proxy.port and not self.proxy_why_not:  # or taken this port out (see _prune)
                    await self._nft("add", "element", "inet", table_name(self.bridge), "proxy_ports",
                                    f"{{ {self.proxy.port} }}")
                await self._prune()
        except (SandboxError, ValueError, KeyError) as exc:
            logger.error("could not install the egress rules again: %s", exc)

    # ----- allow-lists

    async def restrict(self, container_id: str, address: str, domains: Sequence[str],
                       rules: Sequence[SecretRule] | None = None) -> None:
        """Put a sandbox behind the proxy: its direct traffic is dropped from now on; ``rules``: its
        secrets (None keeps those it has)."""
        assert self.bridge is not None
        rules = self._rules.get(container_id, ()) if rules is None else tuple(rules)
        self._state.mkdir(parents=True, exist_ok=True)
        (self._state / f"{container_id}.json").write_text(json.dumps(
            {"address": address, "domains": list(domains), "secrets": [rule.record() for rule in rules]}))
        self._restricted[container_id], self._rules[container_id] = (address, tuple(domains)), rules
        self.proxy.allow(address, container_id, domains, rules)
        await self._add_elements("proxied", [address])
        cut = self._cut.pop(container_id, None)  # set_egress from network=false to allow_domains
        if cut is not None:
            await self._drop_element("cut_off", cut)

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

    async def release(self, container_id: str) -> None:
        """The sandbox is gone: its address may go to another sandbox, so it leaves the proxied set
        (unless a newer sandbox with that address holds it already)."""
        restricted, cut = self._restricted.pop(container_id, None), self._cut.pop(container_id, None)
        self._rules.pop(container_id, None)
        (self._state / f"{container_id}.json").unlink(missing_ok=True)
        if restricted is not None:
            await self._drop_element("proxied", restricted[0])
        if cut is not None:
            await self._drop_element("cut_off", cut)

    async def listing(self) -> str:
        """The server's table as the kernel holds it ("" when there is none)."""
        if self.bridge is None:
            return ""
        try:
            return await self._nft("list", "table", "inet", table_name(self.bridge))
        except SandboxError:
            return ""

    async def _drop_rules(self, name: str) -> None:
        """Under the open policy on a network that once had the public one: its rules go once no
        sandbox is left on it (they would guard some sandboxes there and not others). Networks
        this server does not use are not its business: another server may rely on them."""
        if self._cannot_install() or name not in await self.backend.network_names():
            return
        if await self.backend.network_users(name):
            logger.warning("network %s still has sandboxes made under the public policy: its egress rules stay", name)
            return
        try:
            await self._nft("-f", "-", script=remake_table(table_name(await self.backend.bridge_network(name, {}))))
        except SandboxError as exc:
            logger.warning("could not remove the egress rules of network %s: %s", name, exc)

    def _cannot_install(self) -> str:
        return cannot_run_nft(self._env)

    async def _nft(self, *args: str, script: str | None = None) -> str:
        return await run_nft(self._env, *args, script=script)
