"""Where sandboxes may connect: the egress policy (SANDBOX_EGRESS), enforced by the host's kernel.

Under ``public`` sandboxes live on a bridge network of the server's own, and one nftables table
of the server's own (``inet mcp_sandbox``, which matches only packets that come in on that
bridge, so the host's other traffic never meets it) decides:

* to the host itself, on any of its addresses (the ``input`` hook): only DNS to the bridge's
  gateway, where Podman's resolver answers; nothing else;
* through the host (the ``forward`` hook, which also sees traffic between sandboxes on the
  bridge): the operator's SANDBOX_EGRESS_ALLOW_CIDRS, then nothing private, loopback,
  link-local (cloud metadata), shared, multicast or broadcast; the rest of the internet.

A sandbox cannot change this from inside: it has no capabilities (--cap-drop=ALL), so it can
change neither its addresses nor its routes, nor send raw packets; the rules live in the host's
network namespace, which it cannot enter.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import shutil
from collections.abc import Sequence

import anyio

from .backend import Backend, BridgeNetwork
from .config import SandboxSettings
from .errors import SandboxError

logger = logging.getLogger("mcp_sandbox.egress")

# The network sandboxes live on under the public policy, unless SANDBOX_NETWORK names another.
DEFAULT_NETWORK = "mcp-sandbox"
# What "public" keeps a sandbox from: the host's surroundings, which are not the internet. (The host's
# own addresses, whatever they are, are kept by the input hook.)
BLOCKED_V4: tuple[str, ...] = (
    "0.0.0.0/8",        # "this network"
    "10.0.0.0/8",       # private
    "100.64.0.0/10",    # shared address space (carrier-grade NAT, some clouds' internal services)
    "127.0.0.0/8",      # loopback
    "169.254.0.0/16",   # link-local: cloud metadata services
    "172.16.0.0/12",    # private
    "192.168.0.0/16",   # private
    "224.0.0.0/4",      # multicast
    "240.0.0.0/4",      # reserved, and the broadcast address
)
BLOCKED_V6: tuple[str, ...] = (
    "::/127",           # unspecified and loopback
    "::ffff:0:0/96",    # IPv4-mapped: the IPv4 rules decide
    "64:ff9b::/96",     # NAT64: the IPv4 rules decide
    "fc00::/7",         # unique local (private)
    "fe80::/10",        # link-local
    "ff00::/8",         # multicast
)


def _set(name: str, family: str, elements: Sequence[str]) -> str:
    body = f"type {family}_addr; flags interval;"
    if elements:
        body += f" elements = {{ {', '.join(elements)} }};"
    return f"  set {name} {{ {body} }}\n"


def table_name(network: BridgeNetwork) -> str:
    """The server's table for one bridge: one per network, so servers on other networks keep theirs."""
    return "mcp_sandbox_" + "".join(c if c.isalnum() else "_" for c in network.interface)


def _remake(table: str) -> str:
    # Declaring the table first makes the delete succeed when it does not exist yet.
    return f"table inet {table} {{}}\ndelete table inet {table}\n"


def ruleset(network: BridgeNetwork, allow_cidrs: Sequence[str] = ()) -> str:
    """The nft script that (re)makes the server's table for sandboxes on ``network``."""
    allow_v4 = [c for c in allow_cidrs if ipaddress.ip_network(c).version == 4]
    allow_v6 = [c for c in allow_cidrs if ipaddress.ip_network(c).version == 6]
    gateways_v4 = [g for g in network.gateways if ipaddress.ip_address(g).version == 4]
    gateways_v6 = [g for g in network.gateways if ipaddress.ip_address(g).version == 6]
    iface = f'"{network.interface}"'
    dns = ""
    if gateways_v4:
        dns += f"    ip daddr {{ {', '.join(gateways_v4)} }} meta l4proto {{ tcp, udp }} th dport 53 accept\n"
    if gateways_v6:
        dns += f"    ip6 daddr {{ {', '.join(gateways_v6)} }} meta l4proto {{ tcp, udp }} th dport 53 accept\n"
    return (
        _remake(table_name(network))
        + f"table inet {table_name(network)} {{\n"
        + _set("allowed_v4", "ipv4", allow_v4)
        + _set("allowed_v6", "ipv6", allow_v6)
        + _set("blocked_v4", "ipv4", BLOCKED_V4)
        + _set("blocked_v6", "ipv6", BLOCKED_V6)
        + "  chain input {\n"
        "    type filter hook input priority filter - 10; policy accept;\n"
        f"    iifname != {iface} accept\n"
        "    ct state established,related accept\n"
        + dns
        + "    counter drop\n"
        "  }\n"
        "  chain forward {\n"
        "    type filter hook forward priority filter - 10; policy accept;\n"
        f"    iifname != {iface} accept\n"
        "    ct state established,related accept\n"
        "    ip daddr @allowed_v4 accept\n"
        "    ip6 daddr @allowed_v6 accept\n"
        "    ip daddr @blocked_v4 counter drop\n"
        "    ip6 daddr @blocked_v6 counter drop\n"
        "    meta pkttype { broadcast, multicast } counter drop\n"
        "  }\n"
        "}\n"
    )


