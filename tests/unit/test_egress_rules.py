"""The egress policy's settings and the nftables rules it installs, read as text (no Podman)."""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from mcp_container_sandbox.sandbox.backend.abstract import BridgeNetwork
from mcp_container_sandbox.sandbox.errors import InvalidAllowList
from mcp_container_sandbox.sandbox.network.egress_rules import (
    BLOCKED_V4,
    BLOCKED_V6,
    BRIDGE_MAX_PORTS,
    listening_ports,
    ruleset,
    sandbox_resolvers,
    table_name,
    upstream_resolvers,
)
from mcp_container_sandbox.sandbox.network.sandbox_networks import SandboxNetworks
from mcp_container_sandbox.sandbox.network.proxy import (
    address_blocked,
    check_allow_domains,
    domain_allowed,
)
from mcp_container_sandbox.settings import SandboxSettings

BRIDGE = BridgeNetwork("mcp-sandbox", "podman7", ("10.89.6.0/24",), ("10.89.6.1",))


def test_public_is_the_default_and_an_unknown_policy_is_refused_with_the_choices() -> None:
    assert SandboxSettings.from_env({}).egress == "public"
    assert SandboxSettings.from_env({"SANDBOX_EGRESS": "Open"}).egress == "open"
    with pytest.raises(ValueError, match="public.*none.*open"):
        SandboxSettings.from_env({"SANDBOX_EGRESS": "closed"})


def test_allowed_ranges_are_checked_and_written_as_networks() -> None:
    settings = SandboxSettings.from_env({"SANDBOX_EGRESS_ALLOW_CIDRS": " 10.1.2.3/24, 2001:db8::1 ,"})
    assert settings.egress_allow_cidrs == ("10.1.2.0/24", "2001:db8::1/128")
    with pytest.raises(ValueError, match="'mirror.internal' is not an IP network"):
        SandboxSettings.from_env({"SANDBOX_EGRESS_ALLOW_CIDRS": "10.0.0.0/8,mirror.internal"})


def test_the_ranges_around_a_host_are_blocked() -> None:
    required_v4 = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
                   "127.0.0.0/8", "224.0.0.0/4", "240.0.0.0/4"}  # 240/4 holds the broadcast address
    assert required_v4 <= set(BLOCKED_V4)
    assert {"fc00::/7", "fe80::/10", "ff00::/8"} <= set(BLOCKED_V6)


def _rules(script: str, chain: str) -> list[str]:
    prefix = f"add rule inet {table_name(BRIDGE)} {chain} "
    return [line[len(prefix):] for line in script.splitlines() if line.startswith(prefix)]


def test_rules_match_only_the_sandbox_bridge_and_let_only_dns_reach_the_host() -> None:
    script = ruleset(BRIDGE)
    for chain in ("input", "forward"):
        assert _rules(script, chain)[0] == 'iifname != "podman7" accept'  # the host's other traffic meets nothing
    accepts = [rule for rule in _rules(script, "input") if rule.endswith("accept")]
    assert accepts == ['iifname != "podman7" accept',
                       "ip saddr @proxied ip daddr { 10.89.6.1 } tcp dport @proxy_ports accept",
                       "ct state established,related accept",
                       "ip daddr { 10.89.6.1 } meta l4proto { tcp, udp } th dport 53 accept"]
    assert _rules(script, "input")[-1] == "counter drop"
    assert "ip daddr @blocked_v4 counter drop" in _rules(script, "forward")
    assert table_name(BRIDGE) == "mcp_sandbox_podman7"


def test_sandboxes_behind_the_proxy_reach_only_the_proxy() -> None:
    script = ruleset(BRIDGE, proxy_port=3128)
    assert "add element inet mcp_sandbox_podman7 proxy_ports { 3128 }" in script
    forward = _rules(script, "forward")
    assert forward.index("ip saddr @proxied counter drop") < forward.index("ct state established,related accept")
    inbound = _rules(script, "input")
    assert inbound.index("ip saddr @proxied counter drop") < inbound.index(
        "ip daddr { 10.89.6.1 } meta l4proto { tcp, udp } th dport 53 accept")  # no DNS either
    # The sets other servers on the network fill are made if missing, never emptied.
    assert "flush set inet mcp_sandbox_podman7 proxied" not in script and "delete" not in script


def test_sandboxes_cut_off_reach_nothing_not_even_what_they_had_open() -> None:
    script = ruleset(BRIDGE, proxy_port=3128)
    for chain in ("input", "forward"):
        rules = _rules(script, chain)
        assert rules.index("ip saddr @cut_off counter drop") == 1  # before the proxy's port, DNS and conntrack
    forward = _rules(script, "forward")
    assert forward.index("ip daddr @cut_off counter drop") < forward.index("ct state established,related accept")
    assert "add set inet mcp_sandbox_podman7 cut_off { type ipv4_addr; }" in script
    assert "flush set inet mcp_sandbox_podman7 cut_off" not in script


