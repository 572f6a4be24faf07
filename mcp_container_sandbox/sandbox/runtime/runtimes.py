"""What runs inside a sandbox, and how the server asks it: two runtimes behind one interface.

``AgentRuntime`` sends requests over the sandbox's persistent channel to sandbox-agent (a message
each); ``ExecRuntime`` runs one ``podman exec`` of the in-sandbox shell library per request. Both
read and write the same records (command_command_records.py), so either can answer for the other. AgentChannels
keeps the open channels (one ``podman exec -i`` each). ``Runtimes.ask`` is the one place that
chooses between them: the agent when its channel is open, ``podman exec`` otherwise and whenever
a channel closes in the middle of a request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import anyio

from ..backend.abstract import Backend
from ..backend.podman_cli import PodmanResult, is_missing_container, is_not_running
from ..errors import (
    FORK_AT_PROCESS_LIMIT,
    FORK_RETRY_SECONDS,
    ChannelClosed,
    ChannelRequestFailed,
    FileNotWritable,
    PodmanError,
    SandboxError,
    SandboxNotFound,
    SandboxStopped,
    machinery_failure,
    write_refusal,
)
from ..model import Sandbox
from ..paths import AGENT_PATH, LIB_PATH
from .channel import AgentChannel, Reply
from .command_records import NO_TERMINAL, parse_report
from .helpers import BOOTSTRAP, INSTALL_HELPERS, LIB_MISSING, RECORDS_UNWRITABLE

T = TypeVar("T")

logger = logging.getLogger("mcp_sandbox.runtime")

LIST_LIMIT_BYTES = 4 * 1024 * 1024
# How often the exec runtime looks at a command it did not start (it has nobody to announce its end).
EXEC_POLL_SECONDS = 0.5
# How long a write to a command's stdin over podman exec may wait for the command to take it in.
STDIN_WRITE_SECONDS = 30
NO_TERMINAL_MESSAGE = (
    "tty=true needs the sandbox agent (sandbox-agent, see SANDBOX_AGENT), which this server does not have, "
    "and a shell alone cannot make a terminal. Run the command without tty, or give the server the agent."
)


class Runtime(Protocol):
    """Requests a sandbox answers about its commands and files."""

    async def report(self, sandbox: Sandbox, command_id: str, cap: int, stdout_offset: int, stderr_offset: int) -> bytes:
        """A command's framed report (records.parse_report), at most cap bytes of each stream from the offsets."""

    async def list_commands(self, sandbox: Sandbox) -> bytes:
        """The sandbox's commands, as records.parse_command_list reads them."""

    async def put(self, sandbox: Sandbox, path: str, data: bytes, mode: int) -> None:
        """Write a file, parents made; FileNotWritable says why not."""

    async def link(self, sandbox: Sandbox, path: str, max_size: int, file_id: str) -> str:
        """Record a file link; the verdict line of link_file (command_command_records.py)."""

    async def start(self, sandbox: Sandbox, command_id: str, command: bytes, timeout_seconds: int, started_ms: int,
                    cap: int, flags: int = 0) -> object:
        """Start a command (flags: records.STDIN_*); returns a handle for ``wait`` (the runtime's own business)."""

    async def write_stdin(self, sandbox: Sandbox, command_id: str, data: bytes, close: bool) -> str:
        """Write to a command's kept-open stdin: "ok <written> <on a terminal: 0|1> <stdout size> <stderr size>" or "error <why>"."""

    async def signal(self, sandbox: Sandbox, command_id: str, signum: int) -> str:
        """Signal a command's process group: "ok" or "error <why>"."""

    async def read_file(self, sandbox: Sandbox, path: str, offset: int, length: int) -> bytes:
        """A frame of read_file (command_command_records.py): "ok <size> <n>" and n bytes, or "error <why>"."""

    async def list_files(self, sandbox: Sandbox, path: str, depth: int, max_entries: int) -> bytes:
        """A frame of list_files (command_command_records.py): "ok" and a line per entry, or "error <why>"."""

    async def wait(self, sandbox: Sandbox, command_id: str, seconds: float, cap: int, started: object = None) -> bytes | None:
        """The command's report if it ends within seconds (or has ended), else None; ``started`` is
        what ``start`` returned when this runtime started it."""

    async def status(self, sandbox: Sandbox) -> str:
        """The sandbox's state: "running", "exited", ..."""


