"""Secrets (sandbox/network/secrets.py, interception.py, certificates.py) without Podman: the file and
its mode, what create_container's secrets are checked for, the header rewrite, and the relay of
requests between a TLS client and a TLS server of the test's own, both in this process on loopback."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from support.tls import server_certificate

from mcp_container_sandbox.sandbox.network.certificates import ProxyCA
from mcp_container_sandbox.sandbox.network.interception import inject, intercept
from mcp_container_sandbox.sandbox.network.secret_rules import SecretRule
from mcp_container_sandbox.sandbox.network.secrets import InvalidSecret, SecretStore, check_secrets

pytestmark = pytest.mark.anyio
RULE = SecretRule("TOKEN", "localhost", "Authorization", "Bearer {value}", "mcp-secret-placeholder-abc")


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def store(tmp_path: Path, text: str = "TOKEN=s3cret\n# a comment\nOTHER=x=y\n", mode: int = 0o600) -> SecretStore:
    path = tmp_path / "secrets.env"
    path.write_text(text)
    path.chmod(mode)
    return SecretStore(str(path))


def test_the_file_is_read_again_when_it_changes_and_refused_when_others_may_read_it(tmp_path: Path) -> None:
    kept = store(tmp_path)
    assert kept.value("TOKEN") == "s3cret" and kept.value("OTHER") == "x=y" and kept.names() == {"TOKEN", "OTHER"}
    (tmp_path / "secrets.env").write_text("TOKEN=rotated\n")
    assert kept.value("TOKEN") == "rotated"
    (tmp_path / "secrets.env").chmod(0o640)
    assert kept.value("TOKEN") is None and "chmod 600" in kept.why_not
    assert SecretStore("").why_not == "SANDBOX_SECRETS_FILE is not set"


def test_secrets_are_checked_and_each_gets_a_placeholder_of_its_own(tmp_path: Path) -> None:
    known = store(tmp_path)
    rules = check_secrets([{"name": "TOKEN", "host": "API.example.org"}], ["api.example.org"], known)
    assert rules[0].host == "api.example.org" and rules[0].header == "Authorization"
    assert rules[0].placeholder.startswith("mcp-secret-placeholder-") and "s3cret" not in repr(rules)
    again = check_secrets([{"name": "TOKEN", "host": "api.example.org"}], ["*.example.org"], known)
    assert again[0].placeholder != rules[0].placeholder
    for asked, domains, said in (
        ({"name": "TOKEN", "host": "api.example.org"}, [], "not in the sandbox's allow_domains"),
        ({"name": "TOKEN", "host": "other.org"}, ["api.example.org"], "not in the sandbox's allow_domains"),
        ({"name": "NOPE", "host": "api.example.org"}, ["api.example.org"], "no secret named 'NOPE'"),
        ({"name": "TOKEN", "host": "*.example.org"}, ["*.example.org"], "one exact host name"),
        ({"name": "TOKEN", "host": "api.example.org", "header": "Content-Length"}, ["api.example.org"], "header"),
        ({"name": "TOKEN", "host": "api.example.org", "format": "Bearer"}, ["api.example.org"], "{value}"),
        ({"name": "TOKEN", "host": "api.example.org", "format": "{value}\r\nX: y"}, ["api.example.org"], "{value}"),
    ):
        with pytest.raises(InvalidSecret, match=said) as caught:
            check_secrets([asked], domains, known)
        assert "s3cret" not in str(caught.value)


def test_the_header_is_set_and_the_placeholder_replaced_wherever_it_is() -> None:
    headers = [("Host", "localhost"), ("authorization", "token mcp-secret-placeholder-abc"),
               ("X-Echo", "a mcp-secret-placeholder-abc b")]
    assert inject(headers, [RULE], {"TOKEN": "v"}.get) == [("Host", "localhost"), ("X-Echo", "a v b"),
                                                           ("Authorization", "Bearer v")]
    with pytest.raises(LookupError):
        inject(headers, [RULE], {}.get)


async def test_requests_are_relayed_with_the_secret_chunked_bodies_and_kept_alive(tmp_path: Path) -> None:
    chain, ca_file = server_certificate(tmp_path / "upstream", ["localhost"])
    seen: list[bytes] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while head := await reader.readuntil(b"\r\n\r\n") if not reader.at_eof() else b"":
            body = b""
            if b"transfer-encoding: chunked" in head.lower():
                while (size := int((await reader.readuntil(b"\r\n")).strip(), 16)) != 0:
                    body += (await reader.readexactly(size + 2))[:-2]
                await reader.readuntil(b"\r\n")
            seen.append(head + body)
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
            await writer.drain()
        writer.close()

    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(chain)
    up_server = await asyncio.start_server(upstream, "127.0.0.1", 0, ssl=served)
    up_port = up_server.sockets[0].getsockname()[1]
    ca = ProxyCA(tmp_path / "ca", "unit")
    checked = ssl.create_default_context(cafile=str(ca_file))

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        await intercept(reader, writer, "localhost", "127.0.0.1", up_port, [RULE], {"TOKEN": "v"}.get, ca, checked)
        writer.close()

    proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_server.sockets[0].getsockname()[1])
    writer.write(b"CONNECT localhost:443 HTTP/1.1\r\n\r\n")
    assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
    trusting = ssl.create_default_context(cadata=ca.cert_pem.decode())  # the sandbox's side: the proxy's CA
    await writer.start_tls(trusting, server_hostname="localhost")
    for _ in range(2):  # one connection, two requests
        writer.write(b"POST /x HTTP/1.1\r\nHost: localhost\r\nExpect: 100-continue\r\nX-Key: mcp-secret-placeholder-abc\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n")
        answer = await reader.readuntil(b"0\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n")
    assert len(seen) == 2
    for request in seen:
        assert b"Authorization: Bearer v\r\n" in request and b"X-Key: v\r\n" in request and request.endswith(b"body")
        assert b"placeholder" not in request and b"expect" not in request.lower()
    writer.close()
    for server in (proxy_server, up_server):
        server.close()


async def test_an_upstream_the_host_does_not_trust_is_a_502_naming_the_reason(tmp_path: Path) -> None:
    chain, _ = server_certificate(tmp_path / "upstream", ["localhost"], signed=False)
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(chain)
    reached: list[bool] = []

    async def upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reached.append(bool(await reader.read(100)))
        writer.close()

    up_server = await asyncio.start_server(upstream, "127.0.0.1", 0, ssl=served)
    ca = ProxyCA(tmp_path / "ca", "unit")

    async def proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await intercept(reader, writer, "localhost", "127.0.0.1", up_server.sockets[0].getsockname()[1], [RULE],
                        {"TOKEN": "v"}.get, ca, ssl.create_default_context())
        writer.close()

    proxy_server = await asyncio.start_server(proxy, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_server.sockets[0].getsockname()[1])
    await writer.start_tls(ssl.create_default_context(cadata=ca.cert_pem.decode()), server_hostname="localhost")
    writer.write(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
    answer = await reader.read(4096)
    assert answer.startswith(b"HTTP/1.1 502") and b"certificate failed verification" in answer
    assert not any(reached)  # nothing was sent
    assert (tmp_path / "ca" / "ca.key").stat().st_mode & 0o077 == 0
    writer.close()
    for server in (proxy_server, up_server):
        server.close()
