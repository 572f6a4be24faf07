"""What runs inside a sandbox, and how the server asks it: two runtimes behind one interface.

``AgentRuntime`` sends requests over the sandbox's persistent channel to sandbox-agent (a message
each); ``ExecRuntime`` runs one ``podman exec`` of the in-sandbox shell library per request. Both
read and write the same records (records.py), so either can answer for the other. AgentChannels
keeps the open channels (one ``podman exec -i`` each). The manager
chooses between them in one place (``SandboxManager._request``): the agent when its channel is
open, ``podman exec`` otherwise and whenever a channel closes in the middle of a request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

import anyio

from .backend import Backend
from .channel import AgentChannel
from .errors import (
    ChannelClosed,
    ChannelRequestFailed,
    FileNotWritable,
    PodmanError,
    SandboxError,
    SandboxNotFound,
    SandboxStopped,
    machinery_failure,
)
from .files import write_refusal
from .layout import AGENT_PATH, LIB_PATH
from .model import Sandbox
from .podman import PodmanResult, is_missing_container, is_not_running
from .records import BOOTSTRAP, INSTALL_HELPERS, LIB_MISSING, RECORDS_UNWRITABLE

logger = logging.getLogger("mcp_sandbox.runtime")

LIST_LIMIT_BYTES = 4 * 1024 * 1024


class Runtime(Protocol):
    """Requests a sandbox answers about its commands and files."""

    async def report(self, sandbox: Sandbox, command_id: str, cap: int, stdout_offset: int, stderr_offset: int) -> bytes:
        """A command's framed report (records.parse_report), at most cap bytes of each stream from the offsets."""

    async def list_commands(self, sandbox: Sandbox) -> bytes:
        """The sandbox's commands, as records.parse_command_list reads them."""

    async def put(self, sandbox: Sandbox, path: str, data: bytes, mode: int) -> None:
        """Write a file, parents made; FileNotWritable says why not."""

    async def link(self, sandbox: Sandbox, path: str, max_size: int, file_id: str) -> str:
        """Record a file link; the verdict line of link_file (records.py)."""


class AgentRuntime:
    """Requests over one sandbox's open channel to sandbox-agent."""

    def __init__(self, channel: AgentChannel) -> None:
        self.channel = channel

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


class ExecRuntime:
    """One ``podman exec`` of the in-sandbox shell library per request (records.SANDBOX_LIB)."""

    def __init__(self, backend: Backend, helpers: Callable[[], bytes], removed: Callable[[str], None]) -> None:
        self.backend = backend
        self._helpers = helpers  # the tar of what every sandbox gets in STATE_DIR
        self._removed = removed  # tells the manager a sandbox's container is gone

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


class AgentChannels:
    """The open channels to sandbox-agents, one per sandbox, opened on demand and kept few.

    Each channel is a ``podman exec -i`` process of its own (about 35 MB): at most
    ``max_channels`` stay open, the least recently used closing first, and one unused for
    ``idle_seconds`` closes (it reopens on the next request).
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
        self._channels: dict[str, AgentChannel] = {}
        self._locks: dict[str, anyio.Lock] = {}

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
            for attempt in range(2):
                channel = AgentChannel(self.backend.exec_argv(
                    sandbox.name, AGENT_PATH, str(self._output_file_max_bytes), interactive=True
                ), self._spawn_options())
                try:
                    await channel.open(self._spawn)
                    break
                except ChannelClosed as exc:
                    reason = str(exc)
                    if is_missing_container(reason) or is_not_running(reason):
                        self.exec_runtime.raise_failure(sandbox, PodmanResult(channel.argv, 1, b"", reason))
                    if attempt == 0 and ("no such file" in reason.lower() or "not found" in reason.lower()):
                        await self.exec_runtime.install_helpers(sandbox)
                        continue
                    logger.warning("no command channel to sandbox %s (%s); using podman exec", sandbox.container_id, reason)
                    return None
            self._channels[sandbox.container_id] = channel
        await self._limit()
        return channel

    async def _limit(self) -> None:
        excess = len(self._channels) - self.max_channels
        if excess > 0:
            oldest = sorted(self._channels.items(), key=lambda item: item[1].last_used)[:excess]
            for container_id, _ in oldest:
                await self.close(container_id)

    async def close_idle(self) -> None:
        idle_before = time.monotonic() - self.idle_seconds
        for container_id, channel in list(self._channels.items()):
            if channel.closed or channel.last_used < idle_before:
                await self.close(container_id)

    async def close(self, container_id: str) -> None:
        channel = self._channels.pop(container_id, None)
        if channel is not None:
            await channel.close()

    async def close_all(self) -> None:
        for container_id in list(self._channels):
            await self.close(container_id)

    def forget(self, container_id: str) -> None:
        """The sandbox is gone: its channel closes in the background."""
        channel = self._channels.pop(container_id, None)
        if channel is not None:
            self._spawn(channel.close)
        self._locks.pop(container_id, None)
