"""The proxy and secrets rows' outside host: an HTTP and HTTPS server (target_server.py) in a network
namespace of the bench's own, joined to the host by a veth pair, named TARGET_NAME in /etc/hosts
while it runs; its certificate is of a CA of the bench's own (ca_file, which the server is told to
trust)."""

from __future__ import annotations

import secrets
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from support.tls import server_certificate

TARGET_NAME = "mcp-sandbox-bench.test"  # .test: a name for testing that never resolves elsewhere
SERVER = Path(__file__).resolve().parent / "target_server.py"


class Target:
    """An HTTP server in a network namespace of the bench's own, joined to the host by a veth
    pair, and named TARGET_NAME in /etc/hosts while the bench runs."""

    def __init__(self) -> None:
        tag = secrets.token_hex(2)
        self.netns, self.host_if, self.ns_if = f"mcpsb-bench-{tag}", f"mcpsbbh{tag}", f"mcpsbbn{tag}"
        third = int(tag, 16) % 250
        self.ip = f"10.251.{third}.2"
        inside = ["ip", "netns", "exec", self.netns]
        for argv in (["ip", "netns", "add", self.netns],
                     ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if],
                     ["ip", "link", "set", self.ns_if, "netns", self.netns],
                     ["ip", "addr", "add", f"10.251.{third}.1/30", "dev", self.host_if],
                     ["ip", "link", "set", self.host_if, "up"],
                     [*inside, "ip", "addr", "add", f"{self.ip}/30", "dev", self.ns_if],
                     [*inside, "ip", "link", "set", self.ns_if, "up"],
                     [*inside, "ip", "link", "set", "lo", "up"],
                     [*inside, "ip", "route", "add", "default", "via", f"10.251.{third}.1"]):
            subprocess.run(argv, check=True, capture_output=True)
        self.folder = Path(tempfile.mkdtemp(prefix="mcp-bench-target-"))
        chain, self.ca_file = server_certificate(self.folder, [TARGET_NAME])
        self.process = subprocess.Popen([*inside, sys.executable, str(SERVER), self.ip, str(chain)])
        self.hosts_line = f"{self.ip} {TARGET_NAME}  # mcp-sandbox bench {tag}\n"
        with open("/etc/hosts", "a") as hosts:
            hosts.write(self.hosts_line)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        hosts = Path("/etc/hosts")
        hosts.write_text(hosts.read_text().replace(self.hosts_line, ""))
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)
        shutil.rmtree(self.folder, ignore_errors=True)
