"""Commands in a sandbox: start one and wait up to the sync wait, follow it (long-poll, progress),
read its output back (cursors, head and tail), list them, and end them with reason sandbox_gone
when their sandbox goes. Every request goes through Runtimes.ask (runtimes.py), which picks the runtime."""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio

from ...settings import SandboxSettings
from ..errors import (
    InvalidCommand,
    SandboxError,
    SandboxNotFound,
    SandboxStopped,
)
from ..model import LOCAL_TENANT, Sandbox
from ..paths import OUTPUT_DIR
from .command_output import CommandOutput, check_command_id, not_found
from .command_records import (
    SIGNALS,
    STDIN_FROM_FILE,
    STDIN_KEPT_OPEN,
    STDIN_TERMINAL,
    CommandState,
    CommandSummary,
    last_line,
    parse_command_list,
    parse_report,
)
from .gone_commands import GoneCommands
from .runtimes import NO_TERMINAL_MESSAGE, ExecRuntime, Runtimes

# How long send_signal waits for the command to end (for a signal that ends it).
SIGNAL_WAIT_SECONDS = 3.0
# How long a write to a command just started over podman exec waits for its FIFO; and how long
# any write waits for the FIFO's holder to open it.
STARTING_SECONDS = 10.0
OPENING_SECONDS = 2.0

_STDIN_REFUSALS = {
    "no-such-command": "Sandbox {container_id} has no command {command_id}. Call check_container without "
                       "command_id to list its commands.",
    "not-kept-open": "Command {command_id} was not started with keep_stdin_open=true or tty=true, so its stdin "
                     "is not open. Run it again with keep_stdin_open=true to write to it, or pass all input at "
                     "once with execute_command's stdin.",
    "closed": "The stdin of command {command_id} was closed (close=true) and cannot be opened again. Run the "
              "command again to give it more input.",
    "finished": "Command {command_id} has ended, so nothing can be written to it. check_container with its "
                "command_id shows its result.",
    "busy": "The sandbox is writing to too many commands at once; try again in a moment.",
    "starting": "Command {command_id} has not opened its stdin yet; try again in a moment.",
    "not-reading": "Command {command_id} did not take the data within 2 s (it is not reading its input); part of "
                   "it may have arrived. Its stdin stays open: look with check_container, then write again.",
    "interrupted": "The connection to the sandbox broke while writing to command {command_id}; the data may or "
                   "may not have arrived. Look with check_container before writing again.",
}
_SIGNAL_REFUSALS = {
    "finished": "Command {command_id} has already ended; there is nothing to signal. check_container with its "
                "command_id shows its result.",
    "interrupted": "The connection to the sandbox broke while signalling command {command_id}; the signal may or "
                   "may not have arrived. Look with check_container before sending it again.",
}


ProgressCallback = Callable[[float, float, str], Awaitable[None]]


@dataclass(frozen=True)
class Written:
    """What a write to a command's stdin did."""

    bytes: int  # taken in by the command (all, unless it stopped reading)
    tty: bool  # the command runs on a terminal
    stdout_before: int  # its output's sizes just before the write: where the answer starts
    stderr_before: int
    ended: bool = False  # a command just started had ended before its input came (nothing written)


