"""The sandbox networks under the public policy: the first one (SANDBOX_NETWORK, mcp-sandbox by
default) and, as each fills, the next (``<name>-2``, ``<name>-3``, ...), each a Linux bridge of
its own with a /16 of its own. A bridge takes at most BRIDGE_MAX_PORTS ports, one a sandbox with
a network, so one network holds about a thousand sandboxes; SANDBOX_NETWORK_SANDBOXES says how
many before the next. What a network is full of is the kernel's count of its bridge's ports,
which counts every server's sandboxes on it. The egress policy (egress.py) puts its rules, its
proxy's listener and its resolvers on each."""

from __future__ import annotations

import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable

import anyio

from ..backend.abstract import Backend, BridgeNetwork
from ..model import LABEL_MANAGED
from .egress_rules import BRIDGE_MAX_PORTS, bridge_ports_free, hold_address

logger = logging.getLogger("mcp_sandbox.egress")


class SandboxNetworks:
    def __init__(self, backend: Backend, per_network: int, sys_class_net: str = "/sys/class/net") -> None:
        self.backend, self.per_network, self.sys_class_net = backend, per_network, sys_class_net
        self.base = ""
        self.bridges: dict[str, BridgeNetwork] = {}  # by network name, the first one first
        self._lock = anyio.Lock()
        self._hold_failed = False  # said once: a bridge's address could not be held

    @property
    def first(self) -> BridgeNetwork | None:
        return next(iter(self.bridges.values()), None)

    def clear(self) -> None:
        self.bridges = {}

    async def open(self, base: str) -> list[BridgeNetwork]:
        """The first network, made where it does not exist, and the later ones that exist already
        (sandboxes a server before this one put there live on them)."""
        self.base = base
        self.bridges = {base: await self.backend.bridge_network(base, {LABEL_MANAGED: "true"})}
        for name in later_networks(base, await self.backend.network_names()):
            self.bridges[name] = await self.backend.bridge_network(name, {LABEL_MANAGED: "true"})
        return list(self.bridges.values())

    def ports_free(self, bridge: BridgeNetwork) -> int:
        """Ports its bridge can still take (all of them before netavark made it: no sandbox yet)."""
        free = bridge_ports_free(bridge.interface, self.sys_class_net)
        return BRIDGE_MAX_PORTS if free is None else free

    def has_room(self, bridge: BridgeNetwork) -> bool:
        sandboxes = BRIDGE_MAX_PORTS - self.ports_free(bridge) - bridge.other_ports
        return sandboxes < self.per_network and self.ports_free(bridge) > 0

    async def choose(self, made: Callable[[BridgeNetwork], Awaitable[None]]) -> str:
        """The network a new sandbox joins: the first with room, else a new one (``made`` is then
        awaited with it, to put the egress rules on it before any sandbox is there)."""
        for name, bridge in self.bridges.items():
            if self.has_room(bridge):
                return name
        async with self._lock:
            for name, bridge in self.bridges.items():  # another create made one meanwhile
                if self.has_room(bridge):
                    return name
            number = 2
            while f"{self.base}-{number}" in self.bridges:
                number += 1
            name = f"{self.base}-{number}"
            bridge = await self.backend.bridge_network(name, {LABEL_MANAGED: "true"})
            await made(bridge)
            self.bridges[name] = bridge
            logger.info("every sandbox network holds %d sandboxes; new ones go to network %s (bridge %s, %s)",
                        self.per_network, name, bridge.interface, ", ".join(bridge.subnets))
            return name

    def of_address(self, address: str) -> BridgeNetwork | None:
        """The network whose subnet holds the address."""
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return None
        for bridge in self.bridges.values():
            if any(ip in ipaddress.ip_network(subnet, strict=False) for subnet in bridge.subnets):
                return bridge
        return None

    def gateway(self, bridge: BridgeNetwork) -> str:
        return next((g for g in bridge.gateways if ipaddress.ip_address(g).version == 4), "")

    def hold_addresses(self, name: str = "") -> None:
        """Keep a bridge's MAC address from changing as sandboxes come and go (see hold_address);
        called at start, after each container start on the network ``name`` (netavark makes the
        bridge anew when a network's first container starts; all when "") and by the reaper."""
        for bridge in ([self.bridges[name]] if name in self.bridges else [] if name else self.bridges.values()):
            try:
                if hold_address(bridge.interface):
                    logger.info("holding the MAC address of bridge %s", bridge.interface)
            except OSError as exc:
                if not self._hold_failed:
                    self._hold_failed = True
                    logger.warning("could not hold the MAC address of bridge %s (%s): sandboxes may lose the "
                                   "gateway for seconds whenever others start or go", bridge.interface, exc)

    def describe(self) -> list[dict[str, object]]:
        """/health's account: each network's bridge and the ports it has left."""
        return [{"name": name, "bridge": bridge.interface, "ports_free": self.ports_free(bridge),
                 "ports_max": BRIDGE_MAX_PORTS, "sandboxes_max": self.per_network}
                for name, bridge in self.bridges.items()]


def later_networks(base: str, names: list[str]) -> list[str]:
    """The networks among ``names`` that follow ``base`` (``<base>-2``, ``<base>-3``, ...), in order."""
    later = re.compile(re.escape(base) + r"-([2-9]|[1-9][0-9]+)")
    return sorted((n for n in names if later.fullmatch(n)), key=lambda n: int(n.rsplit("-", 1)[1]))
