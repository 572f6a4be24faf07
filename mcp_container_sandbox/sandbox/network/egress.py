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
from .egress_rules import (
    BLOCKED_V4,
    BLOCKED_V6,
    cannot_run_nft,
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
from .sandbox_networks import SandboxNetworks, later_networks
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
        self.network = "none"  # until start decides: the first sandbox network under the public policy
        self.bridge: BridgeNetwork | None = None  # the first network's, under the public policy
        self.sandbox_networks = SandboxNetworks(backend, settings.network_sandboxes)  # it and the later ones
        self.why_not = ""  # why the public policy could not be put in force ("" while it is)
        self.dns: tuple[str, ...] = ()  # the resolvers sandboxes on the first network ask (--dns)
        self._dns: dict[str, tuple[str, ...]] = {}  # by sandbox network: each asks its own gateway last
        self.proxy = EgressProxy((*BLOCKED_V4, *BLOCKED_V6), self.allow_cidrs, host_addresses)
        self.proxy_why_not = "the proxy runs only under SANDBOX_EGRESS=public"
        self._proxy_port, self._max_domains = settings.proxy_port, settings.max_allow_domains
        self._state = Path(settings.state_dir) / settings.namespace / "egress"
        self._restricted: dict[str, tuple[str, tuple[str, ...]]] = {}  # container id -> (address, domains)
        self._cut: dict[str, str] = {}  # container id -> address, of sandboxes set_egress cut off
        self._rules: dict[str, tuple[SecretRule, ...]] = {}  # container id -> its secrets (secrets.py)
        self.secrets = SecretStore(settings.secrets_file)
        self.proxy.secret_value, self.proxy.ca = self.secrets.value, ProxyCA(self._state.parent / "ca", settings.namespace)
        self._stale: dict[str, set[str]] = {}  # by table and set: addresses no container held at the last look

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
        return self.sandbox_networks.describe()

    async def network_for_new(self) -> str:
        """The network a new sandbox joins: under the public policy the first sandbox network with
        room, or a new one, its rules in place before the sandbox is there (sandbox_networks.py)."""
        if self.bridge is None:
            return self.network
        return await self.sandbox_networks.choose(self._put_on)

    def dns_for(self, network: str) -> tuple[str, ...]:
        return self._dns.get(network, ())

    def of(self, network: str, container_id: str = "") -> dict[str, object]:
        """What create_container and check_container say of a sandbox's egress."""
        if network == "none" or container_id in self._cut:
            return {"policy": "none"}
        restricted = self._restricted.get(container_id)
        if restricted is not None:
            secrets = [{"name": r.name, "host": r.host, "header": r.header} for r in self._rules.get(container_id, ())]
            return {"policy": "allow_domains", "allow_domains": list(restricted[1]),
                    "proxy": self.proxy_url_for(container_id), **({"secrets": secrets} if secrets else {})}
        if network in self.sandbox_networks.bridges or (self.bridge is None and network == DEFAULT_NETWORK):
            # The rules stay while any sandbox is on the server's network, whatever the policy now.
            return {"policy": "public", "allow_cidrs": list(self.allow_cidrs)} if self.allow_cidrs else {"policy": "public"}
        return {"policy": "open", "network": network or "podman"}

    def proxy_url_for(self, container_id: str) -> str:
        """The proxy as a sandbox behind it reaches it: at its own network's gateway."""
        restricted = self._restricted.get(container_id)
        bridge = self.sandbox_networks.of_address(restricted[0]) if restricted is not None else None
        gateway = self.sandbox_networks.gateway(bridge) if bridge is not None else ""
        return f"http://{gateway}:{self.proxy.port}" if gateway and self.proxy.port else self.proxy.url

    async def start(self) -> None:
        self.why_not, self.bridge, self.dns, self._dns = "", None, (), {}
        self.sandbox_networks.clear()
        if self.policy == "none" or self._wanted_network == "none":
            self.network = "none"
        elif self.policy == "open":
            self.network = self._wanted_network  # "" is Podman's default bridge, as before
            if self._wanted_network:  # and the networks that followed it under the public policy
                names = await self.backend.network_names()
                for name in (self._wanted_network, *later_networks(self._wanted_network, names)):
                    await self._drop_rules(name, names)
        else:
            self.why_not = self._cannot_install()
            if not self.why_not:
                try:
                    bridges = await self.sandbox_networks.open(self._wanted_network or DEFAULT_NETWORK)
                    self.bridge = bridges[0]
                    for bridge in bridges:
                        await self._put_on(bridge)
                    self.dns = self._dns[self.bridge.name]
                    self.sandbox_networks.hold_addresses()
                except SandboxError as exc:
                    self.why_not, self.bridge = str(exc), None
                    self.sandbox_networks.clear()
            if self.why_not:
                logger.warning("SANDBOX_EGRESS=public cannot be enforced (%s): sandboxes get NO network. Run the "
                               "server as root with nft, or choose SANDBOX_EGRESS=none or open.", self.why_not)
                self.network, self.dns = "none", ()
                return
            assert self.bridge is not None
            self.network = self.bridge.name
            room = sum(ipaddress.ip_network(subnet).num_addresses - 3 for subnet in self.bridge.subnets
                       if ipaddress.ip_network(subnet).version == 4)
            if room < self.sandbox_networks.per_network:
                logger.warning("network %s has addresses for %d sandboxes, fewer than SANDBOX_NETWORK_SANDBOXES (%d): "
                               "give it a larger subnet", self.bridge.name, room, self.sandbox_networks.per_network)
            logger.info("egress policy public on networks %s (bridges %s), nftables tables inet %s; allow_domains: %s",
                        ", ".join(self.sandbox_networks.bridges),
                        ", ".join(b.interface for b in self.sandbox_networks.bridges.values()),
                        ", ".join(table_name(b) for b in self.sandbox_networks.bridges.values()),
                        self.proxy_why_not or f"proxy on port {self.proxy.port} of each network's gateway")

    async def _put_on(self, bridge: BridgeNetwork) -> None:
        """The policy on one sandbox network: its resolvers, the proxy's listener at its gateway, its rules."""
        self._dns[bridge.name] = sandbox_resolvers(upstream_resolvers(), host_addresses(), bridge.gateways)
        await self._start_proxy(bridge)
        await self._install(bridge)

    async def stop(self) -> None:
        await self.proxy.stop()

    def hold_bridge_address(self, network: str = "") -> None:
        """Keep the gateways' MAC addresses from changing as sandboxes come and go (sandbox_networks.py)."""
        self.sandbox_networks.hold_addresses(network)

    async def _start_proxy(self, bridge: BridgeNetwork) -> None:
        """The proxy's listener at the network's gateway: the first network's decides the port (and
        whether allow_domains are available at all); later networks' listen on the same port."""
        gateway = self.sandbox_networks.gateway(bridge)
        if bridge is not self.bridge:
            if self.proxy.port and not self.proxy_why_not:
                if not gateway:  # never "": that would listen on every address of the host
                    raise SandboxError(f"the new sandbox network {bridge.name} has no IPv4 gateway for the egress proxy")
                try:
                    await self.proxy.listen(gateway)
                except OSError as exc:
                    raise SandboxError(f"the egress proxy could not listen on {gateway}:{self.proxy.port} of the new "
                                       f"sandbox network {bridge.name} ({exc}); try again") from None
            return
        if not gateway:
            self.proxy_why_not = f"the network {bridge.name} has no IPv4 gateway for the proxy"
            return
        try:
            await self.proxy.start(gateway, self._proxy_port)
            self.proxy_why_not = ""
        except OSError as exc:
            self.proxy_why_not = f"the proxy could not listen on {gateway}:{self._proxy_port} ({exc}); " \
                                 "choose another SANDBOX_PROXY_PORT"
            logger.warning("allow_domains are unavailable: %s", self.proxy_why_not)

    async def _install(self, bridge: BridgeNetwork) -> None:
        upstream = [r for r in self._dns.get(bridge.name, ()) if r not in bridge.gateways]
        await self._nft("-f", "-", script=ruleset(bridge, self.allow_cidrs,
                                                  0 if self.proxy_why_not else self.proxy.port, upstream))
        await self._add_elements("proxied", (address for address, _ in self._restricted.values()), bridge)
        await self._add_elements("cut_off", self._cut.values(), bridge)
        try:
            await self._prune(bridge)
        except (SandboxError, ValueError, KeyError) as exc:  # tidying only: the rules are in place
            logger.warning("could not tidy the shared sets of the egress rules: %s", exc)

    async def _prune(self, bridge: BridgeNetwork) -> None:
        """Take out what servers that ended without cleaning up left in the shared sets: addresses
        no container on the network holds (Podman hands them out again, and a public sandbox given
        one would be cut off from everything, DNS included), and proxy ports nothing listens on at
        the gateway (a sandbox behind the proxy could reach whatever listens there later)."""
        table = table_name(bridge)
        for name, ours in (("proxied", {address for address, _ in self._restricted.values()}),
                           ("cut_off", set(self._cut.values()))):
            listed = {str(e) for e in await self._elements(bridge, name)} - ours
            held = await self.backend.network_addresses(bridge.name) if listed else set()
            if listed and held is not None:
                # Seen stale twice in a row: an address is taken out only when no container held it at
                # either look (never one of a sandbox another server is putting behind its proxy now).
                seen = f"{table} {name}"
                stale, self._stale[seen] = (listed - held) & self._stale.get(seen, set()), listed - held
                if stale:
                    logger.info("taking %d addresses of sandboxes that are gone out of the %s set", len(stale), name)
                    await self._nft("delete", "element", "inet", table, name, f"{{ {', '.join(sorted(stale))} }}")
        gateways = [g for g in bridge.gateways if ipaddress.ip_address(g).version == 4]
        ports = {int(e) for e in await self._elements(bridge, "proxy_ports")} - {self.proxy.port}
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

    async def _elements(self, bridge: BridgeNetwork, name: str) -> list[object]:
        listed = json.loads(await self._nft("-j", "list", "set", "inet", table_name(bridge), name))
        return next((item["set"].get("elem", []) for item in listed.get("nftables", []) if "set" in item), [])

    async def _add_elements(self, name: str, addresses: Iterable[str], only: BridgeNetwork | None = None) -> None:
        """Addresses into the set ``name`` of the table of each one's network (``only``: of that network)."""
        by_table: dict[str, set[str]] = {}
        for address in addresses:
            bridge = self.sandbox_networks.of_address(address) or self.bridge
            if bridge is not None and (only is None or bridge.name == only.name):
                by_table.setdefault(table_name(bridge), set()).add(address)
        for table, listed in by_table.items():
            await self._nft("add", "element", "inet", table, name, f"{{ {', '.join(sorted(listed))} }}")

    async def keep(self) -> None:
        """Put the rules back if something removed them (a firewall reload, ``nft flush ruleset``);
        the reaper calls this now and then."""
        self.hold_bridge_address()
        for bridge in list(self.sandbox_networks.bridges.values()):
            try:
                if not await self.listing(bridge):
                    logger.warning("the egress rules of network %s were removed outside this server; installing "
                                   "them again", bridge.name)
                    await self._install(bridge)
                    continue
                # Another server on the network may have made the table anew.
                await self._add_elements("proxied", (address for address, _ in self._restricted.values()), bridge)
                await self._add_elements("cut_off", self._cut.values(), bridge)
                if self.proxy.port and not self.proxy_why_not:  # or taken this port out (see _prune)
                    await self._nft("add", "element", "inet", table_name(bridge), "proxy_ports",
                                    f"{{ {self.proxy.port} }}")
                await self._prune(bridge)
            except (SandboxError, ValueError, KeyError) as exc:
                logger.error("could not install the egress rules of network %s again: %s", bridge.name, exc)

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

    async def listing(self, bridge: BridgeNetwork | None = None) -> str:
        """A sandbox network's table as the kernel holds it (the first network's by default; "" when there is none)."""
        bridge = bridge or self.bridge
        if bridge is None:
            return ""
        try:
            return await self._nft("list", "table", "inet", table_name(bridge))
        except SandboxError:
            return ""

    async def _drop_rules(self, name: str, names: list[str]) -> None:
        """Under the open policy on a network that once had the public one: its rules go once no
        sandbox is left on it (they would guard some sandboxes there and not others). Networks
        this server does not use are not its business: another server may rely on them."""
        if self._cannot_install() or name not in names:
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
