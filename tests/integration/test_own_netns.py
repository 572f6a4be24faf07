"""Sandboxes' network namespaces made by the server (backend/own_netns.py) on real Podman: where a
sandbox's network lives, its route through the gateway, that nothing of it outlives the sandbox, that a
host's restart (its /run emptied) costs the sandbox nothing, and that SANDBOX_NETNS=podman leaves it all
to netavark. What the egress policy makes of such sandboxes is test_egress.py's, which runs on them."""

from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess

import pytest
from conftest import RUN_ID, bridge_of, inspect, podman, sandboxes_left, structured, wait_until
from fastmcp import Client

from mcp_container_sandbox.sandbox.backend.own_netns import ANCHOR_PREFIX

pytestmark = pytest.mark.anyio


def network_of(container: dict) -> tuple[str, str]:
    """The sandbox's network (its label) and that network's IPv4 subnet."""
    network = container["Config"]["Labels"]["mcp-sandbox.network"]
    subnet = next(s["subnet"] for s in json_network(network)["subnets"] if ":" not in s["subnet"])
    return network, subnet


def json_network(name: str) -> dict:
    return json.loads(podman("network", "inspect", name).stdout)[0]


async def test_a_sandbox_lives_in_a_namespace_of_the_servers_and_takes_it_along(start_server) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-own-netns"
    env = {"SANDBOX_NAMESPACE": namespace}
    first = start_server(env)
    async with Client(first.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        container = inspect(f"mcp-sandbox-{container_id}")
        network, subnet = network_of(container)
        address = container["Config"]["Labels"]["mcp-sandbox.netns.address"]
        path = f"/run/netns/mcp-sandbox-{address}"
        assert container["HostConfig"]["NetworkMode"] == f"ns:{path}"
        _, upper = ipaddress.ip_network(subnet).subnets()
        assert ipaddress.ip_address(address) in upper  # Podman hands out the lower half
        veth = "vsb%08x" % int(ipaddress.ip_address(address))
        assert os.path.exists(f"/sys/class/net/{bridge_of(network)}/brif/{veth}")  # on the network's bridge
        assert inspect(ANCHOR_PREFIX + network)["State"]["Status"] == "running"
        gateway = json_network(network)["subnets"][0]["gateway"]
        said = structured(await client.call_tool("execute_command", {
            "container_id": container_id,
            "command": "ip -4 addr show eth0 | grep -o 'inet [0-9./]*'; ip route | grep default"}))
        assert f"inet {address}/{ipaddress.ip_network(subnet).prefixlen}" in said["stdout"], said
        assert f"default via {gateway}" in said["stdout"], said

        # As after a reboot of the host: the sandbox stopped and /run emptied. A restarted server
        # makes its namespace anew, at its address, and starts it.
        first.stop(signal.SIGTERM)
        podman("stop", "-t", "0", f"mcp-sandbox-{container_id}")
        subprocess.run(["ip", "netns", "delete", f"mcp-sandbox-{address}"], check=True)
    second = start_server(env, port=first.port)
    async with Client(second.url + "/mcp") as client:
        again = structured(await client.call_tool("execute_command", {
            "container_id": container_id, "command": "ip -4 addr show eth0 | grep -o 'inet [0-9.]*'"}))
        assert again["stdout"] == f"inet {address}\n", again
        await client.call_tool("destroy_container", {"container_id": container_id})
    assert sandboxes_left(namespace) == []
    await wait_until(lambda: not os.path.exists(path) and not os.path.exists(f"/sys/class/net/{veth}"))


async def test_with_sandbox_netns_podman_netavark_makes_the_network(start_server) -> None:  # type: ignore[no-untyped-def]
    namespace = f"{RUN_ID}-netavark"
    server = start_server({"SANDBOX_NAMESPACE": namespace, "SANDBOX_NETNS": "podman"})
    async with Client(server.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        container = inspect(f"mcp-sandbox-{container_id}")
        network, subnet = network_of(container)
        assert container["HostConfig"]["NetworkMode"] == "bridge"
        assert "mcp-sandbox.netns.address" not in container["Config"]["Labels"]
        address = container["NetworkSettings"]["Networks"][network]["IPAddress"]
        lower, _ = ipaddress.ip_network(subnet).subnets()
        assert ipaddress.ip_address(address) in lower
        await client.call_tool("destroy_container", {"container_id": container_id})
    assert sandboxes_left(namespace) == []
    assert not [name for name in os.listdir("/run/netns") if name == f"mcp-sandbox-{address}"]
