"""What a sandbox records about its commands, and how the server reads it back.

Commands leave their records inside the sandbox, so that a restarted server finds them: the
shell library below (and agent/sandbox-agent.c, which writes the same files) records them; the
framed report it prints is parsed here. sandbox.py decides when to run what.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from .layout import AGENT_PATH, LIB_PATH, OUTPUT_DIR, STATE_DIR

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


# --------------------------------------------------------------------------- the in-sandbox library
# Shell functions that run inside the sandbox under /bin/sh (busybox ash, dash or bash),
# so POSIX only. They are written to LIB_PATH when the sandbox is created (and again
# whenever they are found missing); every ``podman exec`` of ours sources them through
# BOOTSTRAP. User input arrives as
# positional arguments or on stdin, never inside script text.

SANDBOX_LIB = r"""
report() {  # $1 command dir, $2 output cap, [$3 $4 stdout/stderr offsets]: a framed report (see parse_report)
  d=$1; cap=$2; oo=${3:-0}; eo=${4:-0}
  printf 'MCPSB2\n'
  if [ -f "$d/exit" ]; then printf '%s\n' "$(tr -dc 0-9 < "$d/exit" | head -c 9)"; else echo; fi
  if [ -e "$d/timed_out" ]; then echo 1; elif [ -e "$d/oom_killed" ]; then echo oom; else echo 0; fi
  if [ -f "$d/exit" ]; then echo 0
  elif kill -0 "$(tr -dc 0-9 < "$d/pid" 2>/dev/null | head -c 9)" 2>/dev/null; then echo 1
  else echo 0; fi
  printf '%s\n' "$(tr -dc 0-9 < "$d/started" 2>/dev/null | head -c 16)"
  printf '%s\n' "$(tr -dc 0-9 < "$d/finished" 2>/dev/null | head -c 16)"
  o=/var/lib/mcp-sandbox/output/${d##*/}
  so=$(wc -c < "$o.stdout" 2>/dev/null | tr -dc 0-9); so=${so:-0}
  se=$(wc -c < "$o.stderr" 2>/dev/null | tr -dc 0-9); se=${se:-0}
  # Ranges the agent punched out to bound the files: a cursor inside one moves to its end,
  # and a slice stops where one begins.
  { read -r dso deo < "$d/stdout_dropped"; } 2>/dev/null || { dso=0; deo=0; }
  { read -r dse dee < "$d/stderr_dropped"; } 2>/dev/null || { dse=0; dee=0; }
  case "$dso$deo$dse$dee" in *[!0-9]*) dso=0; deo=0; dse=0; dee=0;; esac
  dso=${dso:-0}; deo=${deo:-0}; dse=${dse:-0}; dee=${dee:-0}
  if [ "$oo" -ge "$dso" ] && [ "$oo" -lt "$deo" ]; then oo=$deo; fi
  if [ "$eo" -ge "$dse" ] && [ "$eo" -lt "$dee" ]; then eo=$dee; fi
  lo=$((so - oo)); [ "$lo" -gt 0 ] || lo=0
  le=$((se - eo)); [ "$le" -gt 0 ] || le=0
  if [ "$lo" -gt "$cap" ]; then no=$cap; else no=$lo; fi
  if [ "$le" -gt "$cap" ]; then ne=$cap; else ne=$le; fi
  if [ "$oo" -lt "$dso" ] && [ $((oo + no)) -gt "$dso" ]; then no=$((dso - oo)); fi
  if [ "$eo" -lt "$dse" ] && [ $((eo + ne)) -gt "$dse" ]; then ne=$((dse - eo)); fi
  printf '%s\n%s\n%s\n%s\n' "$so" "$se" "$no" "$ne"
  printf '%s %s %s %s %s %s\n' "$oo" "$eo" "$dso" "$deo" "$dse" "$dee"
  tail -c +$((oo + 1)) "$o.stdout" 2>/dev/null | head -c "$no"
  tail -c +$((eo + 1)) "$o.stderr" 2>/dev/null | head -c "$ne"
}

oom_kills() {  # the sandbox's count of OOM kills (cgroup v1 or v2), empty if unknown
  sed -n 's/^oom_kill //p' /sys/fs/cgroup/memory/memory.oom_control 2>/dev/null \
    || sed -n 's/^oom_kill //p' /sys/fs/cgroup/memory.events 2>/dev/null
}

