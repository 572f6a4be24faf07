"""Tools for commands in a sandbox: execute_command, write_stdin, send_signal."""

from __future__ import annotations

from typing import Annotated, Any

from fastmcp import Context
from pydantic import Field

from .app import COMMAND_APP_URI
from .area import CommandId, ContainerId, NotBlank, ToolArea, tool
from .context import progress_reporter, tool_errors
from .shaping import decoded
from .waits import current as current_waits


class CommandTools(ToolArea):
    @tool(title="Run a shell command", app=COMMAND_APP_URI, read_only_hint=False, destructive_hint=True,
          open_world_hint=True)
    async def execute_command(
        self,
        container_id: ContainerId,
        command: Annotated[
            str,
            Field(description="Shell command line, run with /bin/sh -c in the sandbox."),
        ],
        timeout_seconds: Annotated[
            int,
            Field(description="Stop the command (and its child processes) after this many seconds.", ge=1, le=86400),
        ] = 600,
        stdin: Annotated[
            str | None,
            Field(description="Text given to the command's standard input, then end-of-file. Omit for empty input."),
        ] = None,
        keep_stdin_open: Annotated[
            bool,
            Field(description="true: stdin stays open after the stdin text, for write_stdin (REPLs, programs that "
                              "ask questions); the result comes as soon as the command's output settles."),
        ] = False,
        tty: Annotated[
            bool,
            Field(description="true: run on a pseudo-terminal (programs that need one, python -i); stdout and stderr "
                              "are then one stream, and write_stdin types into it."),
        ] = False,
        ctx: Context | None = None,
    ) -> dict[str, Any]:
        """Run a shell command in a sandbox and return its exit_code, stdout and stderr.

        A non-zero exit_code is a normal result. If the command is still running after a few seconds,
        the result has status 'running' and a command_id: call check_container(container_id, command_id,
        wait_seconds) as its message says to get its result as soon as it ends. Use write_file to create
        files, read_file and list_files to look at them.
        """
        with tool_errors(), self.context.waits.waiting(current_waits()[0]):
            data = None if stdin is None else stdin.encode("utf-8", errors="surrogatepass")
            state = await self.sandboxes.execute(container_id, command, timeout_seconds, self.context.tenant(),
                                                 progress_reporter(ctx), data, keep_stdin_open, tty)
        result = self.context.command_result(container_id, state, stdin_open=keep_stdin_open)
        if tty:
            result["tty"] = True
        return result

    @tool(title="Type into a running command", read_only_hint=False, destructive_hint=True, open_world_hint=False)
    async def write_stdin(
        self,
        container_id: ContainerId,
        command_id: CommandId,
        data: Annotated[str, Field(description="What to write: text (end a line with \\n to send it), or base64 "
                                               "when encoding is 'base64'. May be empty with close=true.")],
        encoding: Annotated[
            str, Field(description="'text' (UTF-8) or 'base64' (binary input).", pattern="^(text|base64)$")
        ] = "text",
        close: Annotated[bool, Field(description="true: end-of-file after the data (on a terminal: Ctrl-D).")] = False,
    ) -> dict[str, Any]:
        """Write to the stdin of a command started with keep_stdin_open=true (or tty=true) and return
        the output it printed in answer (once its output settles), its status and bytes_written."""
        raw = decoded(data, encoding, "data")
        with tool_errors():
            state, written = await self.sandboxes.write_stdin(container_id, command_id, raw, close,
                                                              self.context.tenant())
        result = self.context.command_result(container_id, state, stdin_open=not close and written == len(raw))
        result["bytes_written"] = written
        if written < len(raw):
            result["message"] = (f"The command took {written:,} of {len(raw):,} bytes within 2 s: it is not reading "
                                 "its input now. Its stdin stays open; send the rest later with write_stdin. "
                                 + result.get("message", ""))
        return result

    @tool(title="Signal a running command", read_only_hint=False, destructive_hint=True, open_world_hint=False)
    async def send_signal(
        self,
        container_id: ContainerId,
        command_id: CommandId,
        signal: Annotated[str, Field(description="INT (Ctrl-C), TERM, KILL, HUP, QUIT, USR1, USR2, STOP or CONT; "
                                                 "with or without SIG.", max_length=20), NotBlank],
    ) -> dict[str, Any]:
        """Send a signal to a running command and its child processes (its process group), then
        return its status: once it ended (up to 3 s), or as it is now."""
        with tool_errors():
            state, name = await self.sandboxes.send_signal(container_id, command_id, signal, self.context.tenant())
        result = self.context.command_result(container_id, state)
        result["signal_sent"] = name
        return result
