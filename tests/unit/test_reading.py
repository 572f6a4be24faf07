"""How list_files' lines and a command's exit code are read (sandbox/storage/file_reading.py, runtime/command_records.py)."""

from __future__ import annotations

from mcp_container_sandbox.sandbox.runtime.command_records import killed_by
from mcp_container_sandbox.sandbox.storage.file_reading import parse_listing


def test_listing_lines_become_entries_and_a_name_with_a_newline_stays_whole() -> None:
    frame = (b"ok\n"
             b"81a4 5 1577934245 ./a.txt\n"
             b"41ed 4096 1577934245 ./sub\n"
             b"a1ff 5 1577934245 ./sub/link\n"
             b"81a4 0 0 ./two\nlines\n"
             b"11b6 0 0 ./pipe\n")
    entries = parse_listing(frame, "/root/w/")
    assert [(e.path, e.type, e.size_bytes, e.mode) for e in entries] == [
        ("/root/w/a.txt", "file", 5, "0644"),
        ("/root/w/sub", "dir", 4096, "0755"),
        ("/root/w/sub/link", "symlink", 5, "0777"),
        ("/root/w/two\nlines", "file", 0, "0644"),
        ("/root/w/pipe", "other", 0, "0666"),
    ]
    assert entries[0].modified_at == "2020-01-02T03:04:05Z" and entries[3].name == "two\nlines"
    assert parse_listing(b"ok\n81a4 1 0 ./x\n", "/")[0].path == "/x"


def test_exit_codes_of_signals_name_the_signal() -> None:
    assert [killed_by(code) for code in (130, 137, 143, 129, 131, 138, 140)] == [
        "INT", "KILL", "TERM", "HUP", "QUIT", "USR1", "USR2"]
    # STOP and CONT do not end a process; ordinary exit codes are not signals.
    assert [killed_by(code) for code in (0, 1, 7, 128, 147, 146, 255, None)] == [None] * 8
