"""The persistent command channel to one sandbox: a long-lived ``podman exec`` running
``sandbox-agent`` (agent/sandbox-agent.c) inside it, so that a command costs a message
instead of a ``podman`` process. Where the runtime can pass a descriptor into the sandbox
(runc), the messages go over a socket pair straight to the agent; elsewhere (gVisor) over
``podman exec -i``'s stdin and stdout, which a podman process relays. This module knows the
agent's protocol; runtimes.py decides when to use a channel and falls back to one
``podman exec`` per call when it cannot.
"""

from __future__ import annotations

import itertools
import logging
import shlex
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import ByteStream
from anyio.streams.buffered import BufferedByteReceiveStream

from ..backend.netns import SocketBytes
from ..backend.podman_cli import kill_process
from ..errors import ChannelClosed, ChannelRequestFailed, SandboxError

logger = logging.getLogger("mcp_sandbox.channel")

ROOT = Path(__file__).resolve().parents[3]  # the repository (runtime/, sandbox/, the package, it): agent/ and build/
AGENT_SOURCE = ROOT / "agent" / "sandbox-agent.c"


def find_agent_binary(configured: str = "") -> Path | None:
    """The agent binary: SANDBOX_AGENT, else build/sandbox-agent, built now if a compiler is at hand."""
    if configured:
        path = Path(configured)
        return path if path.is_file() else None
    built = ROOT / "build" / "sandbox-agent"
    if built.is_file() and (not AGENT_SOURCE.exists() or built.stat().st_mtime >= AGENT_SOURCE.stat().st_mtime):
        return built
    if AGENT_SOURCE.exists():
        built.parent.mkdir(exist_ok=True)
        for compiler in (["musl-gcc", "-static"], ["gcc", "-static"], ["cc", "-static"]):
            try:
                result = subprocess.run(
                    [*compiler, "-O2", "-o", str(built), str(AGENT_SOURCE)], capture_output=True, timeout=120
                )
            except (OSError, subprocess.TimeoutExpired):
                continue
            if result.returncode == 0:
                logger.info("built %s with %s", built, compiler[0])
                return built
    return None


