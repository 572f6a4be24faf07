"""Secrets that never enter a sandbox (create_container(secrets=[...])): the egress proxy puts the real
value into requests to the secret's host only, over TLS it ends with a CA of its own that the
sandbox trusts, checking the real host's certificate; the value is nowhere in the sandbox (the
environment and command line of every process, its memory, its files), nor in a tool's result or
the server's log. The HTTPS servers are the test's own (their own CA) in a network namespace the test
makes, named in /etc/hosts for the time of the test; the client in the sandbox is a static OpenSSL
program of tests/support/apps."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import APP, disk_dir, podman, structured
from fastmcp import Client
from fastmcp.exceptions import ToolError
from support.tls import https_client_binary, put_https_client, server_certificate
from test_egress import Namespace, run

pytestmark = pytest.mark.anyio
VALUE = "real-" + secrets.token_hex(20)
OTHER_VALUE = "other-" + secrets.token_hex(20)
UPSTREAM = r"""
import json, socket, ssl, sys, threading
log, ip = sys.argv[1], sys.argv[2]
def serve(port, cert):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER); context.load_cert_chain(cert)
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((ip, port)); s.listen(16)
    while True:
        conn, _ = s.accept()
        threading.Thread(target=talk, args=(conn, context, port), daemon=True).start()
def talk(conn, context, port):
    try:
        tls = context.wrap_socket(conn, server_side=True)
        stream = tls.makefile("rb")
        while True:
            start = stream.readline()
            if not start:
                return
            headers = []
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers.append([name, value.strip()])
            with open(log, "a") as out:
                out.write(json.dumps({"port": port, "start": start.decode().strip(),
                                      "headers": headers}) + "\n")
            tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
    except (OSError, ssl.SSLError):
        pass
