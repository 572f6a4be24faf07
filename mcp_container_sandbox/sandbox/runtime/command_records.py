"""What a sandbox records about its commands, and how the server reads it back.

Commands leave their records inside the sandbox, so that a restarted server finds them: the
shell library (sandbox-lib.sh) and agent/sandbox-agent.c write the same files, and the framed
report either prints is parsed here. runtimes.py decides which of them is asked.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

from ..paths import OUTPUT_DIR

COMMAND_ID_RE = re.compile(r"^cmd_[0-9a-f]{16}$")

# How a command's stdin is set up (the run request's flags, for the agent and the library alike).
STDIN_KEPT_OPEN = 1  # a FIFO that write_stdin writes, until closed
STDIN_TERMINAL = 2  # a pseudo-terminal fed from that FIFO; its output is stdout
STDIN_FROM_FILE = 4  # OUTPUT_DIR/<id>.stdin, written before the run
# Exit code 122 of run: a terminal was asked for where no agent can make one.
NO_TERMINAL = 122

# The signals send_signal knows, by name: Linux numbers (the sandbox's kernel is the host's).
SIGNALS = {"HUP": 1, "INT": 2, "QUIT": 3, "KILL": 9, "USR1": 10, "USR2": 12, "TERM": 15, "CONT": 18, "STOP": 19}
SIGNAL_NAMES = {number: name for name, number in SIGNALS.items()}
# Signals whose default action ends a process: an exit code of 128 + one of them reads as killed by it.
_ENDING_SIGNALS = {number for name, number in SIGNALS.items() if name not in ("CONT", "STOP")}

MAX_LISTED_COMMANDS = 100
# A sandbox keeps the records and output files of its newest 1,000 finished commands (the agent
# and the shell library remove older ones: records live on a 64 MB tmpfs).
KEEP_RECORDS = 1000


@dataclass(frozen=True)
class CommandState:
    """A command as read back from its sandbox (or from the process that ran it)."""

    command_id: str
    status: str  # running | completed | timed_out | killed
    exit_code: int | None
    stdout: str
    stderr: str
    stdout_bytes: int
    stderr_bytes: int
    truncated: bool
    duration_ms: int | None
    stdout_path: str
    stderr_path: str
    stdout_offset: int = 0
    stderr_offset: int = 0
    reason: str | None = None  # oom_killed | timed_out | killed | sandbox_gone, when it did not simply exit
    # Byte ranges [from, to) cut out of the stream files to bound them (SANDBOX_OUTPUT_FILE_MAX_BYTES).
    stdout_dropped: tuple[int, int] | None = None
    stderr_dropped: tuple[int, int] | None = None
    detail: str = ""  # for sandbox_gone: what became of the sandbox


@dataclass(frozen=True)
class CommandSummary:
    command_id: str
    command: str
    status: str
    exit_code: int | None
    started_at: float | None


# --------------------------------------------------------------------------- parsing


class _ReportParser:
    """Parses the framed report of ``report()`` in the scripts above."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def line(self) -> str:
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            raise ValueError("report ended early")
        text = self.data[self.pos : end].decode("ascii", errors="replace")
        self.pos = end + 1
        return text

    def take(self, n: int) -> bytes:
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def parse_report(
    command_id: str, data: bytes, started_ms_hint: int | None = None, stdout_offset: int = 0, stderr_offset: int = 0
) -> CommandState | None:
    """Turn a report into a CommandState; None when the command is unknown to the sandbox."""
    if data.startswith(b"MCPSB-NONE"):
        return None
    parser = _ReportParser(data)
    version = parser.line()
    if version not in ("MCPSB1", "MCPSB2"):  # MCPSB1: an agent or library from before bounded output files
        raise ValueError("not a report")
    exit_code = _int_or_none(parser.line())
    flag = parser.line()
    timed_out = flag == "1"
    alive = parser.line() == "1"
    started_ms = _int_or_none(parser.line()) or started_ms_hint
    finished_ms = _finished_ms(parser.line())
    stdout_bytes = int(parser.line() or 0)
    stderr_bytes = int(parser.line() or 0)
    n_out = int(parser.line() or 0)
    n_err = int(parser.line() or 0)
    dropped: list[tuple[int, int] | None] = [None, None]
    if version == "MCPSB2":
        # Where the returned bytes begin (a cursor in a dropped range moves to its end), and the
        # dropped ranges of stdout and stderr.
        fields = [int(field) for field in parser.line().split()]
        if len(fields) != 6:
            raise ValueError("bad offsets line")
        stdout_offset, stderr_offset = fields[0], fields[1]
        dropped = [(a, b) if b > a else None for a, b in (fields[2:4], fields[4:6])]
    stdout = parser.take(n_out)
    stderr = parser.take(n_err)
    if exit_code is not None:
        status = "timed_out" if timed_out else "completed"
    elif alive:
        status = "running"
    else:
        status = "killed"
    duration_ms = None
    if started_ms is not None:
        end_ms = finished_ms if finished_ms is not None else time.time() * 1000
        duration_ms = max(0, int(end_ms - started_ms))
    return CommandState(
        command_id=command_id,
        status=status,
        exit_code=exit_code,
        stdout=stdout.decode("utf-8", errors="replace"),
        stderr=stderr.decode("utf-8", errors="replace"),
        stdout_bytes=stdout_bytes,
        stderr_bytes=stderr_bytes,
        truncated=stdout_bytes - stdout_offset > n_out or stderr_bytes - stderr_offset > n_err,
        duration_ms=duration_ms,
        stdout_path=f"{OUTPUT_DIR}/{command_id}.stdout",
        stderr_path=f"{OUTPUT_DIR}/{command_id}.stderr",
        stdout_offset=stdout_offset,
        stderr_offset=stderr_offset,
        reason=_reason(status, exit_code, flag),
        stdout_dropped=dropped[0],
        stderr_dropped=dropped[1],
    )