def test_an_operators_ranges_are_accepted_before_the_blocked_ones() -> None:
    script = ruleset(BRIDGE, ("10.1.2.0/24", "2001:db8:1::/48"))
    assert "add element inet mcp_sandbox_podman7 allowed_v4 { 10.1.2.0/24 }" in script
    assert "add element inet mcp_sandbox_podman7 allowed_v6 { 2001:db8:1::/48 }" in script
    forward = _rules(script, "forward")
    assert forward.index("ip daddr @allowed_v4 accept") < forward.index("ip daddr @blocked_v4 counter drop")


def test_dns_to_the_hosts_resolvers_passes_before_the_blocked_ranges_and_only_on_port_53() -> None:
    script = ruleset(BRIDGE, resolvers=("10.255.255.53", "fd00::53"))
    forward = _rules(script, "forward")
    dns_v4 = "ip daddr { 10.255.255.53 } meta l4proto { tcp, udp } th dport 53 accept"
    dns_v6 = "ip6 daddr { fd00::53 } meta l4proto { tcp, udp } th dport 53 accept"
    assert forward.index("ip saddr @proxied counter drop") < forward.index(dns_v4)  # not behind the proxy
    assert forward.index(dns_v4) < forward.index("ip daddr @blocked_v4 counter drop")
    assert forward.index(dns_v6) < forward.index("ip6 daddr @blocked_v6 counter drop")
    assert not any("10.255.255.53" in rule and "dport 53" not in rule for rule in forward)
    assert "dport 53 accept" not in " ".join(_rules(ruleset(BRIDGE), "forward"))  # no resolvers, no rule


def test_the_hosts_resolvers_that_a_sandbox_can_reach(tmp_path) -> None:  # type: ignore[no-untyped-def]
    conf = tmp_path / "resolv.conf"
    conf.write_text("# comment\nsearch example.org\nnameserver 127.0.0.53\nnameserver 10.255.255.53\n"
                    "nameserver fe80::1%eth0\nnameserver 2001:db8::53\nnameserver 10.255.255.53\nnameserver bad\n"
                    "options edns0\n")
    assert upstream_resolvers(str(conf)) == ("10.255.255.53", "2001:db8::53")
    assert upstream_resolvers(str(tmp_path / "missing")) == ()


def test_sandboxes_ask_the_hosts_resolvers_then_the_gateways() -> None:
    gateways = ("10.90.0.1", "fd00:90::1")
    assert sandbox_resolvers(("10.255.255.53", "2001:db8::53"), set(), gateways) == (
        "10.255.255.53", "2001:db8::53", "10.90.0.1")
    # A resolver at one of the host's own addresses, or none: the gateway's alone, as Podman sets it.
    assert sandbox_resolvers(("192.0.2.2",), {"192.0.2.2"}, gateways) == ()
    assert sandbox_resolvers((), set(), gateways) == ()


