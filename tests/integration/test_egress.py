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

import httpx
import pytest
from conftest import APP, bridge_of, podman, sandboxes_left, structured, wait_until
from fastmcp import Client

from mcp_container_sandbox.sandbox.lifecycle import SYNC_SECONDS
from mcp_container_sandbox.sandbox.network.egress import DEFAULT_NETWORK
from mcp_container_sandbox.sandbox.network.egress_rules import host_addresses, upstream_resolvers

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
    """The command's result once it ends (following it past the server's sync wait)."""
    result = structured(await client.call_tool(
        "execute_command", {"container_id": container_id, "command": command, "timeout_seconds": 30}))
    if result["status"] == "running":
        result = structured(await client.call_tool("check_container", {
            "container_id": container_id, "command_id": result["command_id"], "wait_seconds": 40}))["command"]
    return result


async def reaches(client: Client, container_id: str, address: str, port: int) -> bool:
    result = await run(client, container_id, f"nc -w {PROBE_SECONDS} {address} {port} </dev/null")
    return "hello from" in result["stdout"]


def http_request(request_line: str, host: str, to: str) -> str:
    """A shell command that sends one HTTP/1.1 request with nc to ``to`` ("ADDRESS PORT") and prints
    the answer. The sending side stays open for a while: the package archive this machine uses
    resets a connection whose client half-closes before it answers, as nc does at end of input."""
    return (f"(printf '{request_line} HTTP/1.1\\r\\nHost: {host}\\r\\nConnection: close\\r\\n\\r\\n'; "
            f"sleep {PROBE_SECONDS}) | nc -w 10 {to}")


def via_proxy_variable(request_line: str, host: str) -> str:
    """One HTTP request to the proxy that $http_proxy names."""
    return "p=${http_proxy#http://}; " + http_request(request_line, host, "${p%:*} ${p##*:}")


async def fetch_listed(client: Client, container_id: str, archive: str) -> dict[str, Any]:
    """A HEAD to the package archive through the proxy. Asked once more only when the proxy
    said the archive closed the connection without answering (a host outside this machine
    does that now and then); any other answer, an empty one included, is the result."""
    fetched = await run(client, container_id, via_proxy_variable(f"HEAD http://{archive}/", archive))
    if fetched["stdout"].startswith("HTTP/1.1 502") and "without answering" in fetched["stdout"]:
        print("the archive closed the connection without answering; asking once more:", fetched["stdout"])
        fetched = await run(client, container_id, via_proxy_variable(f"HEAD http://{archive}/", archive))
    return fetched


def gateway_of(network: str) -> str:
    entry = json.loads(podman("network", "inspect", network).stdout)[0]
    return entry["subnets"][0]["gateway"]


async def dns_failure(client: Client, container_id: str, name: str, nameservers: list[str], network: str,
                      result: dict[str, Any]) -> str:
    """What a failed lookup in a sandbox is told with: each name server asked alone, the
    sandbox's address, and the rules with their counters."""
    said = [f"nslookup {name} failed: {result}"]
    for nameserver in nameservers:
        alone = await run(client, container_id, f"nslookup {name} {nameserver}")
        said.append(f"asked {nameserver} alone: exit {alone['exit_code']}: {alone['stdout']!r}")
    said.append("address: " + (await run(client, container_id, "ip -4 -o addr show eth0"))["stdout"])
    try:
        said.append(f"the host resolves it: {socket.getaddrinfo(name, 80)[0][4]}")
    except OSError as exc:
        said.append(f"the host does not resolve it either: {exc}")
    return "\n".join([*said, rules_of(network)])


def rules_of(network: str) -> str:
    inspected = podman("network", "inspect", network, check=False)
    if inspected.returncode != 0:
        return ""
    interface = json.loads(inspected.stdout)[0]["network_interface"]
    listed = subprocess.run(["nft", "list", "table", "inet", f"mcp_sandbox_{interface}"], capture_output=True, text=True)
    return listed.stdout if listed.returncode == 0 else ""