threading.Thread(target=serve, args=(8443, sys.argv[4]), daemon=True).start()
serve(443, sys.argv[3])
"""


class Upstreams:
    """HTTPS servers in a network namespace: on 443 for the names good and plain (a certificate of the
    test's own CA), on 8443 for bad (self-signed); each request's head logged."""

    def __init__(self, folder: Path) -> None:
        self.namespace = Namespace()
        tag = secrets.token_hex(3)
        self.good, self.plain, self.bad = (f"{kind}-{tag}.secrets.test" for kind in ("good", "plain", "bad"))
        good_pem, self.ca_file = server_certificate(folder, [self.good, self.plain])
        bad_pem, _ = server_certificate(folder, [self.bad], signed=False)
        self.log = folder / "requests.jsonl"
        self.log.touch()
        self.process = subprocess.Popen(["ip", "netns", "exec", self.namespace.name, sys.executable, "-c", UPSTREAM,
                                         str(self.log), self.namespace.ip, str(good_pem), str(bad_pem)])
        self.hosts_line = f"{self.namespace.ip} {self.good} {self.plain} {self.bad}  # mcp-sandbox test {tag}\n"
        with open("/etc/hosts", "a") as hosts:
            hosts.write(self.hosts_line)

    def requests(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        text = Path("/etc/hosts").read_text()
        Path("/etc/hosts").write_text(text.replace(self.hosts_line, ""))
        self.namespace.close()


@pytest.fixture
def upstreams(tmp_path: Path) -> Iterator[Upstreams]:
    made = Upstreams(tmp_path)
    yield made
    made.close()


@pytest.fixture(scope="module")
def https_get() -> bytes:
    return https_client_binary()


def secrets_file(folder: Path, mode: int = 0o600, value: str = VALUE) -> Path:
    path = folder / "secrets.env"
    path.write_text(f"# the test's secrets\nAPI_TOKEN={value}\nOTHER_KEY={OTHER_VALUE}\nBAD_TOKEN={VALUE}\n")
    path.chmod(mode)
    return path


def headers_of(request: dict[str, Any]) -> dict[str, str]:
    return {name.lower(): value for name, value in request["headers"]}


def sandbox_holds(container_id: str, namespace: str, needle: bytes) -> list[str]:
    """Where in the sandbox the bytes are, looked at from the host: every process's environment,
    command line and memory, and every file of its own disk."""
    found = []
    processes = podman("top", f"mcp-sandbox-{container_id}", "hpid").stdout.split()[1:]
    assert len(processes) >= 3, processes
    for process in processes:
        for part in ("environ", "cmdline"):
            if needle in Path("/proc", process, part).read_bytes():
                found.append(f"/proc/{process}/{part}")
        with open(f"/proc/{process}/maps") as maps, open(f"/proc/{process}/mem", "rb", 0) as memory:
            for line in maps:
                span, perms = line.split()[:2]
                if not perms.startswith("r"):
                    continue
                start, end = (int(x, 16) for x in span.split("-"))
                try:
                    memory.seek(start)
                    if needle in memory.read(end - start):
                        found.append(f"/proc/{process}/mem {line.strip()}")
                except (OSError, ValueError, OverflowError):
                    continue
    on_disk = subprocess.run(["grep", "-r", "-l", "-F", "-s", needle.decode(), str(disk_dir(namespace) / f"mcp-sandbox-{container_id}")],
                             capture_output=True, text=True).stdout.split()
    return found + on_disk


async def test_a_secret_reaches_its_host_only_and_never_the_sandbox(start_server, upstreams: Upstreams,
                                                                     https_get: bytes, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    env = {"SANDBOX_SECRETS_FILE": str(secrets_file(tmp_path)), "SSL_CERT_FILE": str(upstreams.ca_file),
           "SANDBOX_EGRESS_ALLOW_CIDRS": f"{upstreams.namespace.ip}/32"}
    server = start_server(env)
    namespace = server.env["SANDBOX_NAMESPACE"]
    good, plain, bad = upstreams.good, upstreams.plain, upstreams.bad
    async with Client(server.url + "/mcp") as client:
        made = structured(await client.call_tool("create_container", {
            "allow_domains": [good, plain, bad],
            "secrets": [{"name": "API_TOKEN", "host": good},
                        {"name": "OTHER_KEY", "host": good, "header": "X-Api-Key", "format": "{value}"},
                        {"name": "BAD_TOKEN", "host": bad}]}))
        container_id = made["container_id"]
        assert made["egress"]["secrets"] == [{"name": "API_TOKEN", "host": good, "header": "Authorization"},
                                             {"name": "OTHER_KEY", "host": good, "header": "X-Api-Key"},
                                             {"name": "BAD_TOKEN", "host": bad, "header": "Authorization"}]
        await put_https_client(client, container_id, https_get)
        variables = (await run(client, container_id, "env"))["stdout"]
        assert "API_TOKEN=mcp-secret-placeholder-" in variables and VALUE not in variables
        assert "SSL_CERT_FILE=/var/lib/mcp-sandbox/ca-bundle.crt" in variables

        # The secret's host: the value in its header and in place of the placeholder, over TLS the
        # sandbox's client checked (no -k) against the bundle it was given.
        answered = await run(client, container_id, f'https-get {good} /one "X-Echo: $API_TOKEN"')
        assert answered["stdout"].startswith("HTTP/1.1 200") and answered["stdout"].endswith("ok\n"), answered
        seen = headers_of(upstreams.requests()[-1])
        assert seen["authorization"] == f"Bearer {VALUE}" and seen["x-echo"] == VALUE and seen["x-api-key"] == OTHER_VALUE
        # Kept alive: two requests on one connection both get it.
        await run(client, container_id, f"https-get -r 2 {good} /two")
        assert [headers_of(r)["authorization"] for r in upstreams.requests()[-2:]] == [f"Bearer {VALUE}"] * 2

        # Another allowed host is an untouched tunnel: its real certificate (which the sandbox does not
        # trust), and the placeholder, never the value, even when the client sends it there.
        untouched = await run(client, container_id, f"https-get {plain} /x")
        assert untouched["stdout"].startswith("verify failed"), untouched
        await run(client, container_id, f'https-get -k {plain} /x "Authorization: Bearer $API_TOKEN"')
        elsewhere = upstreams.requests()[-1]
        assert headers_of(elsewhere)["host"] == plain and headers_of(elsewhere)["authorization"].startswith("Bearer mcp-secret-placeholder-")
        # An upstream whose certificate the host does not trust: 502 naming the reason, nothing sent.
        before = len(upstreams.requests())
        refused = await run(client, container_id, f"https-get {bad}:8443 /x")
        assert refused["stdout"].startswith("HTTP/1.1 502") and "certificate failed verification" in refused["stdout"], refused
        assert len(upstreams.requests()) == before

        # Nowhere in the sandbox: a process holding the placeholder, and one that made a request, alive.
        holder = structured(await client.call_tool("execute_command", {
            "container_id": container_id, "timeout_seconds": 100, "command": 'echo "$API_TOKEN" > /root/placeholder.txt; '
            f'T="$API_TOKEN" sleep 120 & https-get -w 60 {good} /held "X-Echo: $API_TOKEN"'}))
        assert holder["status"] == "running"
        # The control: the scan finds the placeholder in each kind of place it looks.
        placeholder = sandbox_holds(container_id, namespace, b"mcp-secret-placeholder-")
        for kind in ("/environ", "/cmdline", "/mem ", "placeholder.txt"):
            assert any(kind in where for where in placeholder), (kind, placeholder)
        assert sandbox_holds(container_id, namespace, VALUE.encode()) == []
        assert sandbox_holds(container_id, namespace, OTHER_VALUE.encode()) == []

        # What is wrong with secrets, said without a value.
        for arguments, said in (
            ({"allow_domains": [plain], "secrets": [{"name": "API_TOKEN", "host": good}]}, "not in the sandbox's allow_domains"),
            ({"secrets": [{"name": "API_TOKEN", "host": good}]}, "not in the sandbox's allow_domains"),
            ({"allow_domains": [good], "secrets": [{"name": "NO_SUCH", "host": good}]}, "no secret named 'NO_SUCH'"),
            ({"allow_domains": [good], "secrets": [{"name": "API_TOKEN", "host": good, "header": "Host"}]}, "header"),
            ({"allow_domains": [good], "secrets": [{"name": "API_TOKEN", "host": good, "format": "x"}]}, "{value}"),
        ):
            with pytest.raises(ToolError, match=said) as caught:
                await client.call_tool("create_container", arguments)
            assert VALUE not in str(caught.value)

        # The file is read again when it changes; one others may read is not used.
        secrets_file(tmp_path, value=VALUE + "-new")
        await run(client, container_id, f"https-get {good} /new")
        assert headers_of(upstreams.requests()[-1])["authorization"] == f"Bearer {VALUE}-new"
        secrets_file(tmp_path, mode=0o644)
        with pytest.raises(ToolError, match="may be read by others"):
            await client.call_tool("create_container", {"allow_domains": [good], "secrets": [{"name": "API_TOKEN", "host": good}]})
        missing = await run(client, container_id, f"https-get {good} /gone")
        assert missing["stdout"].startswith("HTTP/1.1 502") and "no longer on the server" in missing["stdout"]
        secrets_file(tmp_path)
    server.stop()
    # Across a restart of the server: the sandbox's secrets stay in force.
    again = start_server({**env, "SANDBOX_NAMESPACE": namespace, "SANDBOX_PROXY_PORT": server.env["SANDBOX_PROXY_PORT"]})
    async with Client(again.url + "/mcp") as client:
        await run(client, container_id, f"https-get {good} /restarted")
        assert headers_of(upstreams.requests()[-1])["authorization"] == f"Bearer {VALUE}"
        await client.call_tool("destroy_container", {"container_id": container_id})
    for log in (server.log_text(), again.log_text()):
        assert VALUE not in log and OTHER_VALUE not in log
    ca_key = Path(APP.sandboxes.settings.state_dir) / namespace / "ca" / "ca.key"
    assert ca_key.stat().st_mode & 0o077 == 0  # the CA's key: the server's alone
