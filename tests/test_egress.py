"""The egress policy (SANDBOX_EGRESS): what a sandbox can reach.

Every probe goes to this machine only: listeners the tests start on the host's own addresses
and in a network namespace the tests make (standing in for the private network around a
host). What must stay unreachable elsewhere (cloud metadata, other private ranges) is checked by
reading the rules the server installed, never by sending traffic there. Each probe is shown able
to see a listener by a control case: the same probe under SANDBOX_EGRESS=open reaches it.
"""

from __future__ import annotations

import ipaddress
import json
import re
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client

import server
from conftest import podman, structured
from sandbox.lifecycle import SYNC_SECONDS

pytestmark = pytest.mark.anyio

PROBE_SECONDS = 3


class Listener:
    """A TCP listener on all of the host's addresses that greets and counts whoever connects."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.peers: list[str] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer[0])
            with conn:
                conn.sendall(b"hello from the test listener\n")

    def close(self) -> None:
        self.sock.close()


class Namespace:
    """A network namespace joined to the host by a veth pair, with a listener inside: the
    stand-in for a private network next to the host."""

    def __init__(self) -> None:
        tag = secrets.token_hex(2)
        self.name = f"mcpsb-egress-{tag}"
        self.host_if, self.ns_if = f"mcpsbh{tag}", f"mcpsbn{tag}"
        third = int(tag, 16) % 250
        self.host_ip, self.ip = f"10.250.{third}.1", f"10.250.{third}.2"
        self.port = 18000 + int(tag, 16) % 1000
        sh = lambda *argv: subprocess.run(argv, check=True, capture_output=True)  # noqa: E731
        sh("ip", "netns", "add", self.name)
        sh("ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
        sh("ip", "link", "set", self.ns_if, "netns", self.name)
        sh("ip", "addr", "add", f"{self.host_ip}/30", "dev", self.host_if)
        sh("ip", "link", "set", self.host_if, "up")
        inside = ("ip", "netns", "exec", self.name)
        sh(*inside, "ip", "addr", "add", f"{self.ip}/30", "dev", self.ns_if)
        sh(*inside, "ip", "link", "set", self.ns_if, "up")
        sh(*inside, "ip", "link", "set", "lo", "up")
        sh(*inside, "ip", "route", "add", "default", "via", self.host_ip)
        script = ("import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
                  f"s.bind(('{self.ip}', {self.port})); s.listen(16)\n"
                  "while True:\n    c, _ = s.accept(); c.sendall(b'hello from the namespace\\n'); c.close()\n")
        self.process = subprocess.Popen([*inside, sys.executable, "-c", script])

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


def host_address() -> str:
    """The host's address on its main interface (not a container bridge)."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        fields = line.split()
        if not re.match(r"^(podman|cni|veth|mcpsb|docker|br-)", fields[1]):
            return fields[3].split("/")[0]
    pytest.skip("this host has no global IPv4 address besides container bridges")


