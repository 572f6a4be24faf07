"""Paths, content types, download headers and the result a tool returns: what the model reads."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import mcp_container_sandbox.tools.shaping as results
from mcp_container_sandbox.sandbox import paths as layout
from mcp_container_sandbox.sandbox.errors import InvalidPath, write_refusal
from mcp_container_sandbox.sandbox.runtime.command_records import KEEP_RECORDS, parse_report
from mcp_container_sandbox.sandbox.runtime.helpers import SANDBOX_LIB
from mcp_container_sandbox.sandbox.storage.downloads import (
    check_absolute_path,
    content_type,
)
from mcp_container_sandbox.web.routes import content_disposition

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("path", "says"),
    [("", "empty"), ("a\0b", "NUL"), ("out.txt", "'/root/out.txt'"), ("/" + "a" * 5000, "4096 bytes")],
)
def test_a_path_that_is_not_plain_and_absolute_is_refused_with_what_to_pass(path: str, says: str) -> None:
    with pytest.raises(InvalidPath, match=re.escape(says)):
        check_absolute_path(path)


def test_content_types_name_text_as_utf8_and_unknown_as_bytes() -> None:
    assert content_type("/tmp/a.txt") == "text/plain; charset=utf-8"
    assert content_type("/tmp/data.json") == "application/json; charset=utf-8"
    assert content_type("/tmp/blob") == "application/octet-stream"
    assert content_type("/tmp/p.png") == "image/png"


def test_a_write_refusal_explains_the_agents_reason() -> None:
    assert "a parent of it is a file" in write_refusal("/a/b", "parent-not-a-directory")
    assert "it is a directory" in write_refusal("/tmp", "is-a-directory")


def test_a_download_names_its_file_for_old_and_new_browsers() -> None:
    header = content_disposition("résumé 1.pdf")
    assert header == "attachment; filename=\"r_sum__1.pdf\"; filename*=UTF-8''r%C3%A9sum%C3%A9%201.pdf"


def test_a_result_cut_at_the_cap_says_where_the_rest_is() -> None:
    report = b"MCPSB2\n0\n0\n0\n1000\n2000\n900000\n0\n3\n0\n0 0 0 0 0 0\nabc"
    state = parse_report("cmd_0123456789abcdef", report)
    result = results.command_result("c" * 32, state, 100, 1000)
    assert result["truncated"] and result["stdout_path"].endswith(".stdout")
    assert "check_container" in result["message"] and "stdout_offset" in result["message"]


def test_a_running_result_teaches_the_long_poll() -> None:
    report = b"MCPSB2\n\n0\n1\n1000\n\n0\n0\n0\n0\n0 0 0 0 0 0\n"
    result = results.command_result("c" * 32, parse_report("cmd_0123456789abcdef", report), 100, 1000)
    assert result["status"] == "running" and "wait_seconds=30" in result["message"] and "reason" not in result


def test_the_agent_and_the_shell_library_use_the_layouts_paths() -> None:
    agent = (ROOT / "agent" / "sandbox-agent.c").read_text()
    for name in ("COMMANDS_DIR", "OUTPUT_DIR", "LINKS_DIR", "ENV_PATH"):
        assert f'#define {name} "{getattr(layout, name)}"' in agent
    for path in (layout.COMMANDS_DIR, layout.OUTPUT_DIR, layout.LINKS_DIR, layout.ENV_PATH):
        assert path in SANDBOX_LIB
    # and keep as many commands' records as the server says they do
    assert f"#define KEEP_RECORDS {KEEP_RECORDS}\n" in agent
    assert f"head -n $(($# - {KEEP_RECORDS}))" in SANDBOX_LIB


@pytest.mark.anyio
async def test_links_read_back_after_a_restart_survive_failed_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    """A restart adopts every sandbox at once; a read of a sandbox's links that fails is tried
    again, for links dropped at adoption are unknown for good."""
    from types import SimpleNamespace

    from mcp_container_sandbox.sandbox.errors import SandboxError
    from mcp_container_sandbox.sandbox.model import Sandbox
    from mcp_container_sandbox.sandbox.storage import file_links

    monkeypatch.setattr(file_links.anyio, "sleep", lambda seconds: _no_wait())
    box = Sandbox("a" * 32, "img", 0.0, 1e12)
    link = "f" * 32
    failures = [SandboxError("the channel is starting"), SandboxError("again")]

    async def call(sandbox: Sandbox, verb: str, **_: object) -> SimpleNamespace:
        assert verb == "list_links"
        if failures:
            raise failures.pop(0)
        return SimpleNamespace(stdout=f"{link}\0/root/out.txt\0".encode())

    links = file_links.FileLinks(1, 1, get=None, live=lambda c: box,  # type: ignore[arg-type]
                                 runtimes=SimpleNamespace(exec_runtime=SimpleNamespace(call=call)),  # type: ignore[arg-type]
                                 backend=None, spawn_options=dict)  # type: ignore[arg-type]
    await links.adopt(box)
    assert not failures and links._links[link].path == "/root/out.txt"
    failures[:] = [SandboxError("down")] * file_links.ADOPT_TRIES
    gone = file_links.FileLinks(1, 1, get=None, live=lambda c: box,  # type: ignore[arg-type]
                                runtimes=SimpleNamespace(exec_runtime=SimpleNamespace(call=call)),  # type: ignore[arg-type]
                                backend=None, spawn_options=dict)  # type: ignore[arg-type]
    await gone.adopt(box)  # it gives up in the end, and the server goes on
    assert not failures and not gone._links


async def _no_wait() -> None:
    return None
