"""Sandboxes' network namespaces of the server's own (backend/own_netns.py), without Podman: which
networks they serve, the addresses they hand out, their names and labels, which files are orphans,
and the setting. tests/integration/test_own_netns.py makes them for real."""

from __future__ import annotations

import ipaddress
import os
import time
from pathlib import Path

import pytest

from mcp_container_sandbox.sandbox.backend.abstract import BridgeNetwork
from mcp_container_sandbox.sandbox.backend.own_netns import (
    NETNS_PREFIX,
    ORPHAN_SECONDS,
    NetnsFailed,
    OwnNetns,
    Plug,
    orphans,
)
from mcp_container_sandbox.sandbox.backend.podman_cli import Podman
from mcp_container_sandbox.settings import SandboxSettings


def own(*bridges: BridgeNetwork) -> OwnNetns:
    made = OwnNetns(Podman("/nonexistent/podman"), enabled=True)
    for bridge in bridges:
        made.learn(bridge)
    return made


def test_only_an_ipv4_network_of_a_20_or_wider_with_a_gateway_is_served() -> None:
    made = own(BridgeNetwork("wide", "podman1", ("10.90.0.0/16",), ("10.90.0.1",)),
               BridgeNetwork("edge", "podman2", ("10.91.0.0/20",), ("10.91.0.1",)),
               BridgeNetwork("narrow", "podman3", ("10.92.0.0/24",), ("10.92.0.1",)),
               BridgeNetwork("dual", "podman4", ("10.93.0.0/16", "fd00::/64"), ("10.93.0.1", "fd00::1")),
               BridgeNetwork("no-gateway", "podman5", ("10.94.0.0/16",), ()))
    assert sorted(made.bridges) == ["edge", "wide"]


def test_addresses_come_from_the_upper_half_round_and_round_never_a_0_or_255() -> None:
    made = own(BridgeNetwork("n", "podman1", ("10.91.0.0/20",), ("10.91.0.1",)))
    subnet = ipaddress.ip_network("10.91.0.0/20")
    first = [made._next_address("n", subnet) for _ in range(3)]
    assert first == ["10.91.8.1", "10.91.8.2", "10.91.8.3"]
    seen = first + [made._next_address("n", subnet) for _ in range(2048 - 16 - 3)]  # 8 of .0, 8 of .255 left out
    assert len(set(seen)) == len(seen)
    assert all(ipaddress.ip_address(a) in subnet and int(a.rsplit(".", 1)[1]) not in (0, 255) for a in seen)
    assert min(map(ipaddress.ip_address, seen)) >= ipaddress.ip_address("10.91.8.0")
    assert made._next_address("n", subnet) == "10.91.8.1"  # round again


def test_a_plug_is_named_after_its_address_and_read_back_from_its_labels() -> None:
    plug = Plug("mcp-sandbox-2", "10.91.255.254")
    assert plug.name == NETNS_PREFIX + "10.91.255.254" and plug.path == "/run/netns/mcp-sandbox-10.91.255.254"
    assert plug.veth == "vsb0a5bfffe" and len(plug.veth) <= 15
    assert Plug.of({**plug.labels(), "other": "x"}) == plug
    assert Plug.of({"other": "x"}) is None


def test_orphans_are_the_old_namespace_files_no_container_names(tmp_path: Path) -> None:
    now = time.time()
    for name, age in (("held", 600), ("old", 600), ("young", 5)):
        path = tmp_path / (NETNS_PREFIX + name)
        path.touch()
        os.utime(path, (now - age, now - age))
    (tmp_path / "netns-of-podman").touch()
    os.utime(tmp_path / "netns-of-podman", (now - 600, now - 600))
    assert orphans([NETNS_PREFIX + "held"], now, str(tmp_path)) == [NETNS_PREFIX + "old"]
    assert sorted(orphans([], now + ORPHAN_SECONDS, str(tmp_path))) == [NETNS_PREFIX + n for n in ("held", "old", "young")]
    assert orphans([], now, str(tmp_path / "none")) == []


def test_the_setting_takes_server_or_podman_and_says_what_each_means() -> None:
    assert SandboxSettings.from_env({}).netns == "server"
    assert SandboxSettings.from_env({"SANDBOX_NETNS": "Podman"}).netns == "podman"
    with pytest.raises(ValueError) as said:
        SandboxSettings.from_env({"SANDBOX_NETNS": "netavark"})
    assert "SANDBOX_NETNS must be one of server, podman, got 'netavark'" in str(said.value)
    assert "Podman's netavark makes them" in str(said.value)


def test_a_disabled_maker_serves_no_network() -> None:
    made = OwnNetns(Podman("/nonexistent/podman"), enabled=False)
    made.learn(BridgeNetwork("wide", "podman1", ("10.90.0.0/16",), ("10.90.0.1",)))
    assert not made.serves("wide") and made.why_not == "SANDBOX_NETNS=podman"


def test_an_address_whose_namespace_exists_is_passed_over() -> None:
    made = own(BridgeNetwork("n", "podman1", ("10.91.0.0/20",), ("10.91.0.1",)))
    subnet = ipaddress.ip_network("10.91.0.0/20")
    taken = {NETNS_PREFIX + f"10.91.8.{n}" for n in range(1, 200)}  # other servers' sandboxes
    assert made._next_address("n", subnet, taken) == "10.91.8.200"
    assert made._next_address("n", subnet, taken) == "10.91.8.201"


def test_a_failed_ip_says_what_failed_and_what_to_do() -> None:
    said = str(NetnsFailed(["ip", "-batch", "-"], 1, "RTNETLINK answers: Exchange full\nCommand failed -:3\n"))
    assert "The sandbox's network could not be made (ip -batch -: RTNETLINK answers: Exchange full)" in said
    assert "Command failed" not in said and "SANDBOX_NETNS=podman" in said
    assert "no free address on n after 64 tries" in str(NetnsFailed(["ip"], 1, "", "no free address on n after 64 tries"))