def package_archive_host() -> str:
    """One host this machine already fetches packages from over plain HTTP, read from apt's sources."""
    texts = [path.read_text(errors="replace") for path in
             [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")] if path.is_file()]
    for host in dict.fromkeys(re.findall(r"http://([A-Za-z0-9.-]+)[/\s]", "\n".join(texts))):
        try:
            socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)  # a name this machine resolves
        except OSError:
            continue
        return host
    pytest.skip("no plain-HTTP package source that resolves is configured on this machine")


@pytest.fixture
def listener() -> Iterator[Listener]:
    listening = Listener()
    yield listening
    listening.close()


@pytest.fixture
def namespace() -> Iterator[Namespace]:
    made = Namespace()
    yield made
    made.close()


async def run(client: Client, container_id: str, command: str) -> dict[str, Any]:
    return structured(await client.call_tool(
        "execute_command", {"container_id": container_id, "command": command, "timeout_seconds": 30}))


async def reaches(client: Client, container_id: str, address: str, port: int) -> bool:
    result = await run(client, container_id, f"nc -w {PROBE_SECONDS} {address} {port} </dev/null")
    return "hello from" in result["stdout"]


def gateway_of(network: str) -> str:
    entry = json.loads(podman("network", "inspect", network).stdout)[0]
    return entry["subnets"][0]["gateway"]


def rules_of(network: str) -> str:
    interface = json.loads(podman("network", "inspect", network).stdout)[0]["network_interface"]
    listed = subprocess.run(["nft", "list", "table", "inet", f"mcp_sandbox_{interface}"], capture_output=True, text=True)
    return listed.stdout if listed.returncode == 0 else ""


async def test_public_sandboxes_reach_the_internet_but_nothing_of_the_host_or_around_it(
    client: Client, listener: Listener, namespace: Namespace
) -> None:
    assert server.sandboxes.settings.egress == "public"  # the default
    first = structured(await client.call_tool("create_container", {}))
    second = structured(await client.call_tool("create_container", {}))
    a, b = first["container_id"], second["container_id"]
    try:
        assert first["egress"] == {"policy": "public"}
        network = server.sandboxes.egress.network
        for address in (host_address(), gateway_of(network)):
            assert not await reaches(client, a, address, listener.port), address
        assert not await reaches(client, a, namespace.ip, namespace.port)
        # Another sandbox on the same bridge is out of reach too.
        await run(client, b, "nohup nc -l -p 8080 -e echo 'hello from b' >/dev/null 2>&1 &")
        b_ip = (await run(client, b, "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1"))["stdout"].strip()
        assert ipaddress.ip_address(b_ip)
        assert not await reaches(client, a, b_ip, 8080)
        assert listener.peers == []
        # DNS works, and so does the internet: one small request to this machine's package archive.
        archive = package_archive_host()
        looked_up = await run(client, a, f"nslookup {archive}")
        assert looked_up["exit_code"] == 0, looked_up
        answer = await run(client, a, f"printf 'HEAD / HTTP/1.0\\r\\nHost: {archive}\\r\\n\\r\\n' | nc -w 10 {archive} 80")
        assert answer["stdout"].startswith("HTTP/1."), answer
        # What must not be probed is read from the rules: metadata, private ranges, loopback.
        rules = rules_of(network)
        for blocked in ("169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                        "127.0.0.0/8", "fc00::/7", "fe80::/10"):
            assert blocked in rules, blocked
        status = structured(await client.call_tool("check_container", {"container_id": a}))
        assert status["egress"] == {"policy": "public"}
    finally:
        for container_id in (a, b):
            await client.call_tool("destroy_container", {"container_id": container_id})


async def test_the_open_policy_reaches_the_same_listeners(start_server: Any, listener: Listener,
                                                          namespace: Namespace) -> None:
    """The control case: each probe above can see a listener when nothing stands in its way."""
    opened = start_server({"SANDBOX_EGRESS": "open"})
    async with Client(opened.url + "/mcp") as client:
        created = structured(await client.call_tool("create_container", {}))
        container_id = created["container_id"]
        assert created["egress"]["policy"] == "open"
        assert await reaches(client, container_id, host_address(), listener.port)
        assert await reaches(client, container_id, namespace.ip, namespace.port)
        await client.call_tool("destroy_container", {"container_id": container_id})
    assert listener.peers


async def test_allowed_ranges_open_on_purpose_and_rules_come_back_after_a_restart(
    start_server: Any, listener: Listener, namespace: Namespace
) -> None:
    network = f"mcp-sandbox-egress-test-{secrets.token_hex(3)}"
    env = {"SANDBOX_NETWORK": network, "SANDBOX_EGRESS_ALLOW_CIDRS": f"{namespace.ip}/32", "SANDBOX_POOL_SIZE": "1"}
    try:
        first = start_server(env)
        async with Client(first.url + "/mcp") as client:
            created = structured(await client.call_tool("create_container", {}))  # from the pool
            assert created["egress"] == {"policy": "public", "allow_cidrs": [f"{namespace.ip}/32"]}
            container_id = created["container_id"]
            assert await reaches(client, container_id, namespace.ip, namespace.port)
            assert not await reaches(client, container_id, host_address(), listener.port)
        first.stop()
        # As after a reboot of the host: the rules are gone until the server starts again.
        interface = json.loads(podman("network", "inspect", network).stdout)[0]["network_interface"]
        subprocess.run(["nft", "delete", "table", "inet", f"mcp_sandbox_{interface}"], check=True)
        again = start_server({**env, "SANDBOX_NAMESPACE": first.env["SANDBOX_NAMESPACE"], "SANDBOX_POOL_SIZE": "0"})
        assert f"elements = {{ {namespace.ip} }}" in rules_of(network)  # nft writes a /32 as the address
        # Removed while the server runs (a firewall reload): the reaper puts them back.
        subprocess.run(["nft", "delete", "table", "inet", f"mcp_sandbox_{interface}"], check=True)
        deadline = time.monotonic() + SYNC_SECONDS + 15
        while not rules_of(network) and time.monotonic() < deadline:
            time.sleep(1)
        assert namespace.ip in rules_of(network)
        assert "were removed outside this server" in again.log_text()
        async with Client(again.url + "/mcp") as client:
            assert not await reaches(client, container_id, host_address(), listener.port)
            await client.call_tool("destroy_container", {"container_id": container_id})
        again.stop()
        # No sandbox is left on the network: a server that no longer needs the rules removes them.
        start_server({**env, "SANDBOX_EGRESS": "open", "SANDBOX_POOL_SIZE": "0"}).stop()
        assert rules_of(network) == ""
        assert listener.peers == []
    finally:
        podman("network", "rm", "-f", network, check=False)


async def test_the_none_policy_gives_no_network(start_server: Any) -> None:
    closed = start_server({"SANDBOX_EGRESS": "none"})
    async with Client(closed.url + "/mcp") as client:
        created = structured(await client.call_tool("create_container", {}))
        assert created["egress"] == {"policy": "none"}
        links = await run(client, created["container_id"], "ip -o link | grep -v ' lo' | wc -l")
        assert links["stdout"].strip() == "0"
        await client.call_tool("destroy_container", {"container_id": created["container_id"]})