now_ms() {  # wall-clock milliseconds: date's %N, else when a file of ours ($1) was written now
  n=$(date +%s%N 2>/dev/null)
  case $n in ''|*[!0-9]*) ;; *) echo "${n%??????}"; return 0;; esac
  true > "$1" && set -- $(stat -c '%Y %y' "$1" 2>/dev/null)  # 1795937555 2026-11-29 07:32:35.295173381 +0000
  f=${3#*.}; f=${f%"${f#???}"}
  case "$1$f" in ''|*[!0-9]*) echo "$(date +%s)000";; *) echo "$1$f";; esac
}

run() {  # $1 command id, $2 timeout s, $3 output cap, $4 unused (the server's start), $5 flags
  # (1 stdin kept open, 2 a terminal, 4 stdin from $o.stdin); stdin: the command
  d=/run/mcp-sandbox/commands/$1; o=/var/lib/mcp-sandbox/output/$1; tmo=$2; sf=${5:-0}; a=/run/mcp-sandbox/agent
  # A terminal needs the agent (a shell cannot make one).
  if [ $((sf & 2)) -ne 0 ] && [ ! -x "$a" ]; then exit 122; fi
  mkdir -p "$d" /var/lib/mcp-sandbox/output && cat > "$d/command" && now_ms "$d/clock" > "$d/started" \
    && true > "$o.stdout" && true > "$o.stderr" || exit 121
  inp=/dev/null; [ $((sf & 4)) -ne 0 ] && inp=$o.stdin
  if [ $((sf & 3)) -ne 0 ]; then  # a FIFO anyone may write (write_stdin below, the agent)
    mkfifo -m 600 "$d/stdin" || exit 121
    [ $((sf & 2)) -eq 0 ] || true > "$d/tty" || exit 121
  fi
  (
    # The environment the server gives every command (an egress proxy, say).
    if [ -r /var/lib/mcp-sandbox/env ]; then
      while IFS= read -r kv; do case "$kv" in ?*=*) export "$kv" ;; esac; done < /var/lib/mcp-sandbox/env
    fi
    # Its own process group, so a timeout stops the command's children too. Through the agent's
    # wrap when it is here: a shell's background job ignores INT and QUIT, which wrap undoes,
    # and wrap holds a kept-open stdin or runs a terminal.
    wm=plain; [ $((sf & 1)) -ne 0 ] && wm=hold; [ $((sf & 2)) -ne 0 ] && wm=tty
    if [ -x "$a" ]; then set -- "$a" wrap "$wm" "$d"; else set --; fi
    if [ $((sf & 3)) -ne 0 ] && [ ! -x "$a" ]; then  # hold the FIFO open here until stdin_closed
      ( exec 3<> "$d/stdin"; while [ ! -e "$d/stdin_closed" ] && [ ! -e "$d/exit" ]; do sleep 0.2 3>&- 2>/dev/null || sleep 1 3>&-; done ) \
        < /dev/null > /dev/null 2>&1 &
      inp=$d/stdin
    fi
    if [ "$(wc -c < "$d/command")" -le 100000 ]; then
      setsid "$@" /bin/sh -c "$(cat "$d/command")" < "$inp" > "$o.stdout" 2> "$o.stderr" &
    else  # too long for one argument: run it as a script
      setsid "$@" /bin/sh "$d/command" < "$inp" > "$o.stdout" 2> "$o.stderr" &
    fi
    p=$!
    echo "$p" > "$d/pid"
    ob=$(oom_kills)
    (
      sleep "$tmo" & s=$!
      trap 'kill $s 2>/dev/null; exit 0' TERM
      wait $s
      true > "$d/timed_out"
      g=$(tr -dc 0-9 < "$d/pgid" 2>/dev/null)  # a terminal's session (see the agent's wrap)
      kill -TERM -"$p" ${g:+-"$g"} 2>/dev/null; sleep 2; kill -KILL -"$p" ${g:+-"$g"} 2>/dev/null
    ) < /dev/null > /dev/null 2>&1 &
    w=$!
    wait "$p"; rc=$?
    kill "$w" 2>/dev/null
    oa=$(oom_kills)
    if [ "$rc" -ne 0 ] && [ -n "$ob" ] && [ -n "$oa" ] && [ "$oa" -gt "$ob" ]; then echo $((oa - ob)) > "$d/oom_killed"; fi
    now_ms "$d/clock" > "$d/finished"
    echo "$rc" > "$d/exit.tmp" && mv "$d/exit.tmp" "$d/exit"
  ) < /dev/null > /dev/null 2>&1 &
  # The subshell records the result even if this exec session (or the server) goes away.
  wait $!
  report "$d" "$3"
}