class ChannelSocket(SocketBytes):
    """The server's end of a channel's socket pair, read with the loop's own sock_recv: a receive
    cancelled just as data arrives is left alone there (anyio 4.16's UNIXSocketStream then sets the
    result of the cancelled future, and asyncio reports InvalidStateError; seen once in CI when a
    test's server stopped). Closing shuts it down first, so a receive under way ends with EOF."""

    async def aclose(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        await anyio.lowlevel.checkpoint()
        self.sock.close()


@dataclass
class Reply:
    done: anyio.Event = field(default_factory=anyio.Event)
    value: Any = None
    error: Exception | None = None

    def resolve(self, value: Any = None, error: Exception | None = None) -> None:
        if not self.done.is_set():
            self.value, self.error = value, error
            self.done.set()

    async def wait(self, timeout: float | None = None) -> Any:
        with anyio.fail_after(timeout):
            await self.done.wait()
        if self.error is not None:
            raise self.error
        return self.value


class AgentChannel:
    """One ``podman exec SANDBOX /run/mcp-sandbox/agent`` and the requests in flight on it.
    ``over_socket``: the host command (backend.exec_argv with pass_fd) hands its stdin to the agent
    as descriptor 3, and the channel is a socket pair; else the process's stdin and stdout. With
    ``open_stream`` there is no host process: the agent's stdin and stdout are a byte stream that
    opens (a Kubernetes exec session, backend/kubernetes/exec_stream.py); ``argv`` only names it."""

    def __init__(self, argv: list[str], spawn_options: dict[str, Any] | None = None, over_socket: bool = False,
                 open_stream: Callable[[], Awaitable[ByteStream]] | None = None) -> None:
        self.argv = argv
        self.spawn_options = spawn_options or {}
        self.over_socket = over_socket
        self.open_stream = open_stream
        self._stream: ByteStream | None = None
        self.closed = False
        self.last_used = time.monotonic()
        self.stderr_tail = b""
        self._process: anyio.abc.Process | None = None
        self._stdout: BufferedByteReceiveStream | None = None
        self._writer: anyio.abc.ByteSendStream | None = None
        self._socket: ChannelSocket | None = None
        self._send_lock = anyio.Lock()
        self._requests = itertools.count(1)
        self._replies: dict[str, Reply] = {}
        self._started: dict[str, Reply] = {}
        self._exits: dict[str, Reply] = {}

    async def open(self, spawn: Callable[..., None], timeout: float = 15) -> None:
        """Start the agent and wait for its ``ready`` line; ``spawn`` runs the reader task."""
        logger.debug("open %s", shlex.join(self.argv))
        if self.open_stream is not None:
            try:
                self._stream = await self.open_stream()
            except SandboxError as exc:
                raise ChannelClosed(str(exc)) from None
            self._writer, received = self._stream, self._stream
        elif self.over_socket:
            ours, theirs = socket.socketpair()
            try:
                self._process = await anyio.open_process(
                    self.argv, stdin=theirs.fileno(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                    **self.spawn_options)
                ours.setblocking(False)
                self._socket = ChannelSocket(ours)
            except BaseException:
                ours.close()
                await kill_process(self._process)
                raise
            finally:
                theirs.close()  # the agent's (and podman's) copies stay: EOF comes when they are all gone
            self._writer, received = self._socket, self._socket
        else:
            self._process = await anyio.open_process(
                self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **self.spawn_options
            )
            assert self._process.stdin is not None and self._process.stdout is not None
            self._writer, received = self._process.stdin, self._process.stdout
        self._stdout = BufferedByteReceiveStream(received)
        try:
            with anyio.fail_after(timeout):
                line = await self._stdout.receive_until(b"\n", 1024)
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.DelimiterNotFound, TimeoutError, anyio.BrokenResourceError):
            line = b""
        except BaseException:  # cancelled while opening: leave no process behind
            await self.close()
            raise
        if not line.startswith(b"ready"):
            with anyio.move_on_after(2):
                await self._collect_stderr()
            await self.close()
            raise ChannelClosed(self.stderr_tail.decode(errors="replace").strip() or "the agent did not start")
        spawn(self._read_forever)
        spawn(self._collect_stderr)

    async def _collect_stderr(self) -> None:
        process = self._process
        if process is None or process.stderr is None:
            self.stderr_tail = bytes(getattr(self._stream, "stderr", b""))[-4096:]  # what an exec stream kept
            return
        try:
            async for chunk in process.stderr:
                self.stderr_tail = (self.stderr_tail + chunk)[-4096:]
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            pass

    async def _read_forever(self) -> None:
        assert self._stdout is not None
        try:
            while True:
                header = (await self._stdout.receive_until(b"\n", 4096)).decode(errors="replace").split()
                if not header:
                    continue
                kind = header[0]
                if kind == "started" and len(header) == 3:
                    self._pop(self._started, header[1]).resolve(int(header[2]))
                elif kind == "failed" and len(header) == 3:
                    self._pop(self._started, header[1]).resolve(error=ChannelRequestFailed(header[2]))
                elif kind in ("exit", "report", "list", "read", "ls") and len(header) == 3:
                    size = int(header[2])
                    payload = await self._stdout.receive_exactly(size) if size else b""
                    table = self._exits if kind == "exit" else self._replies
                    self._pop(table, header[1]).resolve(payload)
                elif kind in ("link", "stdin", "signal") and len(header) >= 3:
                    self._pop(self._replies, header[1]).resolve(" ".join(header[2:]))
                elif kind == "put" and len(header) >= 3:
                    reply = self._pop(self._replies, header[1])
                    if header[2] == "ok":
                        reply.resolve(None)
                    else:
                        reply.resolve(error=ChannelRequestFailed(" ".join(header[3:]) or "refused"))
                elif kind == "pong" and len(header) == 2:
                    self._pop(self._replies, header[1]).resolve(None)
                else:
                    logger.warning("unexpected line from the sandbox agent: %r", header[:4])
        except (anyio.EndOfStream, anyio.IncompleteRead, anyio.ClosedResourceError, anyio.BrokenResourceError,
                anyio.DelimiterNotFound, ValueError):
            pass
        finally:
            self._fail_all()

    @staticmethod
    def _pop(table: dict[str, Reply], key: str) -> Reply:
        return table.pop(key, None) or Reply()

    def _fail_all(self) -> None:
        self.closed = True
        for table in (self._replies, self._started, self._exits):
            for reply in table.values():
                reply.resolve(error=ChannelClosed("the command channel closed"))
            table.clear()

    async def _send(self, data: bytes) -> None:
        if self.closed or self._writer is None:
            raise ChannelClosed("the command channel is closed")
        self.last_used = time.monotonic()
        try:
            async with self._send_lock:
                await self._writer.send(data)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as exc:
            self._fail_all()
            raise ChannelClosed(f"the command channel broke: {exc}") from None

    async def _request(self, header: str, payload: bytes = b"", timeout: float = 30) -> Any:
        request_id = f"r{next(self._requests)}"
        reply = self._replies[request_id] = Reply()
        await self._send(header.format(id=request_id).encode() + b"\n" + payload)
        try:
            return await reply.wait(timeout)
        except TimeoutError:
            self._replies.pop(request_id, None)
            raise ChannelClosed(f"the sandbox agent did not answer within {timeout:g} s") from None

    def expect_exit(self, command_id: str) -> Reply:
        """The event of a command's exit, shared by everyone waiting for it. Register before
        starting the command (or before asking for its report), so no exit slips between."""
        reply = self._exits.get(command_id)
        if reply is None:
            reply = self._exits[command_id] = Reply()
        return reply

    def awaits_exit(self, command_id: str) -> bool:
        """Someone registered for this command's exit (and no exit came yet)."""
        return command_id in self._exits

    def forget_exit(self, command_id: str) -> None:
        self._exits.pop(command_id, None)

    async def run(self, command_id: str, timeout_seconds: int, started_ms: int, cap: int, command: bytes,
                  flags: int = 0) -> int:
        """Start a command; returns its pid in the sandbox once it runs. flags: records.STDIN_* bits."""
        started = self._started[command_id] = Reply()
        await self._send(
            f"run {command_id} {timeout_seconds} {started_ms} {cap} {len(command)} {flags}\n".encode() + command)
        try:
            return await started.wait(30)
        except TimeoutError:
            raise ChannelClosed("the sandbox agent did not start the command within 30 s") from None

    async def report(self, command_id: str, cap: int, stdout_offset: int = 0, stderr_offset: int = 0) -> bytes:
        return await self._request(f"report {{id}} {command_id} {cap} {stdout_offset} {stderr_offset}")

    async def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        encoded = path.encode("utf-8", errors="surrogatepass")
        await self._request(f"put {{id}} {mode:o} {len(encoded)} {len(data)}", encoded + data, timeout=120)

    async def list_commands(self) -> bytes:
        return await self._request("list {id}")

    async def link(self, path: str, max_size: int, file_id: str) -> str:
        """The agent's verdict on sharing a path, as link_file in the shell library prints it."""
        encoded = path.encode("utf-8", errors="surrogatepass")
        return await self._request(f"link {{id}} {max_size} {file_id} {len(encoded)}", encoded)

    async def write_stdin(self, command_id: str, data: bytes, close: bool) -> str:
        """Write to a command's kept-open stdin: "ok <written> <tty> <stdout size> <stderr size>" or "error <why>" (write_stdin in command_records.py)."""
        return await self._request(f"stdin {{id}} {command_id} {int(close)} {len(data)}", data)

    async def signal(self, command_id: str, signum: int) -> str:
        """Signal a command's process group: "ok" or "error <why>"."""
        return await self._request(f"signal {{id}} {command_id} {signum}")

    async def read_file(self, path: str, offset: int, length: int) -> bytes:
        encoded = path.encode("utf-8", errors="surrogatepass")
        return await self._request(f"read {{id}} {offset} {length} {len(encoded)}", encoded, timeout=60)

    async def list_files(self, path: str, depth: int, max_entries: int) -> bytes:
        encoded = path.encode("utf-8", errors="surrogatepass")
        return await self._request(f"ls {{id}} {depth} {max_entries} {len(encoded)}", encoded, timeout=60)

    async def ping(self) -> None:
        await self._request("ping {id}", timeout=10)

    async def close(self) -> None:
        """Close the channel; the agent finishes the commands it started and records them."""
        self._fail_all()
        process, self._process = self._process, None
        held, self._socket, self._writer = self._socket, None, None
        stream, self._stream = self._stream, None
        for closing in (held, stream):
            if closing is not None:  # the agent reads its end of input: it stops taking requests
                with anyio.CancelScope(shield=True):  # a cancelled caller must still reach the kill below
                    await closing.aclose()
        await kill_process(process)