class Egress:
    """The policy in force: decided and installed at start (again after a reboot of the host), it
    says which network new sandboxes join."""

    def __init__(self, settings: SandboxSettings, backend: Backend, env: dict[str, str]) -> None:
        self.policy, self.allow_cidrs = settings.egress, settings.egress_allow_cidrs
        self._wanted_network, self.backend, self._env = settings.network, backend, env
        self.network = "none"  # until start decides
        self.bridge: BridgeNetwork | None = None
        self.why_not = ""  # why the public policy could not be put in force ("" while it is)

    def describe(self) -> dict[str, object]:
        """What check_container and /health say of the policy."""
        described: dict[str, object] = {"policy": self.policy if not self.why_not else "none"}
        if self.policy == "public" and not self.why_not and self.allow_cidrs:
            described["allow_cidrs"] = list(self.allow_cidrs)
        if self.why_not:
            described["why"] = f"SANDBOX_EGRESS=public could not be enforced here ({self.why_not}), so sandboxes get no network"
        return described

    def of(self, network: str) -> dict[str, object]:
        """What check_container says of a sandbox's egress, from the network it joined."""
        if network == "none":
            return {"policy": "none"}
        if network == (self.bridge.name if self.bridge else DEFAULT_NETWORK):
            # The rules stay while any sandbox is on the server's network, whatever the policy now.
            return {"policy": "public", "allow_cidrs": list(self.allow_cidrs)} if self.allow_cidrs else {"policy": "public"}
        return {"policy": "open", "network": network or "podman"}

    async def start(self) -> None:
        self.why_not, self.bridge = "", None
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
                    self.bridge = await self.backend.bridge_network(self._wanted_network or DEFAULT_NETWORK, {})
                    await self._install()
                except SandboxError as exc:
                    self.why_not, self.bridge = str(exc), None
            if self.why_not:
                logger.warning("SANDBOX_EGRESS=public cannot be enforced (%s): sandboxes get NO network. Run the "
                               "server as root with nft, or choose SANDBOX_EGRESS=none or open.", self.why_not)
                self.network = "none"
                return
            assert self.bridge is not None
            self.network = self.bridge.name
            logger.info("egress policy public on network %s (bridge %s), nftables table inet %s", self.bridge.name,
                        self.bridge.interface, table_name(self.bridge))

    async def _install(self) -> None:
        assert self.bridge is not None
        await self._nft("-f", "-", script=ruleset(self.bridge, self.allow_cidrs))

    async def keep(self) -> None:
        """Put the rules back if something removed them (a firewall reload, ``nft flush ruleset``);
        the reaper calls this now and then."""
        if self.bridge is not None and not await self.listing():
            logger.warning("the egress rules of network %s were removed outside this server; installing them again",
                           self.bridge.name)
            try:
                await self._install()
            except SandboxError as exc:
                logger.error("could not install the egress rules again: %s", exc)

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
            await self._nft("-f", "-", script=_remake(table_name(await self.backend.bridge_network(name, {}))))
        except SandboxError as exc:
            logger.warning("could not remove the egress rules of network %s: %s", name, exc)

    def _cannot_install(self) -> str:
        if os.geteuid() != 0:
            return "the server does not run as root, so it cannot install nftables rules"
        if shutil.which("nft", path=self._env.get("PATH")) is None:
            return "nft not found (Debian: apt-get install nftables)"
        return ""

    async def _nft(self, *args: str, script: str | None = None) -> str:
        try:
            result = await anyio.run_process(["nft", *args], input=script.encode() if script else None,
                                             check=False, env=self._env)
        except OSError as exc:
            raise SandboxError(f"nft: {exc}") from None
        if result.returncode != 0:
            said = result.stderr.decode(errors="replace").strip().splitlines()
            raise SandboxError(f"nft {' '.join(args)} failed: {said[-1] if said else result.returncode}")
        return result.stdout.decode(errors="replace")
