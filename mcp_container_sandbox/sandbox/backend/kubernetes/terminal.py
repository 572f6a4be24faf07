"""A terminal in a sandbox's Pod: an exec session with ``tty=true`` (the kubelet gives the shell a
pseudo-terminal in the Pod), its size sent on the resize channel. The same face as the Podman
backend's ``Terminal`` (../terminal.py): read, write, resize, close."""

from __future__ import annotations

import anyio

from .exec_stream import ExecStream


class PodTerminal:
    def __init__(self, session: ExecStream) -> None:
        self.session = session
        self.closed = False

    async def read(self) -> bytes:
        """What the terminal shows next; b"" once the session has ended."""
        if self.closed:
            return b""
        try:
            return await self.session.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, anyio.ClosedResourceError):
            return b""

    async def write(self, data: bytes) -> None:
        if not self.closed and data:
            try:
                await self.session.send(data)
            except anyio.BrokenResourceError:
                pass

    async def resize(self, cols: int, rows: int) -> None:
        if not self.closed:
            try:
                await self.session.resize(cols, rows)
            except anyio.BrokenResourceError:
                pass

    async def close(self) -> None:
        """End the session: the API server ends the shell with it."""
        if not self.closed:
            self.closed = True
            await self.session.aclose()