class AgentRuntime:
    """Requests over one sandbox's open channel to sandbox-agent."""

    def __init__(self, channel: AgentChannel) -> None:
        self.channel = channel

    async def start(self, sandbox: Sandbox, command_id: str, command: bytes, timeout_seconds: int, started_ms: int,
                    cap: int, flags: int = 0) -> object:
        exit_reply = self.channel.expect_exit(command_id)  # registered first: no exit slips by
        # A sandbox at its process limit (a fork bomb dying out) cannot fork the command yet; it
        # did not start, so trying again a little later is safe.
        deadline = time.monotonic() + FORK_RETRY_SECONDS
        while True:
            try:
                await self.channel.run(command_id, int(timeout_seconds), started_ms, cap, command, flags)
                return exit_reply
            except ChannelRequestFailed as exc:
                if str(exc) == FORK_AT_PROCESS_LIMIT and time.monotonic() < deadline:
                    await anyio.sleep(0.2)
                    continue
                self.channel.forget_exit(command_id)
                raise machinery_failure(str(exc)) from None

    async def wait(self, sandbox: Sandbox, command_id: str, seconds: float, cap: int, started: object = None) -> bytes | None:
        # Registered when this channel started the command, or registered now.
        exit_reply, fresh = (started if isinstance(started, Reply) else None), False
        if exit_reply is None:
            fresh = not self.channel.awaits_exit(command_id)
            exit_reply = self.channel.expect_exit(command_id)
        if fresh:
            # Asked after registering, so an exit just before cannot be missed. A command started
            # before a restart has nobody to announce its end: the caller asks again later.
            report = await self.channel.report(command_id, cap)
            state = parse_report(command_id, report)
            if state is None or state.status != "running":
                self.channel.forget_exit(command_id)
                exit_reply.resolve(report)  # for anyone who registered meanwhile
                return report
        with anyio.move_on_after(max(0.0, seconds)):
            return await exit_reply.wait()
        return None

    async def status(self, sandbox: Sandbox) -> str:
        await self.channel.ping()  # the agent answers: the sandbox runs
        return "running"

    async def report(self, sandbox: Sandbox, command_id: str, cap: int, stdout_offset: int, stderr_offset: int) -> bytes:
        return await self.channel.report(command_id, cap, stdout_offset, stderr_offset)

    async def list_commands(self, sandbox: Sandbox) -> bytes:
        return await self.channel.list_commands()

    async def put(self, sandbox: Sandbox, path: str, data: bytes, mode: int) -> None:
        try:
            await self.channel.put(path, data, mode)
        except ChannelRequestFailed as exc:
            raise FileNotWritable(write_refusal(path, str(exc))) from None

    async def link(self, sandbox: Sandbox, path: str, max_size: int, file_id: str) -> str:
        return await self.channel.link(path, max_size, file_id)

    async def write_stdin(self, sandbox: Sandbox, command_id: str, data: bytes, close: bool) -> str:
        return await self.channel.write_stdin(command_id, data, close)

    async def signal(self, sandbox: Sandbox, command_id: str, signum: int) -> str:
        return await self.channel.signal(command_id, signum)

    async def read_file(self, sandbox: Sandbox, path: str, offset: int, length: int) -> bytes:
        return await self.channel.read_file(path, offset, length)

    async def list_files(self, sandbox: Sandbox, path: str, depth: int, max_entries: int) -> bytes:
        return await self.channel.list_files(path, depth, max_entries)


@dataclass
class _Launch:
    """A command whose ``podman exec`` is still open: it runs the command and prints its report."""

    done: anyio.Event = field(default_factory=anyio.Event)
    report: bytes | None = None
    error: SandboxError | None = None