read_command() {  # $1 command id, $2 output cap, $3 $4 stdout/stderr offsets
  if [ -d "/run/mcp-sandbox/commands/$1" ]; then report "/run/mcp-sandbox/commands/$1" "$2" "$3" "$4"; else echo MCPSB-NONE; fi
}

write_stdin() {  # $1 command id, $2 1 to close after, $3 length; stdin: the data.
  # "ok WRITTEN TTY STDOUT_SIZE STDERR_SIZE" (the sizes before the write) or "error WHY"
  d=/run/mcp-sandbox/commands/$1
  if [ ! -d "$d" ]; then echo "error no-such-command"
  elif [ ! -p "$d/stdin" ]; then echo "error not-kept-open"
  elif [ -e "$d/stdin_closed" ]; then echo "error closed"
  elif [ -f "$d/exit" ]; then echo "error finished"
  else
    o=/var/lib/mcp-sandbox/output/$1
    so=$(wc -c < "$o.stdout" 2>/dev/null | tr -dc 0-9); se=$(wc -c < "$o.stderr" 2>/dev/null | tr -dc 0-9)
    # A command that does not read its input leaves a full pipe: give up after 2 s (how much of the
    # data it took is then unknown: the agent, which writes without blocking, can tell).
    if command -v timeout > /dev/null 2>&1; then timeout 2 cat > "$d/stdin"; else cat > "$d/stdin"; fi \
      || { echo "error not-reading"; return 0; }
    if [ "$2" = 1 ]; then
      if [ -e "$d/tty" ]; then printf '\004' > "$d/stdin"; fi  # end-of-file on a terminal: ^D
      true > "$d/stdin_closed"
    fi
    t=0; [ -e "$d/tty" ] && t=1
    echo "ok $3 $t ${so:-0} ${se:-0}"; return 0
  fi
  cat > /dev/null
}

signal_command() {  # $1 command id, $2 signal number: "ok" or "error WHY"
  d=/run/mcp-sandbox/commands/$1
  [ -d "$d" ] || { echo "error no-such-command"; return 0; }
  g=$(tr -dc 0-9 < "$d/pgid" 2>/dev/null | head -c 9)
  [ -n "$g" ] || g=$(tr -dc 0-9 < "$d/pid" 2>/dev/null | head -c 9)
  if [ -f "$d/exit" ] || [ -z "$g" ]; then echo "error finished"; return 0; fi
  if kill -"$2" -"$g" 2>/dev/null || kill -"$2" "$g" 2>/dev/null; then echo ok; else echo "error finished"; fi
}

read_file() {  # $1 path, $2 offset, $3 length: "ok SIZE N" and N bytes, or "error WHY"
  p=$1
  if [ ! -e "$p" ]; then
    if [ -L "$p" ]; then echo "error broken-link"; else echo "error missing"; fi; return 0
  fi
  if [ -d "$p" ]; then echo "error directory"; return 0; fi
  if [ ! -f "$p" ]; then echo "error special"; return 0; fi
  exec 3< "$p" 2>/dev/null || { echo "error unreadable"; return 0; }
  s=$(stat -L -c %s /proc/self/fd/3 2>/dev/null | tr -dc 0-9)
  [ -n "$s" ] || { echo "error unreadable"; return 0; }
  n=$((s - $2)); [ "$n" -gt 0 ] || n=0; [ "$n" -le "$3" ] || n=$3
  echo "ok $s $n"
  tail -c +$(($2 + 1)) <&3 | head -c "$n"
}

list_files() {  # $1 path, $2 depth, $3 max: "ok" and lines "MODE(hex) SIZE MTIME ./PATH", or "error WHY"
  p=$1
  if [ ! -e "$p" ]; then
    if [ -L "$p" ]; then echo "error broken-link"; else echo "error missing"; fi; return 0
  fi
  [ -d "$p" ] || { echo "error not-directory"; return 0; }
  cd "$p" 2>/dev/null && [ -r . ] || { echo "error unreadable"; return 0; }
  echo ok
  find . -mindepth 1 -maxdepth "$2" -exec stat -c '%f %s %Y %n' {} + 2>/dev/null | head -n $(($3 + 1))
}

