"""web/upstream.py, the preview proxy's HTTP/1.1 client, over a socket pair (no Podman): how responses
are framed, what is refused, and which connections are kept."""

from __future__ import annotations

import socket

import anyio
import pytest

from mcp_container_sandbox.sandbox.backend.netns import SocketBytes
from mcp_container_sandbox.web import upstream
from mcp_container_sandbox.web.upstream import Connection, UpstreamError, Upstreams


async def exchange(answer: bytes, method: bytes = b"GET") -> tuple[upstream.Head | None, bytes, str]:
    """Send a request over a socket pair whose far end answers `answer` then closes; what came back."""
    near, far = socket.socketpair()
    near.setblocking(False)
    connection = Connection(SocketBytes(near))
    far.sendall(answer)
    far.close()
    try:
        head = await connection.read_head(method)
        body = b"".join([piece async for piece in connection.body(head, method)])
        return head, body, ""
    except UpstreamError as exc:
        return None, b"", str(exc)
    finally:
        await connection.stream.aclose()


def run(answer: bytes, method: bytes = b"GET") -> tuple[upstream.Head | None, bytes, str]:
    return anyio.run(exchange, answer, method)


def test_bodies_by_length_by_chunks_and_until_close() -> None:
    head, body, _ = run(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\nSet-Cookie: a\r\nSet-Cookie: b\r\n\r\nhello")
    assert head is not None and head.status == 200 and body == b"hello" and head.reusable
    assert [v for k, v in head.headers if k == b"set-cookie"] == [b"a", b"b"]
    head, body, _ = run(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n1\r\n!\r\n0\r\nX-T: 1\r\n\r\n")
    assert body == b"hello!" and head is not None and head.reusable
    head, body, _ = run(b"HTTP/1.0 200 OK\r\n\r\nuntil the end")
    assert body == b"until the end" and head is not None and not head.reusable
    head, body, _ = run(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n")
    assert head is not None and head.status == 204 and body == b""
    head, body, _ = run(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", method=b"HEAD")
    assert head is not None and body == b"" and head.get(b"content-length") == b"1000"
    head, _, _ = run(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
    assert head is not None and not head.reusable


def test_broken_answers_are_upstream_errors() -> None:
    assert "before answering" in run(b"")[2]
    assert "not HTTP" in run(b"SSH-2.0-OpenSSH\r\n\r\n")[2]
    assert "before the end of its body" in run(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort")[2]
    assert "chunk" in run(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")[2]


class Idle:
    def __init__(self) -> None:
        self.closed = False

    def extra(self, attribute: object, default: object = None) -> object:
        return default

    async def aclose(self) -> None:
        self.closed = True


def test_idle_connections_are_kept_per_link_and_closed_when_old_or_gone(monkeypatch: pytest.MonkeyPatch) -> None:
    async def main() -> None:
        opened: list[Idle] = []

        async def open_stream(token: str) -> Idle:
            opened.append(Idle())
            return opened[-1]

        pool = Upstreams(open_stream)  # type: ignore[arg-type]
        first, kept = await pool.connection("t1")
        assert not kept
        await pool.release("t1", first, reusable=True)
        again, kept = await pool.connection("t1")
        assert kept and again is first and len(opened) == 1  # reused
        await pool.release("t1", again, reusable=False)
        assert opened[0].closed and pool.idle_count() == 0  # not reusable: closed
        second, _ = await pool.connection("t2")
        await pool.release("t2", second, reusable=True)
        await pool.close_idle(lambda token: True)
        assert pool.idle_count() == 1  # young and its link alive: kept
        await pool.close_idle(lambda token: False)
        assert pool.idle_count() == 0 and opened[1].closed  # its link gone
        third, _ = await pool.connection("t3")
        await pool.release("t3", third, reusable=True)
        monkeypatch.setattr(upstream, "IDLE_SECONDS", -1)
        await pool.close_idle(lambda token: True)
        assert pool.idle_count() == 0 and opened[2].closed  # too old

    anyio.run(main)
