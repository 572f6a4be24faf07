"""A STAND-IN for the kubelet's exec streaming (no kubelet or API server can run on these machines):
a WebSocket server that speaks v5.channel.k8s.io and v4.channel.k8s.io as the kubelet does behind
the API server's pods/exec, and runs the command in a Pod that ``podman kube play`` runs (``podman exec``
into ``<pod>-<container>``). It splits output at odd places (as the kubelet's reads of a pipe fall),
sends the status JSON with the exit code at the end, honours v5's close of stdin, and can cut the
connection without a status (``abrupt_after``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

STDIN, STDOUT, STDERR, STATUS, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
PATH = "/api/v1/namespaces/{namespace}/pods/{pod}/exec"


@dataclass
class KubeletExec:
    pods: set[str]  # the Pods it knows (kube-played ones); another is 404, as the API server answers
    protocols: Sequence[str] = ("v5.channel.k8s.io", "v4.channel.k8s.io")
    abrupt_after: int | None = None  # bytes of stdout after which the connection is cut, no status sent
    seed: int = 7
    sessions: list[dict[str, object]] = field(default_factory=list)
    resizes: list[dict[str, int]] = field(default_factory=list)  # the terminal sizes clients sent

    def _refuse(self, connection: ServerConnection, request: Request) -> Response | None:
        parts = urlsplit(request.path).path.split("/")
        if len(parts) != 8 or parts[1:4] != ["api", "v1", "namespaces"] or parts[7] != "exec":
            return connection.respond(404, "not an exec path\n")
        if parts[6] not in self.pods:
            return connection.respond(404, json.dumps({"kind": "Status", "status": "Failure", "reason": "NotFound",
                                                       "message": f'pods "{parts[6]}" not found', "code": 404}))
        return None

    def _choose(self, connection: ServerConnection, offered: Sequence[str]) -> str | None:
        return next((protocol for protocol in self.protocols if protocol in offered), None)

    async def _session(self, connection: ServerConnection) -> None:
        url = urlsplit(connection.request.path)  # type: ignore[union-attr]

        async def incoming() -> AsyncIterator[bytes]:
            try:
                async for message in connection:
                    if isinstance(message, bytes) and message:
                        yield message
            except ConnectionClosed:
                pass

        async def send(data: bytes) -> None:
            await connection.send(data)

        await self.run(url.path.split("/")[6], parse_qs(url.query), connection.subprotocol or "", send, incoming(),
                       connection.transport.abort, connection.close)

    async def run(self, pod: str, query: dict[str, list[str]], protocol: str, send: Callable[[bytes], Awaitable[None]],
                  incoming: AsyncIterator[bytes], abort: Callable[[], object],
                  close: Callable[[], Awaitable[None]]) -> None:
        """One exec session over any WebSocket: ``send`` a message, ``incoming`` the client's, ``abort`` cuts
        the connection without a word, ``close`` ends it as the kubelet does after the status."""
        argv, container = query["command"], query.get("container", ["sandbox"])[0]
        tty = query.get("tty", ["false"])[0] == "true"
        self.sessions.append({"pod": pod, "argv": argv, "protocol": protocol, "tty": tty})
        process = await asyncio.create_subprocess_exec(
            "podman", "exec", "-i", *(["-t"] if tty else []), f"{pod}-{container}", *argv,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        chunks = random.Random(self.seed)
        sent = 0

        async def pump(stream: asyncio.StreamReader, channel: int) -> None:
            nonlocal sent
            while data := await stream.read(4096):
                while data:  # split where a pipe's reads might fall: anywhere
                    size = chunks.randint(1, 700)
                    piece, data = data[:size], data[size:]
                    try:
                        await send(bytes([channel]) + piece)
                    except Exception:  # the client went: the process goes with it, as under the kubelet
                        process.kill()
                        return
                    if channel == STDOUT:
                        sent += len(piece)
                        if self.abrupt_after is not None and sent >= self.abrupt_after:
                            abort()
                            process.kill()
                            return

        async def feed() -> None:
            assert process.stdin is not None
            try:
                async for message in incoming:
                    if message[0] == STDIN:
                        process.stdin.write(message[1:])
                        await process.stdin.drain()
                    elif message[:2] == bytes([CLOSE, STDIN]) and protocol.startswith("v5"):
                        process.stdin.close()
                    elif message[0] == RESIZE and tty:
                        self.resizes.append(json.loads(message[1:]))
            except (ConnectionError, BrokenPipeError):
                pass
            finally:  # the client went: the process's stdin ends, as the kubelet ends it
                process.stdin.close()
                if not tty:
                    return
                with contextlib.suppress(ProcessLookupError):  # a terminal's shell does not end at its stdin's end
                    process.kill()

        feeding = asyncio.ensure_future(feed())
        assert process.stdout is not None and process.stderr is not None
        await asyncio.gather(pump(process.stdout, STDOUT), pump(process.stderr, STDERR))
        code = await process.wait()
        feeding.cancel()
        if self.abrupt_after is not None and sent >= self.abrupt_after:
            return
        status = {"metadata": {}, "status": "Success"} if code == 0 else {
            "metadata": {}, "status": "Failure", "message": f"command terminated with non-zero exit code: {code}",
            "reason": "NonZeroExitCode", "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        try:
            await send(bytes([STATUS]) + json.dumps(status).encode())
            await close()
        except Exception:  # the client went first (a channel closed from its side)
            pass

    @asynccontextmanager
    async def serving(self) -> AsyncIterator[str]:
        """Listen on loopback; yields the ws:// base URL to put exec paths after."""
        async with serve(self._session, "127.0.0.1", 0, process_request=self._refuse,
                         select_subprotocol=self._choose, max_size=None) as server:
            port = next(iter(server.sockets)).getsockname()[1]
            yield f"ws://127.0.0.1:{port}"
