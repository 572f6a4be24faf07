"""What the host's kernel is told for the egress policy (egress.py decides when): the nftables
ruleset of a sandbox bridge, the resolvers sandboxes ask, the host's own addresses, and the
bridge's MAC address and ports. Pure functions over text and the host's /proc and /sys, and the
one helper that runs ``nft``."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import socket
import struct
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio

from ..backend.abstract import BridgeNetwork
from ..errors import SandboxError

SIOCGIFADDR = 0x8915  # linux/sockios.h
SIOCSIFHWADDR = 0x8924
ARPHRD_ETHER = 1  # linux/if_arp.h
NET_ADDR_SET = 3  # /sys/class/net/IFACE/addr_assign_type: the address was set, not taken from a port
BRIDGE_MAX_PORTS = 1023  # BR_MAX_PORTS (1,024) less port 0 in the kernel's bridge: then netavark's "Exchange full"
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


def table_name(network: BridgeNetwork) -> str:
    """The table for one bridge: one per network, shared by the servers whose sandboxes are on it."""
    return "mcp_sandbox_" + "".join(c if c.isalnum() else "_" for c in network.interface)


def remake_table(table: str) -> str:
    # Declaring the table first makes the delete succeed when it does not exist yet.
    return f"table inet {table} {{}}\ndelete table inet {table}\n"


def _set(table: str, name: str, kind: str, elements: Sequence[str] = (), interval: bool = True) -> str:
    """Make the set if missing; refill it when elements are given (a static set)."""
    flags = " flags interval;" if interval else ""
    script = f"add set inet {table} {name} {{ type {kind};{flags} }}\n"
    if interval:
        script += f"flush set inet {table} {name}\n"
        if elements:
            script += f"add element inet {table} {name} {{ {', '.join(elements)} }}\n"
    return script


def _chain(table: str, name: str, hook: str, rules: Sequence[str]) -> str:
    return (f"add chain inet {table} {name} {{ type filter hook {hook} priority filter - 10; policy accept; }}\n"
            f"flush chain inet {table} {name}\n" + "".join(f"add rule inet {table} {name} {rule}\n" for rule in rules))


def upstream_resolvers(resolv_conf: str = "/etc/resolv.conf") -> tuple[str, ...]:
    """The host's name servers that a sandbox can reach through the host: not loopback (a local
    stub resolver), link-local or unspecified."""
    found = []
    try:
        lines = Path(resolv_conf).read_text().splitlines()
    except OSError:
        return ()
    for line in lines:
        fields = line.split()
        if len(fields) < 2 or fields[0] != "nameserver":
            continue
        try:
            address = ipaddress.ip_address(fields[1].split("%")[0])
        except ValueError:
            continue
        if not (address.is_loopback or address.is_link_local or address.is_unspecified or address.is_multicast):
            found.append(str(address))
    return tuple(dict.fromkeys(found))


def sandbox_resolvers(upstream: Sequence[str], own: set[str], gateways: Sequence[str]) -> tuple[str, ...]:
    """The name servers of a sandbox on the public network: the host's resolvers it can reach,
    then the gateway's (Podman's aardvark-dns, which asks the host's resolvers from the host) for
    when those do not answer; () leaves the gateway's alone, as Podman sets it. A resolver at one
    of the host's own addresses (a local dnsmasq) is the input hook's business, which lets DNS reach
    only the gateway: such a host keeps the gateway's resolver."""
    reachable = tuple(r for r in upstream if r not in own)
    return (*reachable, *(g for g in gateways if ipaddress.ip_address(g).version == 4)) if reachable else ()


def ruleset(network: BridgeNetwork, allow_cidrs: Sequence[str] = (), proxy_port: int = 0,
            resolvers: Sequence[str] = ()) -> str:
    """The nft script (one transaction) that makes or refreshes the table for sandboxes on
    ``network``. Sandboxes in the set ``proxied`` (those with allow_domains) reach only the proxy
    ports on the gateway; those in ``cut_off`` (set_egress(network=false)) reach nothing, and nothing
    reaches them through the host. The sets ``proxied``, ``cut_off`` and ``proxy_ports`` are kept as
    they are, since other servers on the same network add to them too."""
    table = table_name(network)
    allow_v4 = [c for c in allow_cidrs if ipaddress.ip_network(c).version == 4]
    allow_v6 = [c for c in allow_cidrs if ipaddress.ip_network(c).version == 6]
    gateways_v4 = [g for g in network.gateways if ipaddress.ip_address(g).version == 4]
    gateways_v6 = [g for g in network.gateways if ipaddress.ip_address(g).version == 6]
    iface = f'"{network.interface}"'
    input_rules = [f"iifname != {iface} accept", "ip saddr @cut_off counter drop"]
    if gateways_v4:
        input_rules.append(f"ip saddr @proxied ip daddr {{ {', '.join(gateways_v4)} }} tcp dport @proxy_ports accept")
    input_rules += ["ip saddr @proxied counter drop", "ct state established,related accept"]
    if gateways_v4:
        input_rules.append(f"ip daddr {{ {', '.join(gateways_v4)} }} meta l4proto {{ tcp, udp }} th dport 53 accept")
    if gateways_v6:
        input_rules.append(f"ip6 daddr {{ {', '.join(gateways_v6)} }} meta l4proto {{ tcp, udp }} th dport 53 accept")
    input_rules.append("counter drop")
    resolvers_v4 = [r for r in resolvers if ipaddress.ip_address(r).version == 4]
    resolvers_v6 = [r for r in resolvers if ipaddress.ip_address(r).version == 6]
    forward_rules = [
        f"iifname != {iface} accept",
        "ip saddr @cut_off counter drop",
        "ip daddr @cut_off counter drop",  # from the other sandboxes on the bridge
        "ip saddr @proxied counter drop",
        "ct state established,related accept",
        *([f"ip daddr {{ {', '.join(resolvers_v4)} }} meta l4proto {{ tcp, udp }} th dport 53 accept"]
          if resolvers_v4 else []),
        *([f"ip6 daddr {{ {', '.join(resolvers_v6)} }} meta l4proto {{ tcp, udp }} th dport 53 accept"]
          if resolvers_v6 else []),
        "ip daddr @allowed_v4 accept",
        "ip6 daddr @allowed_v6 accept",
        "ip daddr @blocked_v4 counter drop",
        "ip6 daddr @blocked_v6 counter drop",
        "meta pkttype { broadcast, multicast } counter drop",
    ]
    return (
        f"add table inet {table}\n"
        + _set(table, "allowed_v4", "ipv4_addr", allow_v4)
        + _set(table, "allowed_v6", "ipv6_addr", allow_v6)
        + _set(table, "blocked_v4", "ipv4_addr", BLOCKED_V4)
        + _set(table, "blocked_v6", "ipv6_addr", BLOCKED_V6)
        + _set(table, "proxied", "ipv4_addr", interval=False)
        + _set(table, "cut_off", "ipv4_addr", interval=False)
        + _set(table, "proxy_ports", "inet_service", interval=False)
        + (f"add element inet {table} proxy_ports {{ {proxy_port} }}\n" if proxy_port else "")
        + _chain(table, "input", "input", input_rules)
        + _chain(table, "forward", "forward", forward_rules)
    )


