"""The egress proxy against upstreams on loopback: what a client is told when an upstream is
silent (no Podman; the proxy is started on 127.0.0.1 with nothing blocked)."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from mcp_container_sandbox.sandbox.network.proxy import EgressProxy

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the proxy is written on asyncio streams


async def through_proxy(upstream: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
                        request: str) -> bytes:
    """What a client of the proxy reads back for ``request`` (with HOST:PORT standing for the upstream)."""
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await upstream(reader, writer)

    up = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = up.sockets[0].getsockname()[1]
    proxy = EgressProxy(blocked=(), allowed_cidrs=(), host_addresses=set)
    await proxy.start("127.0.0.1", 0)
    proxy.allow("127.0.0.1", "sandbox-under-test", ["127.0.0.1"])
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(request.replace("HOST:PORT", f"127.0.0.1:{port}").encode())
        if request.startswith("CONNECT"):
            writer.write(b"GET / HTTP/1.0\r\n\r\n")  # bytes for the tunnel
        answer = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        return answer
    finally:
        await proxy.stop()
        up.close()


async def closes(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def resets(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def answers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi")
    await writer.drain()
    writer.close()


async def test_an_upstream_that_closes_or_resets_without_answering_is_a_502_that_says_so() -> None:
    for upstream in (closes, resets):
        answer = await through_proxy(upstream, "GET http://HOST:PORT/ HTTP/1.1\r\nHost: x\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 502 Bad Gateway"), (upstream.__name__, answer)
        assert b"closed the connection without answering" in answer


async def test_an_answer_is_passed_on_as_it_came_and_a_tunnel_is_never_answered_for() -> None:
    answer = await through_proxy(answers, "GET http://HOST:PORT/ HTTP/1.1\r\nHost: x\r\n\r\n")
    assert answer == b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi"
    # Through CONNECT the proxy only says the tunnel is open; what the ends say is theirs.
    tunnel = await through_proxy(closes, "CONNECT HOST:PORT HTTP/1.1\r\n\r\n")
    assert tunnel == b"HTTP/1.1 200 Connection established\r\n\r\n"
