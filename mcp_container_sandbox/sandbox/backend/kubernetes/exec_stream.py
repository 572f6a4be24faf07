"""A process in a Pod over the API server's pods/exec WebSocket, as a byte stream.

The kubelet's streaming protocol (``v5.channel.k8s.io``, else ``v4.channel.k8s.io``): every binary
message starts with its channel: 0 stdin, 1 stdout, 2 stderr, 3 the status (JSON, once, at the end),
4 a terminal's size (JSON). v5 adds one message, ``0xFF <channel>``: that channel is closed (the
client's end of stdin: what lets ``cat`` see its end of file); under v4 stdin cannot be closed
without ending the whole session.

``ExecStream`` is an anyio ``ByteStream`` of stdin and stdout (what the sandbox agent's channel
speaks over); stderr is kept, and the exit code is read from the status once stdout ends."""

from __future__ import annotations

import json
import ssl
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlencode

import anyio
from anyio.abc import ByteStream
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from ...errors import SandboxError

PROTOCOLS = ("v5.channel.k8s.io", "v4.channel.k8s.io")
STDIN, STDOUT, STDERR, STATUS, RESIZE, CLOSE = 0, 1, 2, 3, 4, 255
STDERR_KEPT = 64 * 1024


class ExecFailed(SandboxError):
    """The exec session could not be opened, or ended without saying how."""


def exec_path(namespace: str, pod: str, container: str, argv: Sequence[str], stdin: bool = True,
              tty: bool = False) -> str:
    """The API server's path (with its query) of an exec session: one ``command`` per argument."""
    query = [("container", container), *(("command", arg) for arg in argv), ("stdin", str(stdin).lower()),
             ("stdout", "true"), ("stderr", str(not tty).lower()), ("tty", str(tty).lower())]
    return f"/api/v1/namespaces/{namespace}/pods/{pod}/exec?{urlencode(query)}"


def exit_code_of(status: Mapping[str, Any]) -> int | None:
    """The exit code a status message says: 0 for Success, the ExitCode cause of a NonZeroExitCode
    failure; None for a failure that is no exit (the command was not found, the container is gone)."""
    if status.get("status") == "Success":
        return 0
    if status.get("reason") == "NonZeroExitCode":
        for cause in (status.get("details") or {}).get("causes") or ():
            if cause.get("reason") == "ExitCode":
                try:
                    return int(cause.get("message", ""))
                except ValueError:
                    return None
    return None


class ExecStream(ByteStream):
    def __init__(self, socket: ClientConnection) -> None:
        self._socket = socket
        self.protocol = socket.subprotocol or ""
        self.stderr = bytearray()
        self.status: dict[str, Any] | None = None
        self._pending = b""
        self._ended = False

    @classmethod
    async def open(cls, url: str, headers: Mapping[str, str] | None = None, ssl_context: ssl.SSLContext | None = None,
                   protocols: Sequence[str] = PROTOCOLS) -> ExecStream:
        """Open the session at ``url`` (ws:// or wss://, exec_path's path); ExecFailed with the API's
        answer when it is refused."""
        try:
            socket = await connect(url, subprotocols=list(protocols), additional_headers=dict(headers or {}),  # type: ignore[list-item]
                                   ssl=ssl_context if url.startswith("wss:") else None, max_size=None,
                                   open_timeout=30, ping_interval=None)
        except (OSError, TimeoutError) as exc:
            raise ExecFailed(f"could not reach the Kubernetes API for exec ({exc})") from None
        except Exception as exc:  # websockets' InvalidStatus/InvalidHandshake: the API refused the upgrade
            response = getattr(exc, "response", None)
            said = response.body.decode(errors="replace")[:300] if response is not None and response.body else str(exc)
            raise ExecFailed(f"the Kubernetes API refused the exec session: {said}") from None
        if socket.subprotocol not in protocols:
            await socket.close()
            raise ExecFailed(f"the API server speaks none of {', '.join(protocols)} for exec")
        return cls(socket)

    @property
    def exit_code(self) -> int | None:
        return exit_code_of(self.status) if self.status is not None else None

    async def send(self, item: bytes) -> None:
        try:
            await self._socket.send(bytes([STDIN]) + item)
        except ConnectionClosed:
            raise anyio.BrokenResourceError from None

    async def send_eof(self) -> None:
        """The end of stdin (v5 only: under v4 the process's stdin stays open until the session ends)."""
        if self.protocol != PROTOCOLS[0]:
            raise ExecFailed(f"{self.protocol} cannot close stdin alone; the API server must speak {PROTOCOLS[0]}")
        try:
            await self._socket.send(bytes([CLOSE, STDIN]))
        except ConnectionClosed:
            raise anyio.BrokenResourceError from None

    async def resize(self, cols: int, rows: int) -> None:
        try:
            await self._socket.send(bytes([RESIZE]) + json.dumps({"Width": cols, "Height": rows}).encode())
        except ConnectionClosed:
            raise anyio.BrokenResourceError from None

    async def receive(self, max_bytes: int = 65536) -> bytes:
        """Stdout's next bytes; EndOfStream once the session has ended (its status read)."""
        while not self._pending:
            if self._ended:
                raise anyio.EndOfStream
            await self._next_message()
        data, self._pending = self._pending[:max_bytes], self._pending[max_bytes:]
        return data

    async def _next_message(self) -> None:
        try:
            message = await self._socket.recv()
        except ConnectionClosed:
            self._ended = True
            if self.status is None:
                self.status = {"status": "Failure", "reason": "StreamClosed",
                               "message": "the exec stream closed before the process's status came"}
            return
        if isinstance(message, str) or not message:
            return
        channel, payload = message[0], message[1:]
        if channel == STDOUT:
            self._pending += payload
        elif channel == STDERR:
            self.stderr += payload[: max(0, STDERR_KEPT - len(self.stderr))]
        elif channel == STATUS:
            try:
                self.status = json.loads(payload or b"{}")
            except ValueError:
                self.status = {"status": "Failure", "message": payload.decode(errors="replace")}

    async def wait(self) -> int | None:
        """Read to the end (stdout dropped) and return the exit code (None: not an exit; see status)."""
        while not self._ended:
            await self._next_message()
            self._pending = b""
        return self.exit_code

    async def aclose(self) -> None:
        self._ended = True
        await self._socket.close()