async def test_public_sandboxes_reach_the_internet_but_nothing_of_the_host_or_around_it(
    client: Client, listener: Listener, namespace: Namespace
) -> None:
    assert APP.sandboxes.settings.egress == "public"  # the default
    first = structured(await client.call_tool("create_container", {}))
    second = structured(await client.call_tool("create_container", {}))
    a, b = first["container_id"], second["container_id"]
    try:
        assert first["egress"] == {"policy": "public"}
        network = APP.sandboxes.egress.network
        # What must not be probed is read from the rules, first: metadata, private ranges, loopback.
        rules = rules_of(network)
        for blocked in ("169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                        "127.0.0.0/8", "fc00::/7", "fe80::/10"):
            assert blocked in rules, blocked
        for address in (host_address(), gateway_of(network)):
            assert not await reaches(client, a, address, listener.port), address
        assert not await reaches(client, a, namespace.ip, namespace.port)
        # Another sandbox on the same bridge is out of reach too; the control: B reaches its own listener.
        await run(client, b, "(nc -ll -p 8080 -e echo hello from b >/dev/null 2>&1 &)")  # -ll: it goes on listening
        b_ip = (await run(client, b, "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1"))["stdout"].strip()
        deadline = time.monotonic() + 10
        while not await reaches(client, b, b_ip, 8080):
            assert time.monotonic() < deadline, f"B's listener on {b_ip}:8080 never answered B itself"
        assert not await reaches(client, a, b_ip, 8080)
        assert listener.peers == []
        # DNS works, and so does the internet: one small request to this machine's package archive.
        # Names are asked of the host's own resolvers first, then of Podman's aardvark-dns on the
        # gateway (which misses queries while containers come and go: containers/aardvark-dns#389).
        archive = package_archive_host()
        resolvers = upstream_resolvers()
        resolv_conf = (await run(client, a, "cat /etc/resolv.conf"))["stdout"]
        nameservers = [line.split()[1] for line in resolv_conf.splitlines() if line.startswith("nameserver")]
        reachable = [server for server in resolvers if server not in host_addresses()]  # not a local dnsmasq
        gateway = gateway_of(network)
        assert nameservers == ([*reachable, gateway] if reachable else [gateway]), resolv_conf
        looked_up = await run(client, a, f"nslookup {archive}")
        assert looked_up["exit_code"] == 0, await dns_failure(client, a, archive, nameservers, network, looked_up)
        answer = await run(client, a, http_request("HEAD /", archive, f"{archive} 80"))
        assert answer["stdout"].startswith("HTTP/1."), answer
        status = structured(await client.call_tool("check_container", {"container_id": a}))
        assert status["egress"] == {"policy": "public"}
    finally:
        for container_id in (a, b):
            await client.call_tool("destroy_container", {"container_id": container_id})


async def test_what_servers_gone_without_cleaning_up_left_in_the_shared_sets_is_taken_out(client: Client) -> None:
    """A server killed while it had sandboxes behind the proxy leaves their addresses in the
    proxied set, and its proxy port open to them; Podman hands the addresses out again, so a public
    sandbox given one would have no network at all. The reaper's check takes both out (an address
    once no container held it at two of its looks in a row)."""
    egress = APP.sandboxes.egress
    network = egress.network
    table = f"mcp_sandbox_{bridge_of(network)}"
    subnet = ipaddress.ip_network(json.loads(podman("network", "inspect", network).stdout)[0]["subnets"][0]["subnet"])
    stale_address = str(subnet[-2])  # held by no container
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        stale_port = free.getsockname()[1]  # nothing listens on it at the gateway
    held = structured(await client.call_tool("create_container", {}))["container_id"]
    try:
        held_address = (await run(client, held, "ip -4 -o addr show eth0 | awk '{print $4}' | cut -d/ -f1"))["stdout"]
        held_address = held_address.strip()
        # A live container's address stays (another server may have put it behind its proxy).
        for name, element in (("proxied", stale_address), ("proxied", held_address), ("proxy_ports", str(stale_port))):
            subprocess.run(["nft", "add", "element", "inet", table, name, f"{{ {element} }}"], check=True)
        await egress.keep()  # an address is taken out when no container held it at two looks in a row
        assert stale_address in subprocess.run(["nft", "list", "set", "inet", table, "proxied"], capture_output=True,
                                               text=True).stdout
        await egress.keep()
        proxied = subprocess.run(["nft", "list", "set", "inet", table, "proxied"], capture_output=True, text=True).stdout
        ports = subprocess.run(["nft", "list", "set", "inet", table, "proxy_ports"], capture_output=True, text=True).stdout
        assert stale_address not in proxied and held_address in proxied, proxied
        assert not re.search(rf"\b{stale_port}\b", ports), ports
    finally:
        for element in (held_address, stale_address):
            subprocess.run(["nft", "delete", "element", "inet", table, "proxied", f"{{ {element} }}"], check=False,
                           capture_output=True)
        await client.call_tool("destroy_container", {"container_id": held})


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
        interface = bridge_of(network)
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


async def test_the_gateway_keeps_its_address_while_ports_come_and_go(start_server: Any) -> None:
    # A Linux bridge whose address was never set takes the lowest of its ports' addresses, so each
    # sandbox that started or went could change it; once the port whose address it had was gone, the
    # sandboxes that had that address cached for the gateway reached nothing through it (the proxy,
    # DNS, the internet) until their ARP entries expired, tens of seconds. Seen as the first request
    # through the proxy after a restart getting no answer. Here a port of the test's own, with the
    # lowest address a random one can have, joins the bridge while the sandbox talks to the gateway,
    # and leaves.
    served = start_server()
    async with Client(served.url + "/mcp") as client:
        container_id = structured(await client.call_tool(
            "create_container", {"allow_domains": ["*.example.invalid"]}))["container_id"]
        ask = via_proxy_variable("HEAD http://a.example.invalid/", "a.example.invalid")
        interface = bridge_of(DEFAULT_NETWORK)
        address = Path(f"/sys/class/net/{interface}/address")
        before = address.read_text()
        port = f"mcpt{secrets.token_hex(3)}"
        subprocess.run(["ip", "link", "add", port, "type", "veth", "peer", "name", port + "p"], check=True)
        try:
            subprocess.run(["ip", "link", "set", port, "address", "02:00:00:00:00:00"], check=True)
            subprocess.run(["ip", "link", "set", port, "master", interface, "up"], check=True)
            assert (await run(client, container_id, ask))["stdout"].startswith("HTTP/1.1 502")
        finally:
            subprocess.run(["ip", "link", "del", port], check=False)
        assert address.read_text() == before
        asked = time.monotonic()
        answered = await run(client, container_id, ask)
        assert answered["stdout"].startswith("HTTP/1.1 502"), (answered, f"{time.monotonic() - asked:.1f} s")
        await client.call_tool("destroy_container", {"container_id": container_id})


async def test_allow_domains_reach_only_those_hosts_through_the_proxy(start_server: Any, listener: Listener) -> None:
    archive = package_archive_host()
    env = {"SANDBOX_POOL_SIZE": "1", "SANDBOX_MAX_ALLOW_DOMAINS": "3"}  # the pool serves allow-lists too
    served = start_server(env)
    async with Client(served.url + "/mcp") as client:
        created = structured(await client.call_tool(
            "create_container", {"allow_domains": [archive, "*.example.invalid", "localhost"]}))
        container_id, egress = created["container_id"], created["egress"]
        assert egress["policy"] == "allow_domains" and egress["allow_domains"] == [archive.lower(), "*.example.invalid",
                                                                                    "localhost"]
        proxy_host, proxy_port = egress["proxy"].removeprefix("http://").split(":")
        variables = (await run(client, container_id, "env | grep -i _proxy= | sort"))["stdout"]
        for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
            assert f"{name}={egress['proxy']}\n" in variables
        assert "no_proxy=localhost" in variables
        # A listed host, over plain HTTP through the proxy the variables name (one small request).
        # (nc rather than busybox wget, whose static build here crashes now and then behind a proxy.)
        fetched = await fetch_listed(client, container_id, archive)
        assert fetched["stdout"].startswith("HTTP/1.") and not fetched["stdout"].startswith(("HTTP/1.1 403", "HTTP/1.1 502")), \
            (fetched["stdout"][:300], fetched["stderr"][:300], fetched)
        # A host not on the list: 403, with a body that says why, for plain HTTP and for CONNECT.
        refused = await run(client, container_id, via_proxy_variable("GET http://unlisted.invalid/", "unlisted.invalid"))
        assert refused["stdout"].startswith("HTTP/1.1 403") and "is not in the allow_domains" in refused["stdout"]
        connect = await run(client, container_id, "printf 'CONNECT unlisted.invalid:443 HTTP/1.1\\r\\n\\r\\n' | "
                                                  f"nc -w 5 {proxy_host} {proxy_port}")
        assert connect["stdout"].startswith("HTTP/1.1 403") and "is not in the allow_domains" in connect["stdout"]
        # A listed name that resolves to an address sandboxes may not reach (here loopback).
        rebound = await run(client, container_id, f"printf 'GET http://localhost:{listener.port}/ HTTP/1.0\\r\\n\\r\\n' "
                                                  f"| nc -w 5 {proxy_host} {proxy_port}")
        assert rebound["stdout"].startswith("HTTP/1.1 403") and "127.0.0.1" in rebound["stdout"], rebound
        # Nothing directly, whatever the variables say: not the host, not the archive, not DNS.
        archive_ip = socket.getaddrinfo(archive, 80, socket.AF_INET, socket.SOCK_STREAM)[0][4][0]
        direct = await run(client, container_id, "unset http_proxy; " + http_request("HEAD /", archive, f"{archive_ip} 80"))
        assert "HTTP/1." not in direct["stdout"]
        assert not await reaches(client, container_id, host_address(), listener.port)
        assert (await run(client, container_id, f"nslookup {archive}"))["exit_code"] != 0
        status = structured(await client.call_tool("check_container", {"container_id": container_id}))
        assert status["egress"] == egress
        # A sandbox without a list cannot use the proxy, and still reaches the archive directly.
        plain = structured(await client.call_tool("create_container", {}))["container_id"]
        via_proxy = await run(client, plain, http_request(f"HEAD http://{archive}/", archive, f"{proxy_host} {proxy_port}"))
        assert "HTTP/1." not in via_proxy["stdout"]
        await client.call_tool("destroy_container", {"container_id": plain})
        # Bad lists are clear errors.
        for arguments, said in (({"allow_domains": ["https://api.github.com/x"]}, "is not a host name pattern"),
                                ({"allow_domains": ["10.0.0.1"]}, "no schemes, ports, paths or IP addresses"),
                                ({"allow_domains": ["a.org", "b.org", "c.org", "d.org"]}, "SANDBOX_MAX_ALLOW_DOMAINS"),
                                ({"allow_domains": ["a.org"], "network": False}, "needs a network")):
            failed = await client.call_tool("create_container", arguments, raise_on_error=False)
            assert failed.is_error and said in failed.content[0].text, (arguments, failed.content[0].text)
    served.stop()
    # After a restart of the server the sandbox stays behind the proxy.
    again = start_server({**env, "SANDBOX_NAMESPACE": served.env["SANDBOX_NAMESPACE"],
                          "SANDBOX_PROXY_PORT": served.env["SANDBOX_PROXY_PORT"]})
    async with Client(again.url + "/mcp") as client:
        status = structured(await client.call_tool("check_container", {"container_id": container_id}))
        assert status["egress"] == egress
        # The proxy still knows the sandbox's list: a listed name is passed on, an unlisted one refused.
        # (The first request here got no answer now and then while the gateway's MAC address still
        # changed as sandboxes came and went: test_the_gateway_keeps_its_address_while_ports_come_and_go.)
        unresolved = await run(client, container_id, via_proxy_variable("HEAD http://a.example.invalid/", "a.example.invalid"))
        assert unresolved["stdout"].startswith("HTTP/1.1 502") and "does not resolve" in unresolved["stdout"], \
            (unresolved, rules_of(DEFAULT_NETWORK), again.log_text()[-3000:])
        refused = await run(client, container_id, via_proxy_variable("GET http://unlisted.invalid/", "unlisted.invalid"))
        assert refused["stdout"].startswith("HTTP/1.1 403") and "is not in the allow_domains" in refused["stdout"]
        fetched = await fetch_listed(client, container_id, archive)
        assert fetched["stdout"].startswith("HTTP/1.") and not fetched["stdout"].startswith(("HTTP/1.1 403", "HTTP/1.1 502")), \
            (fetched["stdout"][:300], fetched["stderr"][:300], rules_of(DEFAULT_NETWORK), again.log_text()[-3000:])
        assert not await reaches(client, container_id, host_address(), listener.port)
    again.stop()
    # A server that cannot put the list in force again (here: started under the open policy)
    # destroys the sandbox rather than leave it open.
    opened = start_server({**env, "SANDBOX_NAMESPACE": served.env["SANDBOX_NAMESPACE"], "SANDBOX_EGRESS": "open"})
    async with Client(opened.url + "/mcp") as client:
        gone = await client.call_tool("check_container", {"container_id": container_id}, raise_on_error=False)
        assert gone.is_error, gone
    assert "cannot be put in force again" in opened.log_text()
    await wait_until(lambda: container_id not in podman("ps", "-a", "--format", "{{.Names}}").stdout)
    assert listener.peers == []


async def test_a_full_sandbox_network_is_followed_by_the_next_under_the_same_rules(
    start_server: Any, listener: Listener
) -> None:
    """SANDBOX_NETWORK_SANDBOXES=2: the third sandbox goes to a second network the server makes,
    with its own rules (nothing of the host), its own resolvers and the proxy at its own gateway;
    /health lists both; a restarted server finds the second one and keeps its rules; a server
    under the open policy removes both networks' rules once they are empty."""
    network = f"mcp-sandbox-next-test-{secrets.token_hex(3)}"
    later = f"{network}-2"
    env = {"SANDBOX_NETWORK": network, "SANDBOX_NETWORK_SANDBOXES": "2"}
    try:
        first = start_server(env)
        async with Client(first.url + "/mcp") as client:
            made = [structured(await client.call_tool("create_container", {})) for _ in range(3)]
            proxied = structured(await client.call_tool("create_container", {"allow_domains": ["*.example.invalid"]}))
            on = [json.loads(podman("inspect", f"mcp-sandbox-{box['container_id']}").stdout)[0]["Config"]["Labels"]
                  ["mcp-sandbox.network"] for box in [*made, proxied]]
            assert on == [network, network, later, later]
            health = httpx.get(first.url + "/health").json()["networks"]
            # Two sandboxes on each, and each network's anchor (backend/own_netns.py), which does not count.
            assert [(n["name"], n["ports_free"]) for n in health] == [(network, 1023 - 3), (later, 1023 - 3)]
            moved = made[2]["container_id"]
            assert made[2]["egress"] == {"policy": "public"}
            assert not await reaches(client, moved, host_address(), listener.port)  # the second network's rules
            resolv = (await run(client, moved, "cat /etc/resolv.conf"))["stdout"]
            assert f"nameserver {gateway_of(later)}" in resolv and gateway_of(network) not in resolv
            assert proxied["egress"]["proxy"].startswith(f"http://{gateway_of(later)}:")
            ask = via_proxy_variable("HEAD http://a.example.invalid/", "a.example.invalid")
            assert (await run(client, proxied["container_id"], ask))["stdout"].startswith("HTTP/1.1 502")
        first.stop()
        subprocess.run(["nft", "delete", "table", "inet", f"mcp_sandbox_{bridge_of(later)}"], check=True)
        again = start_server({**env, "SANDBOX_NAMESPACE": first.env["SANDBOX_NAMESPACE"],
                              "SANDBOX_PROXY_PORT": first.env["SANDBOX_PROXY_PORT"]})
        assert rules_of(later)  # put back at start: sandboxes live there
        async with Client(again.url + "/mcp") as client:
            assert not await reaches(client, moved, host_address(), listener.port)
            assert (await run(client, proxied["container_id"], ask))["stdout"].startswith("HTTP/1.1 502")
            for box in [*made, proxied]:
                await client.call_tool("destroy_container", {"container_id": box["container_id"]})
        assert sandboxes_left(again.env["SANDBOX_NAMESPACE"]) == []
        again.stop()
        # Under the open policy, with no sandbox left on them, both networks' rules go.
        start_server({**env, "SANDBOX_EGRESS": "open", "SANDBOX_POOL_SIZE": "0"}).stop()
        assert (rules_of(network), rules_of(later)) == ("", "")
        assert listener.peers == []
    finally:
        for name in (later, network):
            interface = (json.loads(podman("network", "inspect", name, check=False).stdout or "[]") or [{}])[0].get(
                "network_interface")
            podman("network", "rm", "-f", name, check=False)
            if interface:
                subprocess.run(["nft", "delete", "table", "inet", f"mcp_sandbox_{interface}"], capture_output=True)
