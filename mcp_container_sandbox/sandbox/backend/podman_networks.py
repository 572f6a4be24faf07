"""The Podman backend's networks: the sandbox bridge (made with a /16 of its own where none exists,
Podman handing out its lower half and the server the upper, own_netns.py), who is on it, and each
sandbox's address there: what the egress policy's rules are written for."""

from __future__ import annotations

import ipaddress
import json
import socket
import struct
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from ..errors import PodmanError
from .abstract import BridgeNetwork
from .own_netns import ANCHOR_PREFIX, LABEL_NETNS_ADDRESS, LABEL_NETNS_NETWORK, OwnNetns, held_addresses_args
from .podman_cli import Podman
from .podman_engine import PodmanEngine


class PodmanNetworks:
    podman: Podman
    engine: PodmanEngine
    own_netns: OwnNetns

    async def bridge_network(self, name: str, labels: Mapping[str, str]) -> BridgeNetwork:
        inspected = await self.podman.run("network", "inspect", "--", name, check=False, timeout=60)
        if inspected.exit_code != 0:
            subnet = ipaddress.ip_network(await self._free_subnet())
            made = await self.podman.run(
                "network", "create", *[arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")],
                "--subnet", str(subnet), "--ip-range", str(next(subnet.subnets())), "--", name, check=False, timeout=60,
            )
            if made.exit_code != 0 and "already exists" not in made.stderr:  # another server made it meanwhile
                raise PodmanError(made.argv, made.exit_code, made.stderr)
            inspected = await self.podman.run("network", "inspect", "--", name, timeout=60)
        entry = (json.loads(inspected.stdout or b"[]") or [{}])[0]
        if entry.get("driver") != "bridge" or not entry.get("network_interface"):
            raise PodmanError(inspected.argv, 0, "", f"The network {name!r} is not a bridge network; sandboxes "
                              "need one for the egress policy. Unset SANDBOX_NETWORK to get one of the server's own.")
        subnets = entry.get("subnets") or []
        bridge = BridgeNetwork(name, entry["network_interface"], tuple(s.get("subnet", "") for s in subnets),
                               tuple(s["gateway"] for s in subnets if s.get("gateway")))
        return replace(bridge, other_ports=1) if self.own_netns.learn(bridge) else bridge  # its anchor

    async def _free_subnet(self) -> str:
        """A /16 for a new sandbox network (Podman's own choice, a /24, holds only 253 sandboxes)
        that overlaps no route of the host and no other Podman network."""
        used = []
        try:
            routes = Path("/proc/net/route").read_text().splitlines()[1:]
        except OSError:
            routes = []
        for line in routes:  # Iface Destination Gateway Flags RefCnt Use Metric Mask ..., little-endian hex
            fields = line.split()
            try:
                destination, mask = (socket.inet_ntoa(struct.pack("<L", int(f, 16))) for f in (fields[1], fields[7]))
                if mask != "0.0.0.0":  # not the default route, which "overlaps" everything
                    used.append(ipaddress.ip_network(f"{destination}/{mask}", strict=False))
            except (ValueError, IndexError, struct.error):
                continue
        listed = await self.podman.run("network", "ls", "--format", "{{range .Subnets}}{{.Subnet}} {{end}}",
                                       check=False, timeout=60)
        for subnet in listed.stdout.decode(errors="replace").split():
            try:
                used.append(ipaddress.ip_network(subnet, strict=False))
            except ValueError:
                continue
        for second in range(90, 250):
            candidate = ipaddress.ip_network(f"10.{second}.0.0/16")
            if not any(candidate.overlaps(other) for other in used if other.version == 4):
                return str(candidate)
        raise PodmanError(["network", "create"], 1, "", "No free 10.x.0.0/16 for the sandbox network; create one "
                          "yourself (podman network create --subnet ...) and name it in SANDBOX_NETWORK.")

    async def network_users(self, name: str) -> list[str]:
        """The containers on the network but its anchor: netavark's and those in namespaces of the server's."""
        users = []
        for selector in (f"network={name}", f"label={LABEL_NETNS_NETWORK}={name}"):
            result = await self.podman.run("ps", "-a", "--format", "{{.Names}}", "--filter", selector,
                                           check=False, timeout=60)
            users += result.stdout.decode(errors="replace").split() if result.exit_code == 0 else []
        return [user for user in users if not user.startswith(ANCHOR_PREFIX)]

    async def address(self, name: str, network: str) -> str:
        plug = self.own_netns.plugs.get(name)
        if plug is not None:
            return plug.address
        entry = await self.engine.inspect(name)  # the API's, where it answers: every pooled sandbox asks this
        if entry is None:
            raise PodmanError(["podman", "inspect"], None, f"no container with name or id {name!r} found: no such container")
        labels = (entry.get("Config") or {}).get("Labels") or {}
        networks = (entry.get("NetworkSettings") or {}).get("Networks") or {}
        return str(labels.get(LABEL_NETNS_ADDRESS) or (networks.get(network) or {}).get("IPAddress") or "")

    async def network_addresses(self, network: str) -> set[str] | None:
        ours = await self.podman.run(*held_addresses_args(network), check=False, timeout=60)
        if ours.exit_code != 0:
            return None
        held = set(ours.stdout.decode(errors="replace").split())
        listed = await self.podman.run("ps", "-a", "--format", "{{.Names}}", "--filter", f"network={network}",
                                       check=False, timeout=60)
        if listed.exit_code != 0:
            return None
        names = listed.stdout.decode(errors="replace").split()
        if not names:
            return held
        result = await self.podman.run("inspect", "--type", "container", "--format", "json", "--", *names,
                                       check=False, timeout=60)
        if result.exit_code != 0:  # one went away meanwhile, or worse: ask again next time
            return None
        found = set()
        for entry in json.loads(result.stdout or b"[]") or []:
            networks = (entry.get("NetworkSettings") or {}).get("Networks") or {}
            found.add(str((networks.get(network) or {}).get("IPAddress") or ""))
        return (found | held) - {""}

    async def network_names(self) -> list[str]:
        result = await self.podman.run("network", "ls", "--format", "{{.Name}}", check=False, timeout=60)
        return result.stdout.decode(errors="replace").split() if result.exit_code == 0 else []
