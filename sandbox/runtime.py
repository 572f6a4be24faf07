"""What runs inside a sandbox, and how the server asks it: two runtimes behind one interface.

``AgentRuntime`` sends requests over the sandbox's persistent channel to sandbox-agent (a message
each); ``ExecRuntime`` runs one ``podman exec`` of the in-sandbox shell library per request. Both
read and write the same records (records.py), so either can answer for the other. The manager
chooses between them in one place (``SandboxManager._request``): the agent when its channel is
open, ``podman exec`` otherwise and whenever a channel closes in the middle of a request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from .backend import Backend
from .channel import AgentChannel
from .errors import (
    ChannelRequestFailed,
    FileNotWritable,
    PodmanError,
    SandboxError,
    SandboxNotFound,
    SandboxStopped,
    machinery_failure,
)
from .files import write_refusal
from .layout import LIB_PATH
from .model import Sandbox
from .podman import PodmanResult, is_missing_container, is_not_running
from .records import BOOTSTRAP, INSTALL_HELPERS, LIB_MISSING, RECORDS_UNWRITABLE

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