def test_listening_ports_are_read_by_address(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with socket.socket() as bound, socket.socket() as connected:
        bound.bind(("127.0.0.1", 0))
        bound.listen()
        port = bound.getsockname()[1]
        connected.connect(("127.0.0.1", port))  # an established socket on the same port is not a listener
        assert port in listening_ports(["127.0.0.1"])
        assert port not in listening_ports(["10.90.0.1"])
    assert port not in listening_ports(["127.0.0.1"])
    assert listening_ports(["127.0.0.1"], str(tmp_path / "missing")) == set()


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed")
def test_nft_accepts_the_rules() -> None:
    checked = subprocess.run(["nft", "-c", "-f", "-"], input=ruleset(BRIDGE, ("10.1.2.0/24",), 3128,
                                                                      ("10.255.255.53", "2001:db8::53")).encode(),
                             capture_output=True)
    if checked.returncode != 0 and b"Operation not permitted" in checked.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert checked.returncode == 0, checked.stderr.decode()


def test_allow_lists_take_exact_names_and_subdomain_patterns_only() -> None:
    assert check_allow_domains([" API.GitHub.com. ", "*.example.org", "localhost", "api.github.com"], 5) == (
        "api.github.com", "*.example.org", "localhost")
    for bad in ("https://x.org", "x.org:443", "x.org/path", "10.0.0.1", "[::1]", "*", "a.*.org", "-x.org", "", 5):
        with pytest.raises(InvalidAllowList):
            check_allow_domains([bad], 5)
    with pytest.raises(InvalidAllowList, match="SANDBOX_MAX_ALLOW_DOMAINS"):
        check_allow_domains(["a.org", "b.org"], 1)
    with pytest.raises(InvalidAllowList, match="a list"):
        check_allow_domains("a.org", 5)


def test_a_subdomain_pattern_matches_subdomains_at_any_depth_but_not_the_domain_or_lookalikes() -> None:
    patterns = ("*.example.org", "api.github.com")
    assert domain_allowed("a.example.org", patterns) and domain_allowed("A.B.Example.org.", patterns)
    assert domain_allowed("api.github.com", patterns)
    for other in ("example.org", "badexample.org", "example.org.evil.com", "github.com", "x.api.github.com"):
        assert not domain_allowed(other, patterns), other


def test_the_proxy_refuses_blocked_addresses_unless_an_operator_opened_them() -> None:
    blocked = (*BLOCKED_V4, *BLOCKED_V6)
    for address in ("127.0.0.1", "10.1.2.3", "169.254.169.254", "::1", "::ffff:10.0.0.1", "fe80::1", "100.64.0.1"):
        assert address_blocked(address, blocked, ()), address
    assert not address_blocked("203.0.113.80", blocked, ())
    assert not address_blocked("10.1.2.3", blocked, ("10.1.2.0/24",))


class NetworksStandIn:
    """What SandboxNetworks asks of a backend: networks made on demand, each with a /16 of its own."""

    def __init__(self, existing: list[str]) -> None:
        self.names = list(existing)

    async def bridge_network(self, name: str, labels: dict[str, str]) -> BridgeNetwork:
        if name not in self.names:
            self.names.append(name)
        n = self.names.index(name)
        return BridgeNetwork(name, f"podman{n + 1}", (f"10.{90 + n}.0.0/16",), (f"10.{90 + n}.0.1",))

    async def network_names(self) -> list[str]:
        return self.names


@pytest.mark.anyio
async def test_sandboxes_fill_one_network_then_the_next_counting_every_port_of_its_bridge(tmp_path: Path) -> None:
    """Whoever made a bridge's ports, they count (another server's sandboxes on the network too); the
    later networks a server before this one made are found at start, in their order."""
    backend = NetworksStandIn(["mcp-sandbox", "mcp-sandbox-10", "mcp-sandbox-2", "other", "mcp-sandbox-x"])
    networks = SandboxNetworks(backend, per_network=3, sys_class_net=str(tmp_path))  # type: ignore[arg-type]
    opened = await networks.open("mcp-sandbox")
    assert [b.name for b in opened] == ["mcp-sandbox", "mcp-sandbox-2", "mcp-sandbox-10"]
    assert networks.ports_free(opened[0]) == BRIDGE_MAX_PORTS  # netavark makes a bridge with its first port
    made: list[str] = []

    async def put_rules_on(bridge: BridgeNetwork) -> None:
        made.append(bridge.name)

    def ports(bridge: BridgeNetwork, count: int) -> None:
        folder = tmp_path / bridge.interface / "brif"
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            (folder / f"veth{index}").mkdir(exist_ok=True)

    assert await networks.choose(put_rules_on) == "mcp-sandbox"
    ports(opened[0], 3)
    assert networks.ports_free(opened[0]) == BRIDGE_MAX_PORTS - 3
    assert await networks.choose(put_rules_on) == "mcp-sandbox-2"
    ports(opened[1], 3)
    ports(opened[2], 5)
    assert await networks.choose(put_rules_on) == "mcp-sandbox-3"  # every one full: a new one, its rules first
    assert made == ["mcp-sandbox-3"] and "mcp-sandbox-3" in networks.bridges
    assert networks.of_address("10.95.7.9") == networks.bridges["mcp-sandbox-3"]
    assert networks.of_address("10.92.0.5") == networks.bridges["mcp-sandbox-2"]
    assert networks.of_address("192.0.2.1") is None and networks.of_address("not an address") is None
    assert [(n["name"], n["ports_free"]) for n in networks.describe()] == [
        ("mcp-sandbox", BRIDGE_MAX_PORTS - 3), ("mcp-sandbox-2", BRIDGE_MAX_PORTS - 3),
        ("mcp-sandbox-10", BRIDGE_MAX_PORTS - 5), ("mcp-sandbox-3", BRIDGE_MAX_PORTS)]
    anchored = replace(networks.bridges["mcp-sandbox-3"], other_ports=1)  # a port that is no sandbox: the anchor
    ports(anchored, 3)
    assert networks.has_room(anchored) and not networks.has_room(replace(anchored, other_ports=0))
    ports(anchored, 4)
    assert not networks.has_room(anchored)