def _finished_ms(text: str) -> int | None:
    """A command's end: milliseconds, or whole seconds as records from before milliseconds say it."""
    value = _int_or_none(text)
    if value is None:
        return None
    return value if value >= 10**11 else value * 1000


def _reason(status: str, exit_code: int | None, flag: str) -> str | None:
    """Why a command ended other than by simply exiting, from what the sandbox recorded:
    its timeout, the sandbox's OOM-kill counter rising while it ran, a signal, or no exit."""
    if status == "timed_out":
        return "timed_out"
    if status == "killed":
        return "killed"
    if flag == "oom":
        return "oom_killed"
    if killed_by(exit_code) is not None:
        return "killed"
    return None


def killed_by(exit_code: int | None) -> str | None:
    """The signal an exit code says ended a command, as shells report it (128 + its number)."""
    if exit_code is not None and exit_code - 128 in _ENDING_SIGNALS:
        return SIGNAL_NAMES[exit_code - 128]
    return None


def parse_command_list(data: bytes) -> list[CommandSummary]:
    summaries = []
    for raw in data.decode("utf-8", errors="replace").splitlines():
        parts = raw.split("\t", 5)
        if len(parts) != 6 or not COMMAND_ID_RE.match(parts[0]):
            continue
        command_id, exit_text, timed_out, alive, started, preview = parts
        exit_code = _int_or_none(exit_text)
        if exit_code is not None:
            status = "timed_out" if timed_out == "1" else "completed"
        else:
            status = "running" if alive == "1" else "killed"
        started_ms = _int_or_none(started)
        summaries.append(
            CommandSummary(command_id, preview, status, exit_code, started_ms / 1000 if started_ms else None)
        )
    summaries.sort(key=lambda s: s.started_at or 0)
    return summaries[-MAX_LISTED_COMMANDS:]


def last_line(state: CommandState) -> str:
    """The latest line a running command printed, for a progress message."""
    text = state.stdout.rstrip("\n") or state.stderr.rstrip("\n")
    return text.rsplit("\n", 1)[-1][-200:] if text else "running"
