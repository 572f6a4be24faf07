"""The report frames a sandbox sends back (MCPSB1, MCPSB2, damaged ones) and the command list."""

from __future__ import annotations

import pytest

from mcp_container_sandbox.sandbox.runtime.command_records import (
    MAX_LISTED_COMMANDS,
    CommandState,
    last_line,
    parse_command_list,
    parse_report,
)

ID = "cmd_0123456789abcdef"


def frame(exit_code: str = "0", flag: str = "0", alive: str = "0", started: str = "1795937555000", finished: str = "1795937557000",
          stdout: bytes = b"", stderr: bytes = b"", sizes: tuple[int, int] | None = None,
          offsets: str = "0 0 0 0 0 0", version: str = "MCPSB2") -> bytes:
    total = sizes or (len(stdout), len(stderr))
    head = f"{version}\n{exit_code}\n{flag}\n{alive}\n{started}\n{finished}\n{total[0]}\n{total[1]}\n{len(stdout)}\n{len(stderr)}\n"
    if version == "MCPSB2":
        head += offsets + "\n"
    return head.encode() + stdout + stderr


def test_a_completed_command_reads_back_whole() -> None:
    state = parse_report(ID, frame(stdout=b"out\n", stderr=b"err\n"))
    assert isinstance(state, CommandState)
    assert (state.status, state.exit_code, state.stdout, state.stderr, state.truncated) == ("completed", 0, "out\n", "err\n", False)
    assert state.duration_ms == 2000 and state.reason is None
    assert state.stdout_path == f"/var/lib/mcp-sandbox/output/{ID}.stdout"


def test_an_older_agents_mcpsb1_frame_is_still_read() -> None:
    state = parse_report(ID, frame(version="MCPSB1", stdout=b"hi"))
    assert state is not None and state.stdout == "hi" and state.stdout_dropped is None


def test_a_command_the_sandbox_does_not_know_is_none() -> None:
    assert parse_report(ID, b"MCPSB-NONE\n") is None


@pytest.mark.parametrize("data", [b"", b"garbage\n", b"MCPSB2\n0\n0\n", frame(offsets="1 2 3")])
def test_a_damaged_frame_is_an_error_not_a_result(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_report(ID, data)


@pytest.mark.parametrize(
    ("exit_code", "flag", "alive", "status", "reason"),
    [
        ("", "0", "1", "running", None),
        ("", "0", "0", "killed", "killed"),
        ("143", "1", "0", "timed_out", "timed_out"),
        ("137", "oom", "0", "completed", "oom_killed"),
        ("137", "0", "0", "completed", "killed"),
        ("3", "0", "0", "completed", None),
    ],
)
def test_status_and_reason_come_from_what_the_sandbox_recorded(
    exit_code: str, flag: str, alive: str, status: str, reason: str | None
) -> None:
    state = parse_report(ID, frame(exit_code=exit_code, flag=flag, alive=alive))
    assert state is not None and (state.status, state.reason) == (status, reason)


def test_cut_output_says_so_and_dropped_ranges_come_back() -> None:
    state = parse_report(ID, frame(stdout=b"abc", sizes=(10, 0), offsets="0 0 4 8 0 0"))
    assert state is not None and state.truncated and state.stdout_bytes == 10
    assert state.stdout_dropped == (4, 8) and state.stderr_dropped is None


def test_a_cursor_moved_past_a_dropped_range_is_reported() -> None:
    state = parse_report(ID, frame(stdout=b"tail", sizes=(12, 0), offsets="8 0 4 8 0 0"), stdout_offset=5)
    assert state is not None and state.stdout_offset == 8 and not state.truncated


def test_the_command_list_keeps_valid_lines_in_start_order() -> None:
    listing = (
        "cmd_bbbbbbbbbbbbbbbb\t0\t0\t0\t2000\techo b\n"
        "not-a-command\t0\t0\t0\t1\tx\n"
        "cmd_aaaaaaaaaaaaaaaa\t\t0\t1\t1000\tsleep 9\n"
        "cmd_cccccccccccccccc\t\t0\t0\t3000\tgone\n"
    ).encode()
    listed = parse_command_list(listing)
    assert [(c.command_id[-1], c.status) for c in listed] == [("a", "running"), ("b", "completed"), ("c", "killed")]
    assert listed[0].started_at == 1.0 and listed[0].command == "sleep 9"


def test_the_command_list_is_capped() -> None:
    lines = "".join(f"cmd_{i:016x}\t0\t0\t0\t{i}\tx\n" for i in range(1, MAX_LISTED_COMMANDS + 11))
    listed = parse_command_list(lines.encode())
    assert len(listed) == MAX_LISTED_COMMANDS and listed[-1].started_at == (MAX_LISTED_COMMANDS + 10) / 1000


def test_progress_shows_the_latest_line() -> None:
    state = parse_report(ID, frame(exit_code="", alive="1", stdout=b"one\ntwo\n"))
    assert state is not None and last_line(state) == "two"
    quiet = parse_report(ID, frame(exit_code="", alive="1"))
    assert quiet is not None and last_line(quiet) == "running"
