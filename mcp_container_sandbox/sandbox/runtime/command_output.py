"""A command's output read back from its records: a slice from the client's byte offsets, the
head and tail of a stream too long for one result, the answer to a write once the output
settles; and the state of a command from its report, whichever runtime sent it."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import NoReturn

import anyio

from ..errors import CommandNotFound, SandboxError
from ..model import Sandbox
from .command_records import COMMAND_ID_RE, KEEP_RECORDS, CommandState, parse_report
from .runtimes import Runtimes

# A command that waits for input is answered once its output stops growing: after a quiet spell as
# long as its first answer took (a quick echo: SETTLE_MIN_SECONDS; a slow program: up to
# SETTLE_MAX_SECONDS), or after SILENT_SECONDS when nothing came. Looked at every
# SETTLE_POLL_SECONDS (sizes only: through the agent, a fraction of a millisecond).
SETTLE_MIN_SECONDS = 0.003
SETTLE_MAX_SECONDS = 0.3
# On a terminal the first output is the terminal's echo of what was typed, at once: wait longer.
SETTLE_MIN_TERMINAL_SECONDS = 0.05
SILENT_SECONDS = 1.0
SETTLE_POLL_SECONDS = 0.002


class CommandOutput:
    def __init__(self, cap: int, runtimes: Runtimes) -> None:
        self.cap = cap  # bytes of each stream in one result (SANDBOX_OUTPUT_LIMIT_BYTES)
        self.runtimes = runtimes

    async def slice(
        self, sandbox: Sandbox, command_id: str, cap: int, stdout_offset: int, stderr_offset: int
    ) -> CommandState:
        """A command's state with at most cap bytes of each stream, from the given offsets."""
        report = await self.runtimes.ask(sandbox, lambda runtime: runtime.report(
            sandbox, command_id, cap, stdout_offset, stderr_offset))
        return self.read_back(sandbox, command_id, report, stdout_offset, stderr_offset)

    async def head_and_tail(self, sandbox: Sandbox, state: CommandState) -> CommandState:
        """A stream cut at the cap keeps its head and its tail (the end is where errors are)."""
        cap = self.cap
        if not state.truncated:
            return state
        half = cap // 2
        heads = await self.slice(sandbox, state.command_id, half, 0, 0)
        tails = await self.slice(
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

    def read_back(
        self, sandbox: Sandbox, command_id: str, report: bytes, stdout_offset: int = 0, stderr_offset: int = 0
    ) -> CommandState:
        """A command's state from its report, whichever runtime sent it."""
        try:
            state = parse_report(command_id, report, stdout_offset=stdout_offset, stderr_offset=stderr_offset)
        except ValueError as exc:
            raise SandboxError(f"The record of command {command_id} in the sandbox is damaged ({exc}).") from None
        if state is None:
            not_found(sandbox, command_id)
        if state.status == "killed" and self.runtimes.exec_runtime.launching(sandbox.container_id, command_id):
            # Still being launched by podman exec: the pid file is not written yet.
            state = replace(state, status="running")
        return state

    async def settle(self, sandbox: Sandbox, command_id: str, stdout_offset: int, stderr_offset: int,
                      max_seconds: float, tty: bool = False) -> CommandState:
        """The command's output after the offsets once it ends, or once its output stopped growing
        (a prompt, an answer: a quiet spell as long as the first answer took, within SETTLE_MIN_SECONDS
        and SETTLE_MAX_SECONDS; or SILENT_SECONDS if nothing
        came), or after max_seconds."""
        cap = self.cap
        started = last_change = time.monotonic()
        seen: tuple[int, int] | None = None
        grew = False
        shortest = SETTLE_MIN_TERMINAL_SECONDS if tty else SETTLE_MIN_SECONDS
        settle = shortest
        while True:
            try:  # sizes only (cap 0) while waiting; the output once
                state = await self.slice(sandbox, command_id, 0, stdout_offset, stderr_offset)
            except CommandNotFound:
                if not self.runtimes.exec_runtime.launching(sandbox.container_id, command_id):
                    raise
                await anyio.sleep(SETTLE_POLL_SECONDS)  # podman exec is still starting it
                continue
            now = time.monotonic()
            sizes = (state.stdout_bytes, state.stderr_bytes)
            if sizes != (seen or (stdout_offset, stderr_offset)):
                if not grew:  # the first answer: wait for the rest about as long as it took
                    settle = min(SETTLE_MAX_SECONDS, max(shortest, now - started))
                grew, last_change = True, now
            seen = sizes
            quiet = now - last_change
            if (state.status != "running" or now - started >= max_seconds
                    or (grew and quiet >= settle) or quiet >= SILENT_SECONDS):
                return await self.slice(sandbox, command_id, cap, stdout_offset, stderr_offset)
            await anyio.sleep(SETTLE_POLL_SECONDS)


def check_command_id(command_id: str) -> None:
    if not isinstance(command_id, str) or not COMMAND_ID_RE.match(command_id):
        raise CommandNotFound(
            f"{str(command_id)[:80]!r} is not a command_id. Command ids look like 'cmd_0123456789abcdef'; "
            "call check_container without command_id to list the sandbox's commands."
        )


def not_found(sandbox: Sandbox, command_id: str) -> NoReturn:
    raise CommandNotFound(
        f"Sandbox {sandbox.container_id} has no command {command_id} (a sandbox keeps the results of its "
        f"newest {KEEP_RECORDS:,} finished commands). Call check_container without command_id to list its commands."
    )
