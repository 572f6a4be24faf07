"""How results read to a model, in one place: a command's fields (execute_command, check_container,
write_stdin, send_signal) with a message that says what happened and what to do next, and the
records of sandboxes, snapshots, preview links and file slices as the tools return them."""

from __future__ import annotations

import base64
import binascii
from typing import Any
from urllib.parse import urlsplit

from fastmcp.exceptions import ToolError

from ..sandbox import (
    MEMORY_MB,
    CommandState,
    PortLink,
    Sandbox,
    Snapshot,
    killed_by,
    utc_iso,
)

# What to do about a command that did not simply exit, by its reason (runtime/command_records.py finds it).
_REASON_ADVICE = {
    "timed_out": "The command reached its timeout and was stopped inside the sandbox (with its child "
                 "processes). Run it again with a larger timeout_seconds, or start it in the background.",
    "oom_killed": f"Part of the command was killed because the sandbox reached its {MEMORY_MB} MB memory limit. Use "
                  "less memory: smaller inputs, streaming instead of loading everything, fewer parallel jobs (make -j1).",
    "killed": "The command was ended by a signal or left no exit status (exit code {exit_code}): it was killed, "
              "or its sandbox was restarted. If nothing in it sent that signal, run it again.",
    "sandbox_gone": "The command's sandbox {detail} while the command ran, so the command ended with it; the "
                    "output shown is the end of what was last seen of it. Create a new sandbox with "
                    "create_container and run the command again there.",
}


def command_result(
    container_id: str, state: CommandState, output_limit_bytes: int, output_file_max_bytes: int,
    stdin_open: bool = False, wait_seconds: int = 30,
) -> dict[str, Any]:
    """A command's state as execute_command and check_container return it, with what to do next
    (wait_seconds: how long to tell the model to wait for a running one)."""
    result: dict[str, Any] = {
        "status": state.status,
        "command_id": state.command_id,
        "exit_code": state.exit_code,
        "stdout": state.stdout,
        "stderr": state.stderr,
        "stdout_bytes": state.stdout_bytes,
        "stderr_bytes": state.stderr_bytes,
        "truncated": state.truncated,
        "duration_ms": state.duration_ms,
    }
    if state.stdout_offset or state.stderr_offset:
        result["stdout_offset"] = state.stdout_offset
        result["stderr_offset"] = state.stderr_offset
    notes = _output_notes(result, state, output_limit_bytes, output_file_max_bytes)
    if state.status == "running" and stdin_open:
        result["stdin_open"] = True
        notes.append(
            "The command is running with its stdin open (the output so far is above). Type into it with "
            f"write_stdin(container_id={container_id!r}, command_id={state.command_id!r}, data='...\\n'); "
            "close=true ends its input, send_signal stops it."
        )
    elif state.status == "running":
        notes.append(
            "The command is still running in the background; the output so far is above. Call check_container "
            f"with container_id={container_id!r}, command_id={state.command_id!r} and wait_seconds={wait_seconds} to get "
            "its result as soon as it ends."
        )
    elif state.reason:
        notes.append(_REASON_ADVICE[state.reason].format(
            exit_code="none" if state.exit_code is None else state.exit_code, detail=state.detail
        ))
        result["reason"] = state.reason
        signal = killed_by(state.exit_code) if state.reason == "killed" else None
        if signal:
            result["signal"] = signal
    if notes:
        result["message"] = " ".join(notes)
    return result


def _output_notes(result: dict[str, Any], state: CommandState, output_limit_bytes: int,
                  output_file_max_bytes: int) -> list[str]:
    """What the model must know of output it was not shown whole (and the fields that locate it)."""
    notes: list[str] = []
    if state.truncated and state.reason != "sandbox_gone":  # else the files went with the sandbox
        result["stdout_path"] = state.stdout_path
        result["stderr_path"] = state.stderr_path
        notes.append(
            f"Output was longer than {output_limit_bytes:,} bytes per stream: its beginning "
            "and its end are shown, with a marker where bytes were left out. The whole streams are in the "
            f"sandbox at {state.stdout_path} and {state.stderr_path}: page through them with check_container "
            "(stdout_offset, stderr_offset), read them with execute_command, or share them with get_file_url."
        )
    dropped = {name: span for name, span in (("stdout", state.stdout_dropped), ("stderr", state.stderr_dropped)) if span}
    for name, (start, end) in dropped.items():
        result[f"{name}_dropped"] = [start, end]
    if dropped:
        keep = output_file_max_bytes // 2
        spans = " and ".join(f"bytes {start:,} to {end:,} of {name}" for name, (start, end) in dropped.items())
        notes.append(
            f"So that output cannot fill the sandbox's disk, each stream's file keeps its first and last {keep:,} "
            f"bytes: {spans} were not kept (SANDBOX_OUTPUT_FILE_MAX_BYTES). Redirect large output to a file of "
            "your own (command > /tmp/out.log) to keep all of it."
        )
    return notes


def sandbox_times(sandbox: Sandbox, now: float | None = None) -> dict[str, Any]:
    return {
        "created_at": utc_iso(sandbox.created_at),
        "expires_at": utc_iso(sandbox.expires_at),
        "seconds_remaining": sandbox.seconds_remaining(now),
    }


def volume_fields(sandbox: Sandbox) -> list[dict[str, Any]]:
    return [{"name": m.name, "path": m.path, "read_only": m.read_only} for m in sandbox.volumes]


def snapshot_fields(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "snapshot_id": snapshot.snapshot_id,
        "name": snapshot.name,
        "size_bytes": snapshot.size_bytes,
        "created_at": utc_iso(snapshot.created_at),
        "expires_at": utc_iso(snapshot.expires_at),
        "source_container_id": snapshot.source_container_id,
        "reason": snapshot.reason,
        "image": snapshot.image,
    }


def port_link_fields(link: PortLink, base_url: str, preview_domain: str) -> dict[str, Any]:
    """A preview link's URLs: under /ports/ on this server, and at its own host under PREVIEW_DOMAIN."""
    shown: dict[str, Any] = {"port": link.port, "url": f"{base_url}/ports/{link.token}/"}
    if preview_domain:
        shown["host_url"] = f"{urlsplit(base_url).scheme}://{link.token}.{preview_domain}/"
    return shown


def decoded(text: str, encoding: str, name: str) -> bytes:
    """A tool's text argument as bytes: UTF-8, or base64 when encoding says so."""
    if encoding != "base64":
        return text.encode("utf-8", errors="surrogatepass")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ToolError(f"{name} is not valid base64. Encode the bytes with standard base64, or use encoding='text'.") from None


def utf8_text(data: bytes, eof: bool, path: str) -> tuple[str, int]:
    """The bytes as UTF-8 text, and how many of them it holds: a character cut by the end of the
    slice is left for the next call."""
    for cut in range(0, 4 if not eof else 1):
        try:
            return data[: len(data) - cut].decode("utf-8"), len(data) - cut
        except UnicodeDecodeError:
            continue
    raise ToolError(f"{path[:200]!r} is not UTF-8 text at these bytes. Read it with encoding='base64'.")