class ExecRuntime:
    """One ``podman exec`` of the in-sandbox shell library per request (sandbox-lib.sh)."""

    def __init__(
        self, backend: Backend, helpers: Callable[[], bytes], removed: Callable[[str], None],
        spawn: Callable[..., None], never_started: Callable[[str, str], None],
    ) -> None:
        self.backend = backend
        self._helpers = helpers  # the tar of what every sandbox gets in STATE_DIR
        self._removed = removed  # tells the manager a sandbox's container is gone
        self._spawn = spawn
        self._never_started = never_started  # a launch failed: the command may never have run
        self._launching: dict[tuple[str, str], _Launch] = {}

    async def start(self, sandbox: Sandbox, command_id: str, command: bytes, timeout_seconds: int, started_ms: int,
                    cap: int, flags: int = 0) -> object:
        launch = self._launching[(sandbox.container_id, command_id)] = _Launch()
        self._spawn(self._launch, sandbox, command_id, command, timeout_seconds, started_ms, cap, flags, launch)
        return launch

    async def _launch(self, sandbox: Sandbox, command_id: str, command: bytes, timeout_seconds: int,
                      started_ms: int, cap: int, flags: int, launch: _Launch) -> None:
        try:
            result = await self.call(
                sandbox, "run", command_id, str(int(timeout_seconds)), str(cap), str(started_ms), str(flags),
                stdin=command, stdout_limit=2 * cap + 4096, timeout=timeout_seconds + 120,
            )
            if parse_report(command_id, result.stdout) is None:
                raise SandboxError(f"Command {command_id} left no record in the sandbox; run it again.")
            launch.report = result.stdout
        except (SandboxError, ValueError) as exc:
            if sandbox.destroying:
                launch.error = SandboxNotFound(sandbox.container_id, " (it was destroyed while the command ran)")
                return
            # podman exec itself failed: the command may never have started, so claim nothing of it.
            self._never_started(sandbox.container_id, command_id)
            launch.error = exc if isinstance(exc, SandboxError) else SandboxError(
                f"Could not read the result of command {command_id}: {exc}. Check it with check_container."
            )
        finally:
            launch.done.set()
            self._launching.pop((sandbox.container_id, command_id), None)

    def launching(self, container_id: str, command_id: str) -> bool:
        """The command's ``podman exec`` is still starting it (its pid file may not be written yet)."""
        launch = self._launching.get((container_id, command_id))
        return launch is not None and not launch.done.is_set()

    async def wait(self, sandbox: Sandbox, command_id: str, seconds: float, cap: int, started: object = None) -> bytes | None:
        if not isinstance(started, _Launch):
            await anyio.sleep(min(max(0.0, seconds), EXEC_POLL_SECONDS))
            return None
        with anyio.move_on_after(max(0.0, seconds)):
            await started.done.wait()
        if started.error is not None:
            raise started.error
        return started.report

    async def status(self, sandbox: Sandbox) -> str:
        result = await self.backend.status(sandbox.name)
        if result.exit_code != 0:
            self.raise_failure(sandbox, result)
        return result.stdout.decode(errors="replace").strip() or "unknown"

    async def call(
        self, sandbox: Sandbox, function: str, *args: str, stdin: bytes | None = None,
        stdout_limit: int, timeout: float = 60,
    ) -> PodmanResult:
        """Run a function of the in-sandbox library; a vanished sandbox becomes SandboxNotFound."""
        for attempt in range(2):
            result = await self.backend.exec(sandbox.name, "/bin/sh", "-c", BOOTSTRAP, "mcp-sandbox", function, *args,
                                             stdin=stdin, stdout_limit=stdout_limit, timeout=timeout)
            if result.exit_code == LIB_MISSING and attempt == 0:
                await self.install_helpers(sandbox)
                continue
            if result.exit_code == RECORDS_UNWRITABLE and not is_missing_container(result.stderr):
                raise machinery_failure(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "")
            if result.exit_code == NO_TERMINAL:
                raise SandboxError(NO_TERMINAL_MESSAGE)
            if result.exit_code != 0:
                self.raise_failure(sandbox, result)
            return result
        raise SandboxError(f"The sandbox's helper library at {LIB_PATH} could not be installed.")  # pragma: no cover

    async def install_helpers(self, sandbox: Sandbox) -> None:
        """Put the shell library and the agent into the sandbox's STATE_DIR."""
        result = await self.backend.exec(sandbox.name, "/bin/sh", "-c", INSTALL_HELPERS, stdin=self._helpers(), timeout=60)
        if result.exit_code != 0:
            self.raise_failure(sandbox, result)

    def raise_failure(self, sandbox: Sandbox, result: PodmanResult) -> None:
        """A failed ``podman exec``, as the error the client should hear."""
        if is_missing_container(result.stderr):
            self._removed(sandbox.container_id)
            raise SandboxNotFound(sandbox.container_id, " (it was removed outside this server)")
        if is_not_running(result.stderr):
            raise SandboxStopped(
                f"Sandbox {sandbox.container_id} has stopped (its main process exited), so it cannot run "
                "commands. Destroy it with destroy_container and create a new one."
            )
        raise PodmanError(result.argv, result.exit_code, result.stderr)

    async def report(self, sandbox: Sandbox, command_id: str, cap: int, stdout_offset: int, stderr_offset: int) -> bytes:
        result = await self.call(
            sandbox, "read_command", command_id, str(cap), str(stdout_offset), str(stderr_offset),
            stdout_limit=2 * cap + 4096,
        )
        return result.stdout

    async def list_commands(self, sandbox: Sandbox) -> bytes:
        return (await self.call(sandbox, "list_commands", stdout_limit=LIST_LIMIT_BYTES)).stdout

    async def put(self, sandbox: Sandbox, path: str, data: bytes, mode: int) -> None:
        result = await self.backend.exec(
            sandbox.name, "/bin/sh", "-c",
            'mkdir -p "$(dirname "$1")" && [ ! -d "$1" ] && cat > "$1" && chmod "$2" "$1"', "mcp-sandbox",
            path, f"{mode:o}", stdin=data, timeout=120,
        )
        if result.exit_code != 0:
            if is_missing_container(result.stderr) or is_not_running(result.stderr):
                self.raise_failure(sandbox, result)
            said = result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "refused"
            raise FileNotWritable(write_refusal(path, said))

    async def link(self, sandbox: Sandbox, path: str, max_size: int, file_id: str) -> str:
        result = await self.call(sandbox, "link_file", path, str(max_size), file_id, stdout_limit=4096)
        return result.stdout.decode(errors="replace")

    async def write_stdin(self, sandbox: Sandbox, command_id: str, data: bytes, close: bool) -> str:
        result = await self.call(sandbox, "write_stdin", command_id, str(int(close)), str(len(data)), stdin=data,
                                 stdout_limit=4096, timeout=STDIN_WRITE_SECONDS)
        return result.stdout.decode(errors="replace")

    async def signal(self, sandbox: Sandbox, command_id: str, signum: int) -> str:
        result = await self.call(sandbox, "signal_command", command_id, str(signum), stdout_limit=4096)
        return result.stdout.decode(errors="replace")

    async def read_file(self, sandbox: Sandbox, path: str, offset: int, length: int) -> bytes:
        result = await self.call(sandbox, "read_file", path, str(offset), str(length), stdout_limit=length + 4096)
        return result.stdout

    async def list_files(self, sandbox: Sandbox, path: str, depth: int, max_entries: int) -> bytes:
        result = await self.call(sandbox, "list_files", path, str(depth), str(max_entries),
                                 stdout_limit=LIST_LIMIT_BYTES)
        return result.stdout


