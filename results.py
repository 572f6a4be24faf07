"""How a command's result reads to a model: the fields of execute_command and check_container,
and a message that says what happened and what to do next."""

from __future__ import annotations

from typing import Any

from sandbox import MEMORY_MB, CommandState, killed_by

# What to do about a command that did not simply exit, by its reason (records.py finds it).
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
    notes = []
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
