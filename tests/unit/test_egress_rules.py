"""The egress policy's settings and the nftables rules it installs, read as text (no Podman)."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from sandbox.backend import BridgeNetwork
from sandbox.config import SandboxSettings
from sandbox.egress import BLOCKED_V4, BLOCKED_V6, ruleset, table_name

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


def test_rules_match_only_the_sandbox_bridge_and_let_only_dns_reach_the_host() -> None:
    rules = ruleset(BRIDGE)
    input_chain = rules[rules.index("chain input"):rules.index("chain forward")]
    forward_chain = rules[rules.index("chain forward"):]
    for chain in (input_chain, forward_chain):
        assert 'iifname != "podman7" accept' in chain  # the host's other traffic never meets a rule
    accepts = [line.strip() for line in input_chain.splitlines() if line.strip().endswith("accept")]
    assert accepts == ['iifname != "podman7" accept', "ct state established,related accept",
                       "ip daddr { 10.89.6.1 } meta l4proto { tcp, udp } th dport 53 accept"]
    assert input_chain.strip().splitlines()[-2].strip() == "counter drop"
    assert "ip daddr @blocked_v4 counter drop" in forward_chain
    assert f"table inet {table_name(BRIDGE)}" in rules and table_name(BRIDGE) == "mcp_sandbox_podman7"


def test_an_operators_ranges_are_accepted_before_the_blocked_ones() -> None:
    rules = ruleset(BRIDGE, ("10.1.2.0/24", "2001:db8:1::/48"))
    assert "set allowed_v4 { type ipv4_addr; flags interval; elements = { 10.1.2.0/24 }; }" in rules
    assert "elements = { 2001:db8:1::/48 }" in rules
    assert rules.index("ip daddr @allowed_v4 accept") < rules.index("ip daddr @blocked_v4 counter drop")


@pytest.mark.skipif(shutil.which("nft") is None, reason="nft is not installed")
def test_nft_accepts_the_rules() -> None:
    checked = subprocess.run(["nft", "-c", "-f", "-"], input=ruleset(BRIDGE, ("10.1.2.0/24",)).encode(),
                             capture_output=True)
    if checked.returncode != 0 and b"Operation not permitted" in checked.stderr:
        pytest.skip("nft -c needs CAP_NET_ADMIN here")
    assert checked.returncode == 0, checked.stderr.decode()