def listening_ports(addresses: Sequence[str], proc_net_tcp: str = "/proc/net/tcp") -> set[int]:
    """The TCP ports with a listener bound to one of these IPv4 addresses (in this network namespace)."""
    found: set[int] = set()
    try:
        lines = Path(proc_net_tcp).read_text().splitlines()[1:]
    except OSError:
        return found
    for line in lines:
        fields = line.split()
        if len(fields) > 3 and fields[3] == "0A":  # LISTEN
            address, _, port = fields[1].partition(":")
            if socket.inet_ntoa(struct.pack("=I", int(address, 16))) in addresses:  # in the host's byte order
                found.add(int(port, 16))
    return found


_HOST_ADDRESSES: tuple[float, set[str]] = (0.0, set())
HOST_ADDRESSES_SECONDS = 5.0  # how long the list is reused (it costs about 1 ms to make)


def host_addresses() -> set[str]:
    """The host's own addresses (IPv4 of each interface, and IPv6), which the proxy never connects to."""
    global _HOST_ADDRESSES
    made, found = _HOST_ADDRESSES
    if time.monotonic() - made < HOST_ADDRESSES_SECONDS:
        return found
    found = set()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        for _, name in socket.if_nameindex():
            try:
                packed = fcntl.ioctl(probe.fileno(), SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue
            found.add(socket.inet_ntoa(packed[20:24]))
    try:
        for line in Path("/proc/net/if_inet6").read_text().splitlines():
            raw = line.split()[0]
            found.add(str(ipaddress.ip_address(bytes.fromhex(raw))))
    except OSError:
        pass
    _HOST_ADDRESSES = (time.monotonic(), found)
    return found


def hold_address(interface: str, sys_class_net: str = "/sys/class/net") -> bool:
    """Set a bridge's MAC address to the one it has, so that it keeps it; True when it was set here.

    A Linux bridge whose address was never set takes the lowest of its ports' addresses: it changed
    whenever a sandbox with a lower one joined the bridge or the lowest left, and every sandbox that
    had the gateway's old address in its ARP cache reached nothing through the gateway (the proxy,
    DNS, the internet) until its ARP entry expired, tens of seconds. Netavark leaves it unset. Raises
    OSError when the server may not set it (no CAP_NET_ADMIN)."""
    folder = Path(sys_class_net) / interface
    try:
        if int((folder / "addr_assign_type").read_text()) == NET_ADDR_SET:
            return False
        mac = bytes.fromhex((folder / "address").read_text().strip().replace(":", ""))
    except (OSError, ValueError):
        return False  # no such interface yet: netavark makes it with the network's first container
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock.fileno(), SIOCSIFHWADDR, struct.pack("16sH6s8x", interface.encode()[:15], ARPHRD_ETHER, mac))
    return True


def bridge_ports_free(interface: str, sys_class_net: str = "/sys/class/net") -> int | None:
    """Ports the bridge can still take (BRIDGE_MAX_PORTS less those it has, whoever made them);
    None before netavark made it (no sandbox on it yet)."""
    try:
        return BRIDGE_MAX_PORTS - len(os.listdir(f"{sys_class_net}/{interface}/brif"))
    except OSError:
        return None


def cannot_run_nft(env: Mapping[str, str]) -> str:
    """Why the server cannot install nftables rules ("" when it can)."""
    if os.geteuid() != 0:
        return "the server does not run as root, so it cannot install nftables rules"
    if shutil.which("nft", path=env.get("PATH")) is None:
        return "nft not found (Debian: apt-get install nftables)"
    return ""


async def run_nft(env: Mapping[str, str], *args: str, script: str | None = None) -> str:
    try:
        result = await anyio.run_process(["nft", *args], input=script.encode() if script else None,
                                         check=False, env=dict(env))
    except OSError as exc:
        raise SandboxError(f"nft: {exc}") from None
    if result.returncode != 0:
        said = result.stderr.decode(errors="replace").strip().splitlines()
        raise SandboxError(f"nft {' '.join(args)} failed: {said[-1] if said else result.returncode}")
    return result.stdout.decode(errors="replace")
