"""Commands in a sandbox: start one and wait up to the sync wait, follow it (long-poll, progress),
read its output back (cursors, head and tail), list them, and end them with reason sandbox_gone
when their sandbox goes. Every request goes through Runtimes.ask (runtime.py), which picks the runtime."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace

from .config import SandboxSettings
from .errors import (
    CommandNotFound,
    InvalidCommand,
    SandboxError,
    SandboxNotFound,
    SandboxStopped,
)
from .gone import GoneCommands
from .model import LOCAL_TENANT, Sandbox
from .records import (
    COMMAND_ID_RE,
    CommandState,
    CommandSummary,
    last_line,
    parse_command_list,
    parse_report,
)
from .runtime import ExecRuntime, Runtimes


ProgressCallback = Callable[[float, float, str], Awaitable[None]]


class CommandRunner:
    """Runs and follows commands in the manager's sandboxes (it owns none of them)."""

    def __init__(
        self, settings: SandboxSettings, get: Callable[[str, str], Sandbox], live: Callable[[str], Sandbox | None],
        runtimes: Runtimes, gone: GoneCommands,
    ) -> None:
        self.settings = settings
        self._get, self._live = get, live  # a tenant's live sandbox (or SandboxNotFound); any record by id
        self.runtimes, self._gone = runtimes, gone

    def _validate_command(self, command: str) -> bytes:
        if not isinstance(command, str) or not command.strip():
            raise InvalidCommand("The command is empty. Pass a shell command line, for example 'ls -la /'.")
        if "\0" in command:
            raise InvalidCommand("The command contains a NUL character, which a shell cannot run. Remove it.")
        encoded = command.encode("utf-8", errors="surrogatepass")
        if len(encoded) > self.settings.max_command_bytes:
            raise InvalidCommand(
                f"The command is {len(encoded):,} bytes; the limit is {self.settings.max_command_bytes:,} "
                "(SANDBOX_MAX_COMMAND_BYTES). Split the work into smaller commands."
            )
        return encoded

    async def execute(
        self, container_id: str, command: str, timeout_seconds: int, tenant: str = LOCAL_TENANT,
        on_progress: ProgressCallback | None = None,
    ) -> CommandState:
        """Start a command and wait up to the sync wait for it; then it goes on in the background."""
        sandbox = self._get(container_id, tenant)
        encoded = self._validate_command(command)
        command_id = "cmd_" + secrets.token_hex(8)
        started_ms = int(time.time() * 1000)
        try:
            state = await self._start_and_wait(sandbox, command_id, encoded, timeout_seconds, started_ms, on_progress)
            return self._seen(container_id, await self._head_and_tail(sandbox, state))
        except (SandboxNotFound, SandboxStopped) as exc:
            return self._gone_or_raise(exc, container_id, command_id, tenant)

    def _started(self, container_id: str, command_id: str) -> None:
        """A command began (or may have): if its sandbox goes, it ends with reason sandbox_gone."""
        if self._live(container_id) is not None:
            self._gone.started(container_id, command_id)

    def _seen(self, container_id: str, state: CommandState) -> CommandState:
        """Remember which commands were last seen running in a live sandbox, with their output so far."""
        if state.status != "running" or self._live(container_id) is not None:
            self._gone.seen(container_id, state)
        return state

    def gone_command(
        self, container_id: str, command_id: str, tenant: str = LOCAL_TENANT, stopped: bool = False
    ) -> CommandState | None:
        """A command that was running when its sandbox went away, ended with reason sandbox_gone;
        None when this tenant had no such command running there (see gone.py)."""
        if not isinstance(container_id, str):
            return None
        return self._gone.gone(container_id, command_id, tenant, self._live(container_id), stopped)

    def _gone_or_raise(self, exc: SandboxError, container_id: str, command_id: str, tenant: str) -> CommandState:
        """A command's sandbox_gone ending, when the sandbox went while it ran; else the error as it was."""
        gone = self.gone_command(container_id, command_id, tenant, isinstance(exc, SandboxStopped))
        if gone is None:
            raise exc
        return gone

    async def _start_and_wait(
        self, sandbox: Sandbox, command_id: str, encoded: bytes, timeout_seconds: int, started_ms: int,
        on_progress: ProgressCallback | None,
    ) -> CommandState:
        cap = self.settings.output_limit_bytes

        async def start_unless_started(exec_runtime: ExecRuntime) -> object:
            # The channel closed while starting it: the command may have started, never run it twice.
            if parse_report(command_id, await exec_runtime.report(sandbox, command_id, cap, 0, 0)) is not None:
                return None
            return await exec_runtime.start(sandbox, command_id, encoded, timeout_seconds, started_ms, cap)

        started = await self.runtimes.ask(
            sandbox, lambda runtime: runtime.start(sandbox, command_id, encoded, timeout_seconds, started_ms, cap),
            after_close=start_unless_started,
        )
        self._started(sandbox.container_id, command_id)
        return await self._follow(sandbox, command_id, self.settings.sync_wait_seconds, on_progress, started)

    async def _follow(
        self, sandbox: Sandbox, command_id: str, wait_seconds: float, on_progress: ProgressCallback | None,
        started: object = None,
    ) -> CommandState:
        """The command's state once it ends or wait_seconds pass; progress about once a second.
        ``started`` is what the runtime's start returned, when this call started the command."""
        cap = self.settings.output_limit_bytes
        deadline = time.monotonic() + wait_seconds
        while True:
            # In steps, so that progress is told and an end nobody announces (a command this call
            # did not start, e.g. before a restart of the server) is seen from its report.
            remaining = max(0.0, deadline - time.monotonic())
            step = min(remaining, 1.0) if on_progress else remaining if started is not None else min(remaining, 2.0)
            report = await self.runtimes.ask(
                sandbox, lambda runtime: runtime.wait(sandbox, command_id, step, cap, started))
            if report is None:
                report = await self.runtimes.ask(
                    sandbox, lambda runtime: runtime.report(sandbox, command_id, cap, 0, 0))
            state = self._read_back(sandbox, command_id, report)
            if state.status != "running" or time.monotonic() >= deadline:
                return state
            if on_progress is not None:
                await on_progress(wait_seconds - (deadline - time.monotonic()), wait_seconds, last_line(state))

    async def wait_for_command(
        self, container_id: str, command_id: str, wait_seconds: float, tenant: str = LOCAL_TENANT,
        on_progress: ProgressCallback | None = None, stdout_offset: int | None = None,
        stderr_offset: int | None = None,
    ) -> CommandState:
        """check_container's long-poll: the command's state as soon as it ends, or after
        wait_seconds, with output from the client's byte offsets."""
        try:
            state = await self.read_command(container_id, command_id, tenant, stdout_offset, stderr_offset)
            if state.status == "running" and wait_seconds > 0:
                await self._follow(self._get(container_id, tenant), command_id, wait_seconds, on_progress)
                state = await self.read_command(container_id, command_id, tenant, stdout_offset, stderr_offset)
        except (SandboxNotFound, SandboxStopped) as exc:
            return self._gone_or_raise(exc, container_id, command_id, tenant)
        return self._seen(container_id, state)

    async def read_command(
        self, container_id: str, command_id: str, tenant: str = LOCAL_TENANT,
        stdout_offset: int | None = None, stderr_offset: int | None = None,
    ) -> CommandState:
        """A command's state: with byte offsets (a client's cursors), exactly the output after
        them; without, the output with its head and tail kept when it is too long."""
        sandbox = self._get(container_id, tenant)
        if not isinstance(command_id, str) or not COMMAND_ID_RE.match(command_id):
            raise CommandNotFound(
                f"{str(command_id)[:80]!r} is not a command_id. Command ids look like 'cmd_0123456789abcdef'; "
                "call check_container without command_id to list the sandbox's commands."
            )
        cursors = stdout_offset is not None or stderr_offset is not None
        state = await self._slice(
            sandbox, command_id, self.settings.output_limit_bytes, stdout_offset or 0, stderr_offset or 0
        )
        return state if cursors else await self._head_and_tail(sandbox, state)

    async def _slice(
        self, sandbox: Sandbox, command_id: str, cap: int, stdout_offset: int, stderr_offset: int
    ) -> CommandState:
        """A command's state with at most cap bytes of each stream, from the given offsets."""
        report = await self.runtimes.ask(sandbox, lambda runtime: runtime.report(
            sandbox, command_id, cap, stdout_offset, stderr_offset))
        return self._read_back(sandbox, command_id, report, stdout_offset, stderr_offset)

    async def _head_and_tail(self, sandbox: Sandbox, state: CommandState) -> CommandState:
        """A stream cut at the cap keeps its head and its tail (the end is where errors are)."""
        cap = self.settings.output_limit_bytes
        if not state.truncated:
            return state
        half = cap // 2
        heads = await self._slice(sandbox, state.command_id, half, 0, 0)
        tails = await self._slice(
            sandbox, state.command_id, half, max(0, heads.stdout_bytes - half), max(0, heads.stderr_bytes - half)
        )

        def joined(total: int, whole: str, head: str, tail: str, name: str, path: str,
                   dropped: tuple[int, int] | None) -> str:
            if total <= cap:
                return whole
            omitted = total - 2 * half
            where = f"read them with check_container {name}_offset={half}, or from {path}"
            if dropped:
                where += f" (bytes {dropped[0]:,} to {dropped[1]:,} were not kept)"
            return f"{head}\n[... {omitted:,} bytes of {name} omitted: {where} ...]\n{tail}"

        return replace(
            state,
            stdout=joined(heads.stdout_bytes, state.stdout, heads.stdout, tails.stdout, "stdout", state.stdout_path,
                          tails.stdout_dropped),
            stderr=joined(heads.stderr_bytes, state.stderr, heads.stderr, tails.stderr, "stderr", state.stderr_path,
                          tails.stderr_dropped),
            stdout_dropped=tails.stdout_dropped,
            stderr_dropped=tails.stderr_dropped,
        )

    def _read_back(
        self, sandbox: Sandbox, command_id: str, report: bytes, stdout_offset: int = 0, stderr_offset: int = 0
    ) -> CommandState:
        """A command's state from its report, whichever runtime sent it."""
        try:
            state = parse_report(command_id, report, stdout_offset=stdout_offset, stderr_offset=stderr_offset)
        except ValueError as exc:
            raise SandboxError(f"The record of command {command_id} in the sandbox is damaged ({exc}).") from None
        if state is None:
            raise CommandNotFound(
                f"Sandbox {sandbox.container_id} has no command {command_id}. Call check_container without "
                "command_id to list its commands."
            )
        if state.status == "killed" and self.runtimes.exec_runtime.launching(sandbox.container_id, command_id):
            # Still being launched by podman exec: the pid file is not written yet.
            state = replace(state, status="running")
        return state

    async def list_commands(self, container_id: str, tenant: str = LOCAL_TENANT) -> list[CommandSummary]:
        sandbox = self._get(container_id, tenant)
        return parse_command_list(await self.runtimes.ask(sandbox, lambda runtime: runtime.list_commands(sandbox)))