class AgentChannels:
    """The open channels to sandbox-agents, one per sandbox, opened on demand and kept few.

    Each channel is a ``podman exec -i`` process of its own (about 35 MB): at most
    ``max_channels`` stay open, the least recently used closing first, and one unused for
    ``idle_seconds`` closes (it reopens on the next request); those of the warm pool's
    sandboxes are kept besides.
    """

    def __init__(
        self, backend: Backend, exec_runtime: ExecRuntime, spawn_options: Callable[[], dict[str, Any]],
        spawn: Callable[..., None], output_file_max_bytes: int, max_channels: int, idle_seconds: float,
    ) -> None:
        self.backend, self.exec_runtime = backend, exec_runtime
        self._spawn_options, self._spawn = spawn_options, spawn
        self._output_file_max_bytes = output_file_max_bytes
        self.max_channels, self.idle_seconds = max_channels, idle_seconds
        self.enabled = False  # set once the server has an agent binary to put into sandboxes
        self.pass_fd = True  # channels over a socket passed into the sandbox, until the runtime refuses one
        self._channels: dict[str, AgentChannel] = {}
        self._locks: dict[str, anyio.Lock] = {}
        # Whether a sandbox waits in the warm pool: its channel stays open, idle or not, and is not
        # counted in max_channels (the pool's own bound, SANDBOX_POOL_MAX, keeps those few).
        self.pooled: Callable[[str], bool] = lambda container_id: False

    def open_one(self, container_id: str) -> AgentChannel | None:
        """The sandbox's channel if one is open now (nothing is opened)."""
        channel = self._channels.get(container_id)
        return channel if channel is not None and not channel.closed else None

    async def get(self, sandbox: Sandbox) -> AgentChannel | None:
        """The sandbox's open channel, opened on demand; None when there is no agent or it cannot start."""
        if not self.enabled:
            return None
        channel = self.open_one(sandbox.container_id)
        if channel is not None:
            return channel
        async with self._locks.setdefault(sandbox.container_id, anyio.Lock()):
            channel = self.open_one(sandbox.container_id)
            if channel is not None:
                return channel
            over_socket, installed = self.pass_fd and self.backend.host_processes, False
            while True:
                channel = self._channel(sandbox, over_socket)
                try:
                    await channel.open(self._spawn)
                    break
                except ChannelClosed as exc:
                    reason = str(exc)
                    if is_missing_container(reason) or is_not_running(reason):
                        self.exec_runtime.raise_failure(sandbox, PodmanResult(channel.argv, 1, b"", reason))
                    if not installed and ("no such file" in reason.lower() or "not found" in reason.lower()):
                        await self.exec_runtime.install_helpers(sandbox)
                        installed = True
                        continue
                    if over_socket:  # e.g. gVisor's runsc: "flag provided but not defined: -preserve-fds"
                        over_socket = False
                        if "preserve-fds" in reason:
                            self.pass_fd = False
                            logger.info("the runtime cannot pass a descriptor into sandboxes (%s); command "
                                        "channels go through podman exec's stdin and stdout", reason.splitlines()[0])
                        continue
                    logger.warning("no command channel to sandbox %s (%s); using podman exec", sandbox.container_id, reason)
                    return None
            if not self.enabled:  # the server stopped while it opened: it must not outlive the stop
                await channel.close()
                return None
            self._channels[sandbox.container_id] = channel
        await self._limit()
        return channel

    def _channel(self, sandbox: Sandbox, over_socket: bool) -> AgentChannel:
        argv = [AGENT_PATH, str(self._output_file_max_bytes)]
        if not self.backend.host_processes:  # an exec session of the backend's, no process on this host
            return AgentChannel(argv, open_stream=lambda: self.backend.open_stream(sandbox.name, *argv))
        return AgentChannel(self.backend.exec_argv(sandbox.name, *argv, *(["fd3"] if over_socket else []),
                                                   interactive=not over_socket, pass_fd=over_socket),
                            self._spawn_options(), over_socket=over_socket)

    async def _limit(self) -> None:
        counted = [(cid, channel) for cid, channel in self._channels.items() if not self.pooled(cid)]
        excess = len(counted) - self.max_channels
        if excess > 0:
            oldest = sorted(counted, key=lambda item: item[1].last_used)[:excess]
            for container_id, _ in oldest:
                await self.close(container_id)

    async def close_idle(self) -> None:
        idle_before = time.monotonic() - self.idle_seconds
        for container_id, channel in list(self._channels.items()):
            if channel.closed or (channel.last_used < idle_before and not self.pooled(container_id)):
                await self.close(container_id)

    async def close(self, container_id: str) -> None:
        channel = self._channels.pop(container_id, None)
        if channel is not None:
            await channel.close()

    async def close_all(self) -> None:
        """At the server's stop: every channel closes, and none opens from now on (until start)."""
        self.enabled = False
        for container_id in list(self._channels):
            await self.close(container_id)

    def detach(self, container_id: str) -> AgentChannel | None:
        """Take the sandbox's channel out of use without closing it (its caller closes it)."""
        self._locks.pop(container_id, None)
        return self._channels.pop(container_id, None)

    def forget(self, container_id: str) -> None:
        """The sandbox is gone: its channel closes in the background."""
        channel = self._channels.pop(container_id, None)
        if channel is not None:
            self._spawn(channel.close)
        self._locks.pop(container_id, None)


