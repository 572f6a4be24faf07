"""A terminal in a sandbox: ``podman exec -it`` of a shell, on a pseudo-terminal of the host's, so that
a person's keys, Ctrl-C and window size reach the sandbox as a real terminal's would. It is a session of
its own (never an agent's command), inside the sandbox's cgroup and limits like any exec."""

from __future__ import annotations

import contextlib
import fcntl
import os
import pty
import signal
import struct
import termios
import tty
from collections.abc import Sequence
from typing import Any

import anyio
from anyio.abc import Process

READ_BYTES = 65536
SHELL = ("/bin/sh", "-c", 'if command -v bash >/dev/null; then exec bash -l; else exec sh -l; fi')


def _set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


class Terminal:
    """One terminal session: bytes in (keys), bytes out (what the sandbox's terminal shows), a size."""

    def __init__(self, process: Process, master: int) -> None:
        self.process, self._master = process, master
        self.closed = False

    @classmethod
    async def open(cls, exec_argv: Sequence[str], spawn_options: dict[str, Any], cols: int, rows: int) -> Terminal:
        """``exec_argv``: podman exec -it NAME, to which the shell is added."""
        master, slave = pty.openpty()
        try:
            _set_size(slave, cols, rows)
            tty.setraw(slave)  # the host's side never echoes or edits: keys typed early wait for the sandbox's
            os.set_blocking(master, False)
            process = await anyio.open_process([*exec_argv, *SHELL], stdin=slave, stdout=slave, stderr=slave,
                                               start_new_session=True, **spawn_options)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)  # podman holds its own copies: the master reads EOF (EIO) when it exits
        return cls(process, master)

    async def read(self) -> bytes:
        """What the terminal shows next; b"" once the session has ended."""
        while not self.closed:
            try:
                return os.read(self._master, READ_BYTES)
            except BlockingIOError:
                await anyio.wait_readable(self._master)
            except OSError:  # EIO: every copy of the other side is closed, the shell has exited
                return b""
        return b""

    async def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view and not self.closed:
            try:
                view = view[os.write(self._master, view):]
            except BlockingIOError:
                await anyio.wait_writable(self._master)

    async def resize(self, cols: int, rows: int) -> None:
        """A new window size: set on the terminal, and podman told (it passes it into the sandbox)."""
        if self.closed:
            return
        _set_size(self._master, cols, rows)
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(signal.SIGWINCH)

    async def close(self) -> None:
        """End the session: podman's exec ends, and with it the shell in the sandbox."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(ProcessLookupError):
            self.process.terminate()
        with anyio.move_on_after(5, shield=True):
            await self.process.wait()
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            with anyio.CancelScope(shield=True):
                await self.process.wait()
        os.close(self._master)
