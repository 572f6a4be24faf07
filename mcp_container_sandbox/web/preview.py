"""Preview URLs over HTTP: a request to ``/ports/<token>/<path>`` (or to ``<token>.<PREVIEW_DOMAIN>``)
is proxied to the port of the link's sandbox, inside the sandbox's own network namespace.

An ASGI middleware in front of everything else (the MCP endpoint's guards and request-size
limit concern MCP, not the apps that sandboxes serve). HTTP/1.1 goes over connections opened
inside the sandbox (``SandboxManager.open_port``, upstream.py), kept alive and reused per link,
and bodies stream both ways (chunked, large, server-sent events as they are written). WebSocket upgrades are relayed message by
message with the sans-I/O protocol of ``websockets`` over the same kind of connection.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
from anyio.abc import ByteStream
from starlette.requests import Request
from starlette.responses import (
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response as WsResponse
from websockets.uri import parse_uri

from ..sandbox import PortClosed, PortLink, PortLinkNotFound, SandboxError
from .upstream import UpstreamError, Upstreams

logger = logging.getLogger("mcp_sandbox.preview")

TOKEN_RE = re.compile(r"^[0-9a-f]{40}$")
PREFIX = "/ports/"
# Hop-by-hop headers (RFC 9110 7.6.1) and what the proxy sets itself.
HOP_BY_HOP = {b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization", b"te", b"trailer",
              b"transfer-encoding", b"upgrade", b"host"}
WS_OWN = {b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions", b"sec-websocket-accept"}

OpenPort = Callable[[str], Awaitable[tuple[PortLink, ByteStream]]]
FindLink = Callable[[str], PortLink]
Authorize = Callable[[Scope, PortLink], Awaitable[bool]]


class PreviewRouter:
    """Sends preview requests to the proxy and everything else to the app."""

    def __init__(self, app: ASGIApp, proxy: PreviewProxy) -> None:
        self.app, self.proxy = app, proxy

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket"):
            matched = self.proxy.match(scope)
            if matched is not None:
                await self.proxy.serve(scope, receive, send, *matched)
                return
        await self.app(scope, receive, send)


class PreviewProxy:
    def __init__(self, open_port: OpenPort, find: FindLink, authorize: Authorize, domain: str = "") -> None:
        self.open_port, self.find, self.authorize, self.domain = open_port, find, authorize, domain
        self.upstreams = Upstreams(self._open_stream)

    async def _open_stream(self, token: str) -> ByteStream:
        return (await self.open_port(token))[1]

    def _live(self, token: str) -> bool:
        try:
            self.find(token)
            return True
        except PortLinkNotFound:
            return False

    async def close_idle_forever(self) -> None:
        """Every few seconds, close the connections to apps that idled too long or whose link is gone."""
        while True:
            await anyio.sleep(5)
            await self.upstreams.close_idle(self._live)

    def match(self, scope: Scope) -> tuple[str, bytes, str] | None:
        """(token, the path and query for the app, the URL prefix it is served under), or None."""
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode()
        query = scope.get("query_string") or b""
        target = raw_path + (b"?" + query if query else b"")
        if self.domain:
            host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1").lower().split(":")[0]
            label, dot, rest = host.partition(".")
            if dot and rest == self.domain.split(":")[0] and TOKEN_RE.match(label):
                return label, target, ""
        if raw_path.startswith(PREFIX.encode()):
            token, slash, rest_path = raw_path[len(PREFIX):].decode("latin-1").partition("/")
            return token, ("/" + rest_path).encode("latin-1") + (b"?" + query if query else b"") if slash else b"", \
                PREFIX + token
        return None

    async def serve(self, scope: Scope, receive: Receive, send: Send, token: str, target: bytes, prefix: str) -> None:
        try:
            link = self.find(token) if TOKEN_RE.match(token) else None
            if link is None:
                raise PortLinkNotFound("Unknown preview link. Preview links come from the expose_port tool.")
        except PortLinkNotFound as exc:
            await self._refuse(scope, receive, send, 404, str(exc))
            return
        if not await self.authorize(scope, link):
            await self._refuse(scope, receive, send, 401, "This server requires the bearer token of the link's "
                               "owner for preview links (Authorization: Bearer <token>; PREVIEW_REQUIRE_AUTH).")
            return
        if not target:  # /ports/<token>: the app's root is /ports/<token>/
            await RedirectResponse(prefix + "/", status_code=308)(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self._websocket(WebSocket(scope, receive, send), link, target)
        else:
            response = await self._http(Request(scope, receive), link, target, prefix)
            await response(scope, receive, send)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, status: int, message: str) -> None:
        if scope["type"] == "websocket":
            await WebSocket(scope, receive, send).close(code=1008 if status in (401, 404) else 1011, reason=message[:120])
        else:
            await JSONResponse({"error": message}, status_code=status)(scope, receive, send)

    # ----- HTTP

    async def _http(self, request: Request, link: PortLink, target: bytes, prefix: str) -> Response:
        headers = [(k, v) for k, v in request.headers.raw if k not in HOP_BY_HOP and k != b"expect"]
        headers += _forwarded(request.scope, link, prefix)
        sized = any(k == b"content-length" for k, _ in request.headers.raw)
        chunked = not sized and any(k == b"transfer-encoding" for k, _ in request.headers.raw)
        if chunked:  # streamed on as it comes
            headers.append((b"transfer-encoding", b"chunked"))
        method = request.method.encode()
        # A kept connection the app has closed meanwhile fails at once: a request without a body
        # is then sent again on a new one (as browsers do); one with a body cannot be replayed.
        attempts = 1 if sized or chunked else 2
        for attempt in range(attempts):
            try:
                connection, kept = await self.upstreams.connection(link.token)
            except PortLinkNotFound as exc:
                return JSONResponse({"error": str(exc)}, status_code=404)
            except SandboxError as exc:  # PortClosed among them: nothing listens there
                return JSONResponse({"error": str(exc), "port": link.port}, status_code=502)
            try:
                await connection.send_request(method, target, headers, request.stream() if sized or chunked else None,
                                              chunked)
                head = await connection.read_head(method)
                break
            except (UpstreamError, OSError, anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
                await connection.stream.aclose()
                if kept and attempt + 1 < attempts:
                    continue
                return JSONResponse({"error": f"The app on port {link.port} broke the connection before answering "
                                              f"({exc or type(exc).__name__}). Check its log in the sandbox.",
                                     "port": link.port}, status_code=502)
        raw = [(k, v) for k, v in head.headers if k not in HOP_BY_HOP]
        if prefix:
            raw = [(k, _rewrite_location(v, link.port, prefix) if k == b"location" else v) for k, v in raw]

        async def body() -> AsyncIterator[bytes]:
            finished = False
            try:
                async for piece in connection.body(head, method):
                    yield piece
                finished = True
            except UpstreamError as exc:  # the client sees the body cut short, as the app left it
                logger.info("preview link %s: %s", link.token[:8], exc)
            finally:
                with anyio.CancelScope(shield=True):
                    await self.upstreams.release(link.token, connection, finished and head.reusable)

        streamed = StreamingResponse(body(), status_code=head.status)
        streamed.raw_headers = raw
        return streamed

    # ----- WebSocket

    async def _websocket(self, client: WebSocket, link: PortLink, target: bytes) -> None:
        try:
            _, stream = await self.open_port(link.token)
        except (PortClosed, SandboxError) as exc:
            await client.close(code=1011, reason=str(exc)[:120])
            return
        async with stream:
            protocol = ClientProtocol(parse_uri(f"ws://127.0.0.1:{link.port}{target.decode('latin-1')}"), max_size=None)
            request = protocol.connect()
            offered = client.headers.get("sec-websocket-protocol")
            for key, value in client.headers.raw:
                if key not in HOP_BY_HOP and key not in WS_OWN:
                    request.headers[key.decode("latin-1")] = value.decode("latin-1")
            for key, value in _forwarded(client.scope, link, ""):
                request.headers[key.decode()] = value.decode("latin-1")
            protocol.send_request(request)
            await _flush(protocol, stream)
            answer = await _handshake(protocol, stream)
            if answer is None or answer.status_code != 101:
                why = f"the app answered {answer.status_code}" if answer is not None else "the app closed the connection"
                await client.close(code=1011, reason=f"WebSocket upgrade refused on port {link.port}: {why}")
                return
            await client.accept(subprotocol=answer.headers.get("Sec-WebSocket-Protocol") if offered else None)
            async with anyio.create_task_group() as tg:
                tg.start_soon(_client_to_app, client, protocol, stream, tg.cancel_scope)
                tg.start_soon(_app_to_client, client, protocol, stream, tg.cancel_scope)


def _forwarded(scope: Scope, link: PortLink, prefix: str) -> list[tuple[bytes, bytes]]:
    """What the app is told of the original request (and the Host it expects from a local browser)."""
    host = dict(scope.get("headers") or []).get(b"host", b"")
    scheme = scope.get("scheme", "http").replace("ws", "http")
    extra = [(b"host", f"127.0.0.1:{link.port}".encode()), (b"x-forwarded-host", host),
             (b"x-forwarded-proto", scheme.encode())]
    if prefix:
        extra.append((b"x-forwarded-prefix", prefix.encode()))
    return extra


def _rewrite_location(value: bytes, port: int, prefix: str) -> bytes:
    """A redirect the app meant for its own root, or for itself at 127.0.0.1/localhost, under the prefix."""
    text = value.decode("latin-1")
    for local in (f"http://127.0.0.1:{port}", f"http://localhost:{port}"):
        if text.startswith(local):
            text = text[len(local):] or "/"
    if text.startswith("/") and not text.startswith("//") and not text.startswith(prefix + "/"):
        text = prefix + text
    return text.encode("latin-1")


async def _flush(protocol: ClientProtocol, stream: ByteStream) -> None:
    for data in protocol.data_to_send():
        if data:
            await stream.send(data)
        else:  # the protocol wants the connection half-closed
            await stream.send_eof()


async def _handshake(protocol: ClientProtocol, stream: ByteStream) -> WsResponse | None:
    with anyio.move_on_after(30):
        while True:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                return None
            protocol.receive_data(data)
            for event in protocol.events_received():
                if isinstance(event, WsResponse):
                    return event
    return None


async def _client_to_app(client: WebSocket, protocol: ClientProtocol, stream: ByteStream, scope: anyio.CancelScope) -> None:
    try:
        while True:
            message = await client.receive()
            if message["type"] == "websocket.disconnect":
                protocol.send_close(message.get("code", 1000))
                await _flush(protocol, stream)
                break
            if message.get("bytes") is not None:
                protocol.send_binary(message["bytes"])
            else:
                protocol.send_text((message.get("text") or "").encode())
            await _flush(protocol, stream)
    except (WebSocketDisconnect, anyio.BrokenResourceError, anyio.ClosedResourceError):
        pass
    scope.cancel()


async def _app_to_client(client: WebSocket, protocol: ClientProtocol, stream: ByteStream, scope: anyio.CancelScope) -> None:
    parts: list[bytes] = []
    kind = Opcode.TEXT
    code, reason = 1000, ""
    try:
        while True:
            try:
                data = await stream.receive()
            except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
                protocol.receive_eof()
                code = 1006 if protocol.close_code is None else protocol.close_code
                break
            protocol.receive_data(data)
            await _flush(protocol, stream)  # pongs, and the answer to a close
            for frame in protocol.events_received():
                if not isinstance(frame, Frame):
                    continue
                if frame.opcode in (Opcode.TEXT, Opcode.BINARY):
                    kind, parts = frame.opcode, [frame.data]
                elif frame.opcode == Opcode.CONT:
                    parts.append(frame.data)
                elif frame.opcode == Opcode.CLOSE:
                    code, reason = protocol.close_rcvd.code if protocol.close_rcvd else 1000, \
                        protocol.close_rcvd.reason if protocol.close_rcvd else ""
                    raise _Closed
                else:
                    continue
                if frame.fin and frame.opcode != Opcode.CLOSE:
                    payload = b"".join(parts)
                    if kind == Opcode.TEXT:
                        await client.send_text(payload.decode("utf-8", errors="replace"))
                    else:
                        await client.send_bytes(payload)
    except _Closed:
        pass
    except (WebSocketDisconnect, RuntimeError):
        scope.cancel()
        return
    try:
        await client.close(code=1000 if code in (1005, 1006) else code, reason=reason)
    except RuntimeError:
        pass
    scope.cancel()


class _Closed(Exception):
    """The app closed the WebSocket."""