list_commands() {  # lines of: id TAB exit TAB timed_out TAB alive TAB started TAB command preview
  cd /run/mcp-sandbox/commands 2>/dev/null || return 0
  for d in cmd_*; do
    [ -d "$d" ] || continue
    e=; [ -f "$d/exit" ] && e=$(tr -dc 0-9 < "$d/exit" | head -c 9)
    t=0; [ -e "$d/timed_out" ] && t=1
    a=0; [ -f "$d/exit" ] || { kill -0 "$(tr -dc 0-9 < "$d/pid" 2>/dev/null | head -c 9)" 2>/dev/null && a=1; }
    s=$(tr -dc 0-9 < "$d/started" 2>/dev/null | head -c 16)
    printf '%s\t%s\t%s\t%s\t%s\t' "$d" "$e" "$t" "$a" "$s"
    head -c 200 "$d/command" | tr '\n\t\r' '   '
    echo
  done
}

link_file() {  # $1 path, $2 size cap, $3 file id: one line, a verdict and for a file its size
  p=$1
  if [ ! -e "$p" ]; then
    if [ -L "$p" ]; then echo broken-link; else echo missing; fi; return 0
  fi
  if [ -d "$p" ]; then echo directory; return 0; fi
  if [ ! -f "$p" ]; then echo special; return 0; fi
  if [ ! -r "$p" ]; then echo unreadable; return 0; fi
  s=$(stat -L -c %s "$p" 2>/dev/null | tr -dc 0-9)
  [ -n "$s" ] || { echo unreadable; return 0; }
  if [ "$s" -gt "$2" ]; then echo "too-big $s"; return 0; fi
  mkdir -p /var/lib/mcp-sandbox/links && printf '%s' "$p" > "/var/lib/mcp-sandbox/links/$3" || { echo state-unwritable; return 0; }
  echo "file $s"
}

list_links() {  # NUL-separated pairs of file id and path
  cd /var/lib/mcp-sandbox/links 2>/dev/null || return 0
  for f in *; do [ -f "$f" ] && printf '%s\0%s\0' "$f" "$(head -c 4096 "$f")"; done
}

serve_file() {  # $1 path: "ok SIZE" and exactly SIZE bytes, or one line saying why not
  [ -f "$1" ] || { echo gone; return 0; }
  exec 3< "$1" || { echo unreadable; return 0; }
  s=$(stat -L -c %s /proc/self/fd/3 2>/dev/null | tr -dc 0-9)
  [ -n "$s" ] || { echo unreadable; return 0; }
  echo "ok $s"
  exec cat <&3  # the server reads exactly SIZE bytes
}
"""

# Exit code 120: the library is missing (the sandbox was just started, or someone removed it).
LIB_MISSING = 120
# Exit code 121: the library could not write a command's records or output files.
RECORDS_UNWRITABLE = 121
BOOTSTRAP = f'[ -r {LIB_PATH} ] || exit {LIB_MISSING}; . {LIB_PATH}; "$@"'
INSTALL_HELPERS = f"mkdir -p {STATE_DIR} && tar -x -f - -C {STATE_DIR}"


def helpers_digest(agent: Path | None) -> str:
    """Names the helpers a sandbox gets: a new agent or library makes a new digest."""
    digest = hashlib.sha256(SANDBOX_LIB.encode())
    if agent is not None:
        digest.update(agent.read_bytes())
    return digest.hexdigest()[:16]


def helpers_files(agent: Path | None) -> list[tuple[str, bytes, int]]:
    """What every sandbox gets in STATE_DIR, as (name, content, mode): the shell library and the agent."""
    files = [(posixpath.basename(LIB_PATH), SANDBOX_LIB.encode(), 0o644)]
    if agent is not None:
        files.append((posixpath.basename(AGENT_PATH), agent.read_bytes(), 0o755))
    return files


def helpers_tar(files: list[tuple[str, bytes, int]]) -> bytes:
    """A tar stream of the helpers (helpers_files), for an install through podman exec."""
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return stream.getvalue()


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