class Runtimes:
    """The one place that chooses a sandbox's runtime for each request."""

    def __init__(self, channels: AgentChannels, exec_runtime: ExecRuntime) -> None:
        self.channels, self.exec_runtime = channels, exec_runtime

    async def ask(
        self, sandbox: Sandbox, ask: Callable[[Runtime], Awaitable[T]], *, open_channel: bool = True,
        after_close: Callable[[ExecRuntime], Awaitable[T]] | None = None,
    ) -> T:
        """Ask the sandbox through its agent's channel when one is open (opened on demand unless
        open_channel is False), else through podman exec. A channel that closes during the request
        hands it to podman exec: the same request (requests are idempotent) or, for one that is
        not (starting a command), ``after_close``."""
        if open_channel:
            channel = await self.channels.get(sandbox)
        else:
            channel = self.channels.open_one(sandbox.container_id)
        if channel is not None:
            try:
                return await ask(AgentRuntime(channel))
            except ChannelClosed as exc:
                if sandbox.destroying:
                    raise SandboxNotFound(sandbox.container_id, " (it was destroyed meanwhile)") from None
                logger.warning("channel to sandbox %s closed (%s); going on with podman exec", sandbox.container_id, exc)
                if after_close is not None:
                    return await after_close(self.exec_runtime)
        return await ask(self.exec_runtime)