class CommandRunner:
    """Runs and follows commands in the manager's sandboxes (it owns none of them)."""

    def __init__(
        self, settings: SandboxSettings, get: Callable[[str, str], Sandbox], live: Callable[[str], Sandbox | None],
        runtimes: Runtimes, gone: GoneCommands,
    ) -> None:
        self.settings = settings
        self._get, self._live = get, live  # a tenant's live sandbox (or SandboxNotFound); any record by id
        self.runtimes, self._gone = runtimes, gone
        self.output = CommandOutput(settings.output_limit_bytes, runtimes)
        # Sandboxes whose commands this server knows all of: made by it, or listed since it started.
        self._known: set[str] = set()
        # Whether this server starts every command of its sandboxes (False where servers share them).
        self.sole = True

    def know(self, container_id: str) -> None:
        """A sandbox this server just made: no command of it runs that the server did not start."""
        if self.sole:
            self._known.add(container_id)

    async def execute(
        self, container_id: str, command: str, timeout_seconds: int, tenant: str = LOCAL_TENANT,
        on_progress: ProgressCallback | None = None, stdin: bytes | None = None, keep_stdin_open: bool = False,
        tty: bool = False,
    ) -> CommandState:
        """Start a command and wait up to the sync wait for it; then it goes on in the background.
        stdin is its input, then end-of-file unless keep_stdin_open (write_stdin goes on); tty runs
        it on a terminal fed the same way. A command that waits for input is answered as soon as
        its output settles (a prompt), not at the end of the sync wait."""
        sandbox = self._get(container_id, tenant)
        encoded = validate_command(command, self.settings.max_command_bytes)
        validate_stdin(stdin, "stdin", self.settings.stdin_max_bytes)
        if tty and not self.runtimes.channels.enabled:
            raise InvalidCommand(NO_TERMINAL_MESSAGE)
        command_id = "cmd_" + secrets.token_hex(8)
        started_ms = int(time.time() * 1000)
        flags = (STDIN_KEPT_OPEN if keep_stdin_open else 0) | (STDIN_TERMINAL if tty else 0)
        try:
            if stdin and not flags:
                await self.runtimes.ask(sandbox, lambda runtime: runtime.put(
                    sandbox, f"{OUTPUT_DIR}/{command_id}.stdin", stdin, 0o600))
                flags = STDIN_FROM_FILE
            if not flags & (STDIN_KEPT_OPEN | STDIN_TERMINAL):
                state = await self._start_and_wait(sandbox, command_id, encoded, timeout_seconds, started_ms,
                                                   on_progress, flags)
                return self._seen(container_id, await self.output.head_and_tail(sandbox, state))
            started = await self._start(sandbox, command_id, encoded, timeout_seconds, started_ms, flags)
            if stdin or not keep_stdin_open:  # a terminal without kept-open stdin gets ^D after it
                written = await self._write(sandbox, command_id, stdin or b"", not keep_stdin_open, starting=True)
                # A command may end before its input comes (a terminal's program that reads none).
                if not written.ended and written.bytes < len(stdin or b""):
                    raise InvalidCommand(
                        f"Command {command_id} started but took only {written.bytes:,} of the {len(stdin or b''):,} "
                        "bytes of stdin (it is not reading its input). Send the rest with write_stdin, or stop "
                        "it with send_signal.")
            if keep_stdin_open:
                state = await self.output.settle(sandbox, command_id, 0, 0, self.settings.sync_wait_seconds, tty)
            else:
                state = await self._follow(sandbox, command_id, self.settings.sync_wait_seconds, on_progress, started)
            return self._seen(container_id, await self.output.head_and_tail(sandbox, state))
        except (SandboxNotFound, SandboxStopped) as exc:
            return self._gone_or_raise(exc, container_id, command_id, tenant)

    async def write_stdin(
        self, container_id: str, command_id: str, data: bytes, close: bool, tenant: str = LOCAL_TENANT
    ) -> tuple[CommandState, int]:
        """Write to a command's kept-open stdin (then end-of-file with close); returns the command's
        state once its output settles, with the output that came after the write, and how many bytes
        it took in."""
        sandbox = self._get(container_id, tenant)
        check_command_id(command_id)
        validate_stdin(data, "data", self.settings.stdin_max_bytes)
        if not data and not close:
            raise InvalidCommand("data is empty and close is false: nothing to do. Pass the text to type "
                                 "(end lines with \\n), or close=true to end the command's input.")
        try:
            written = await self._write(sandbox, command_id, data, close)
            if close:  # its input ended: most commands end now, so wait for that as execute_command does
                await self._follow(sandbox, command_id, self.settings.sync_wait_seconds, None)
                state = await self.output.slice(sandbox, command_id, self.settings.output_limit_bytes,
                                          written.stdout_before, written.stderr_before)
            else:
                state = await self.output.settle(sandbox, command_id, written.stdout_before, written.stderr_before,
                                           self.settings.sync_wait_seconds, written.tty)
        except (SandboxNotFound, SandboxStopped) as exc:
            return self._gone_or_raise(exc, container_id, command_id, tenant), 0
        return self._seen(container_id, state), written.bytes

    async def _write(self, sandbox: Sandbox, command_id: str, data: bytes, close: bool, starting: bool = False
                     ) -> Written:
        """Write to the command's stdin FIFO: how many bytes it took in (all, unless it stopped
        reading), whether it runs on a terminal, and its output's sizes before the write."""

        async def interrupted(_: ExecRuntime) -> str:  # never write twice: the first may have arrived
            return "error interrupted"

        now = time.monotonic()
        deadline, opening = now + (STARTING_SECONDS if starting else 0), now + OPENING_SECONDS
        while True:
            verdict = (await self.runtimes.ask(
                sandbox, lambda runtime: runtime.write_stdin(sandbox, command_id, data, close),
                after_close=interrupted)).strip().split()
            # Just started over podman exec, its FIFO may not be made yet; just started anyhow, the
            # program that holds it open may not have opened it yet (nothing was written then).
            if ((verdict[:2] == ["error", "no-such-command"] and time.monotonic() < deadline)
                    or (verdict[:2] == ["error", "starting"] and time.monotonic() < max(deadline, opening))):
                await anyio.sleep(0.005)
                continue
            break
        if starting and verdict[:2] == ["error", "finished"]:
            return Written(0, False, 0, 0, ended=True)
        if verdict[:1] == ["ok"] and len(verdict) == 5 and all(field.isdigit() for field in verdict[1:]):
            return Written(int(verdict[1]), verdict[2] == "1", int(verdict[3]), int(verdict[4]))
        why = verdict[1] if len(verdict) > 1 else "refused"
        raise InvalidCommand(_STDIN_REFUSALS.get(why, "The command's stdin could not be written ({why}); check "
                                                 "the command with check_container.").format(
            command_id=command_id, container_id=sandbox.container_id, why=why))

    async def send_signal(self, container_id: str, command_id: str, signal: str, tenant: str = LOCAL_TENANT
                          ) -> tuple[CommandState, str]:
        """Send a signal to the command's process group; the command's state once it ended (for a
        signal that ends it), or as it is now; and the signal's name."""
        name = signal.strip().upper() if isinstance(signal, str) else ""
        name = name[3:] if name.startswith("SIG") else name
        if name not in SIGNALS:
            raise InvalidCommand(f"{str(signal)[:40]!r} is not a signal send_signal knows. Use one of "
                                 f"{', '.join(SIGNALS)} (with or without SIG).")
        sandbox = self._get(container_id, tenant)
        check_command_id(command_id)

        async def interrupted(_: ExecRuntime) -> str:  # never signal twice: the first may have arrived
            return "error interrupted"

        try:
            verdict = (await self.runtimes.ask(
                sandbox, lambda runtime: runtime.signal(sandbox, command_id, SIGNALS[name]),
                after_close=interrupted)).strip().split()
            if verdict[:1] != ["ok"]:
                why = verdict[1] if len(verdict) > 1 else "refused"
                if why == "no-such-command":
                    not_found(sandbox, command_id)
                raise InvalidCommand(_SIGNAL_REFUSALS.get(why, "The signal could not be sent ({why}).").format(
                    command_id=command_id, container_id=container_id, why=why))
            ends = name not in ("STOP", "CONT")
            state = await self._follow(sandbox, command_id, SIGNAL_WAIT_SECONDS if ends else 0.2, None)
        except (SandboxNotFound, SandboxStopped) as exc:
            return self._gone_or_raise(exc, container_id, command_id, tenant), name
        return self._seen(container_id, await self.output.head_and_tail(sandbox, state)), name

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
        None when this tenant had no such command running there (see gone_commands.py)."""
        if not isinstance(container_id, str):
            return None
        return self._gone.gone(container_id, command_id, tenant, self._live(container_id), stopped)

    def _gone_or_raise(self, exc: SandboxError, container_id: str, command_id: str, tenant: str) -> CommandState:
        """A command's sandbox_gone ending, when the sandbox went while it ran; else the error as it was."""
        gone = self.gone_command(container_id, command_id, tenant, isinstance(exc, SandboxStopped))
        if gone is None:
            raise exc
        return gone

    async def _start(
        self, sandbox: Sandbox, command_id: str, encoded: bytes, timeout_seconds: int, started_ms: int, flags: int,
    ) -> object:
        cap = self.settings.output_limit_bytes

        async def start_unless_started(exec_runtime: ExecRuntime) -> object:
            # The channel closed while starting it: the command may have started, never run it twice.
            if parse_report(command_id, await exec_runtime.report(sandbox, command_id, cap, 0, 0)) is not None:
                return None
            return await exec_runtime.start(sandbox, command_id, encoded, timeout_seconds, started_ms, cap, flags)

        started = await self.runtimes.ask(
            sandbox, lambda runtime: runtime.start(sandbox, command_id, encoded, timeout_seconds, started_ms, cap,
                                                   flags),
            after_close=start_unless_started,
        )
        self._started(sandbox.container_id, command_id)
        return started

    async def _start_and_wait(
        self, sandbox: Sandbox, command_id: str, encoded: bytes, timeout_seconds: int, started_ms: int,
        on_progress: ProgressCallback | None, flags: int = 0,
    ) -> CommandState:
        started = await self._start(sandbox, command_id, encoded, timeout_seconds, started_ms, flags)
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
            state = self.output.read_back(sandbox, command_id, report)
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
        check_command_id(command_id)
        cursors = stdout_offset is not None or stderr_offset is not None
        state = await self.output.slice(
            sandbox, command_id, self.settings.output_limit_bytes, stdout_offset or 0, stderr_offset or 0
        )
        return state if cursors else await self.output.head_and_tail(sandbox, state)

    async def list_commands(self, container_id: str, tenant: str = LOCAL_TENANT) -> list[CommandSummary]:
        sandbox = self._get(container_id, tenant)
        listed = parse_command_list(await self.runtimes.ask(sandbox, lambda runtime: runtime.list_commands(sandbox)))
        self._listed(container_id, listed)
        return listed

    async def running_commands(self, container_id: str, tenant: str = LOCAL_TENANT) -> list[str]:
        """The ids of the sandbox's running commands, without opening a channel: a sandbox whose
        commands the server knows all of (it made it, or listed them since it started) and saw none
        of running has none, and is not asked; any other is asked, through its agent when its
        channel is open, else by podman exec."""
        sandbox = self._get(container_id, tenant)
        known = self.known_running(container_id)
        if known is not None:
            return known
        listed = parse_command_list(await self.runtimes.ask(
            sandbox, lambda runtime: runtime.list_commands(sandbox), open_channel=False))
        self._listed(container_id, listed)
        return [c.command_id for c in listed if c.status == "running"]

    def known_running(self, container_id: str) -> list[str] | None:
        """[] when the server knows the sandbox runs no command (running_commands asks it nothing);
        None when only the sandbox can tell."""
        return [] if container_id in self._known and not self._gone.running_ids(container_id) else None

    def _listed(self, container_id: str, listed: list[CommandSummary]) -> None:
        if self._live(container_id) is not None:
            if self.sole:
                self._known.add(container_id)
            self._gone.settle(container_id, {c.command_id for c in listed if c.status == "running"})

    def forget(self, container_id: str) -> None:
        self._known.discard(container_id)


def validate_command(command: str, max_bytes: int) -> bytes:
    if not isinstance(command, str) or not command.strip():
        raise InvalidCommand("The command is empty. Pass a shell command line, for example 'ls -la /'.")
    if "\0" in command:
        raise InvalidCommand("The command contains a NUL character, which a shell cannot run. Remove it.")
    encoded = command.encode("utf-8", errors="surrogatepass")
    if len(encoded) > max_bytes:
        raise InvalidCommand(
            f"The command is {len(encoded):,} bytes; the limit is {max_bytes:,} "
            "(SANDBOX_MAX_COMMAND_BYTES). Split the work into smaller commands."
        )
    return encoded


def validate_stdin(data: bytes | None, what: str, max_bytes: int) -> None:
    if data is not None and len(data) > max_bytes:
        raise InvalidCommand(
            f"{what} is {len(data):,} bytes; the limit is {max_bytes:,} "
            "(SANDBOX_STDIN_MAX_BYTES). Write it into a file with write_file and redirect it (command < file), "
            "or send it in parts with write_stdin."
        )
