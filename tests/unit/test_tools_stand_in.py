"""The tool layer over the real facade, against the STAND-IN backend (tests/support/stand_in_backend.py):
what each tool returns and how it refuses bad input, through FastMCP's client in memory, without
Podman. What needs real sandboxes (limits, egress, processes, snapshots) is in tests/integration."""

from __future__ import annotations

import base64
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import anyio
import pytest
from fastmcp import Client
from support.stand_in_backend import Outcome, StandInBackend

from mcp_container_sandbox.app import App, create_app
from mcp_container_sandbox.sandbox import LIMITS
from mcp_container_sandbox.settings import SandboxSettings, ServerSettings, Settings
from mcp_container_sandbox.tools import tool_names

pytestmark = pytest.mark.anyio

BASE_URL = "https://sandbox.example"
BIG = "print-5000"  # a program of the stand-in's that prints 5,000 bytes


def programs(command: str) -> Outcome | None:
    if command == BIG:
        return Outcome(stdout=b"".join(b"%04d\n" % i for i in range(1000)))
    if command == "print-latin1":
        return Outcome(stdout=b"caf\xe9\n")
    return None


@dataclass
class StandIn:
    client: Client
    backend: StandInBackend
    app: App

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        return (await self.client.call_tool(tool, arguments)).structured_content

    async def refused(self, tool: str, **arguments: Any) -> str:
        """The text of the tool error the call gets (it must get one)."""
        result = await self.client.call_tool(tool, arguments, raise_on_error=False)
        assert result.is_error, result.structured_content
        return result.content[0].text

    async def sandbox(self, **arguments: Any) -> str:
        return (await self.call("create_container", **arguments))["container_id"]


def settings(tmp_path: Path, **sandbox: Any) -> Settings:
    values: dict[str, Any] = dict(
        image="stand-in/default:1", allowed_images=("stand-in/other:2",), namespace="stand-in",
        state_dir=str(tmp_path / "state"), disk_dir=str(tmp_path / "disks"), disk_limit_bytes=0, pool_size=0,
        egress="none", agent_path=str(tmp_path / "no-agent"), sync_wait_seconds=0.3, output_limit_bytes=1024,
        max_containers=3, ttl_seconds=600, write_max_bytes=4096, file_max_bytes=2048, max_command_bytes=2048,
        stdin_max_bytes=1024, max_ports=2, reap_interval_seconds=60,
    )
    values.update(sandbox)
    return Settings(ServerSettings(base_url=BASE_URL, preview_domain="preview.example"), SandboxSettings(**values))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@asynccontextmanager
async def standing_in(tmp_path: Path) -> AsyncIterator[StandIn]:
    """The server over the stand-in backend, and FastMCP's client talking to it in memory."""
    backend = StandInBackend([programs])
    app = create_app(settings(tmp_path), backend)
    async with Client(app.mcp) as client:
        yield StandIn(client, backend, app)


@pytest.fixture
async def stand_in(tmp_path: Path) -> AsyncIterator[StandIn]:
    async with standing_in(tmp_path) as made:
        yield made


def epoch(iso: str) -> float:
    return datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S%z").timestamp()


# --------------------------------------------------------------------------- the registry


async def test_the_tools_listed_are_the_registered_ones_each_with_a_title(stand_in: StandIn) -> None:
    listed = await stand_in.client.list_tools()
    assert [tool.name for tool in listed] == tool_names()
    assert len(listed) == 19 and all(tool.annotations and tool.annotations.title for tool in listed)


# --------------------------------------------------------------------------- sandboxes


async def test_create_returns_the_sandbox_with_its_limits_lifetime_and_egress(stand_in: StandIn) -> None:
    created = await stand_in.call("create_container")
    assert re.fullmatch(r"[0-9a-f]{32}", created["container_id"])
    assert created["image"] == "stand-in/default:1" and created["status"] == "running"
    assert created["limits"] == LIMITS and created["egress"]["policy"] == "none"
    assert created["snapshot_on_expiry"] is False and "snapshot_id" not in created
    assert epoch(created["expires_at"]) - epoch(created["created_at"]) == pytest.approx(600, abs=1)
    assert f"mcp-sandbox-{created['container_id']}" in stand_in.backend.containers


async def test_create_with_a_shorter_ttl_expires_sooner(stand_in: StandIn) -> None:
    created = await stand_in.call("create_container", ttl_seconds=60)
    assert epoch(created["expires_at"]) - epoch(created["created_at"]) == pytest.approx(60, abs=1)


async def test_a_ttl_over_the_servers_maximum_says_the_maximum(stand_in: StandIn) -> None:
    said = await stand_in.refused("create_container", ttl_seconds=601)
    assert "between 1 and 600" in said and "SANDBOX_TTL_SECONDS" in said


async def test_a_ttl_of_zero_is_refused_naming_the_field(stand_in: StandIn) -> None:
    said = await stand_in.refused("create_container", ttl_seconds=0)
    assert "ttl_seconds" in said and "greater than or equal to 1" in said


async def test_an_image_off_the_allow_list_is_refused_with_the_list(stand_in: StandIn) -> None:
    said = await stand_in.refused("create_container", image="evil/miner:latest")
    assert "not allowed" in said and "stand-in/default:1" in said and "stand-in/other:2" in said
    assert not stand_in.backend.containers


async def test_an_image_on_the_allow_list_is_used(stand_in: StandIn) -> None:
    assert (await stand_in.call("create_container", image="stand-in/other:2"))["image"] == "stand-in/other:2"


async def test_the_sandbox_quota_refuses_one_more_and_says_what_to_do(stand_in: StandIn) -> None:
    for _ in range(3):
        await stand_in.sandbox()
    said = await stand_in.refused("create_container")
    assert "3" in said and "destroy" in said.lower()
    assert len(stand_in.backend.containers) == 3


async def test_list_containers_shows_each_sandbox_with_its_running_commands(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    running = await stand_in.call("execute_command", container_id=container_id, command="sleep 30")
    listed = (await stand_in.call("list_containers"))["containers"]
    assert [entry["container_id"] for entry in listed] == [container_id]
    assert listed[0]["status"] == "running" and listed[0]["running_commands"] == [running["command_id"]]
    assert 0 < listed[0]["seconds_remaining"] <= 600


async def test_check_container_shows_status_lifetime_egress_ports_and_commands(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    ran = await stand_in.call("execute_command", container_id=container_id, command="echo hi")
    shown = await stand_in.call("check_container", container_id=container_id)
    assert shown["status"] == "running" and shown["ports"] == [] and shown["snapshot_on_expiry"] is False
    assert shown["egress"]["policy"] == "none"
    assert [(c["command_id"], c["status"], c["exit_code"]) for c in shown["commands"]] == [
        (ran["command_id"], "completed", 0)]


async def test_a_destroyed_sandbox_is_gone_and_says_so(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    assert await stand_in.call("destroy_container", container_id=container_id) == {
        "container_id": container_id, "destroyed": True}
    said = await stand_in.refused("execute_command", container_id=container_id, command="echo hi")
    assert container_id in said and "destroyed" in said
    deadline = time.monotonic() + 5
    while stand_in.backend.containers and time.monotonic() < deadline:  # removed in the background
        await anyio.sleep(0.02)
    assert not stand_in.backend.containers


async def test_a_sandbox_past_its_lifetime_is_gone_before_the_reaper_removes_it(stand_in: StandIn) -> None:
    """Found by tests/integration/test_model_checked.py: it stayed listed (and in the tenant's quota,
    which counts what is listed) until the reaper came by."""
    expiring, staying = await stand_in.sandbox(ttl_seconds=1), await stand_in.sandbox()
    while time.time() < epoch((await stand_in.call("check_container", container_id=staying))["created_at"]) + 2.1:
        await anyio.sleep(0.1)  # the reaper looks once a minute here: the record outlives the lifetime
    assert f"mcp-sandbox-{expiring}" in stand_in.backend.containers
    listed = (await stand_in.call("list_containers"))["containers"]
    assert [c["container_id"] for c in listed] == [staying]
    assert "its lifetime ended" in await stand_in.refused("check_container", container_id=expiring)


async def test_an_unknown_sandbox_says_how_to_find_ones(stand_in: StandIn) -> None:
    said = await stand_in.refused("check_container", container_id="0" * 32)
    assert "0" * 32 in said and ("list_containers" in said or "create_container" in said)


# --------------------------------------------------------------------------- commands


async def test_a_command_returns_its_output_and_exit_code(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    result = await stand_in.call("execute_command", container_id=container_id, command="echo hello")
    assert (result["status"], result["exit_code"], result["stdout"], result["stderr"]) == ("completed", 0, "hello\n", "")
    assert result["stdout_bytes"] == 6 and result["truncated"] is False and "message" not in result
    assert re.fullmatch(r"cmd_[0-9a-f]{16}", result["command_id"])


async def test_a_non_zero_exit_is_a_result_not_an_error(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    result = await stand_in.call("execute_command", container_id=container_id, command="exit 3")
    assert result["status"] == "completed" and result["exit_code"] == 3


async def test_a_missing_program_is_exit_127_with_the_shells_words(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    result = await stand_in.call("execute_command", container_id=container_id, command="frobnicate --all")
    assert result["exit_code"] == 127 and "frobnicate: not found" in result["stderr"]


@pytest.mark.parametrize(("command", "says"), [
    ("   ", "The command is empty"),
    ("echo a\0b", "NUL character"),
    ("echo " + "x" * 3000, "SANDBOX_MAX_COMMAND_BYTES"),
])
async def test_a_command_that_cannot_run_is_refused_with_why(stand_in: StandIn, command: str, says: str) -> None:
    container_id = await stand_in.sandbox()
    assert says in await stand_in.refused("execute_command", container_id=container_id, command=command)


async def test_a_long_command_goes_on_and_check_container_waits_for_its_end(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    started = await stand_in.call("execute_command", container_id=container_id, command="sleep 1")
    assert started["status"] == "running" and started["exit_code"] is None
    assert "check_container" in started["message"] and started["command_id"] in started["message"]
    ended = await stand_in.call("check_container", container_id=container_id, command_id=started["command_id"],
                                wait_seconds=5)
    assert ended["command"]["status"] == "completed" and ended["command"]["exit_code"] == 0


async def test_long_output_keeps_its_head_and_tail_and_says_where_the_rest_is(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    result = await stand_in.call("execute_command", container_id=container_id, command=BIG)
    assert result["truncated"] is True and result["stdout_bytes"] == 5000
    assert result["stdout"].startswith("0000\n") and result["stdout"].endswith("0999\n")
    assert "bytes of stdout omitted" in result["stdout"]
    assert result["stdout_path"].endswith(f"{result['command_id']}.stdout") and "stdout_offset" in result["message"]


async def test_check_container_pages_output_from_a_byte_offset(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    command_id = (await stand_in.call("execute_command", container_id=container_id, command=BIG))["command_id"]
    page = (await stand_in.call("check_container", container_id=container_id, command_id=command_id,
                                stdout_offset=4990))["command"]
    assert page["stdout"] == "0998\n0999\n" and page["stdout_offset"] == 4990


async def test_a_command_past_its_timeout_is_timed_out_with_advice(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    started = await stand_in.call("execute_command", container_id=container_id, command="sleep 30", timeout_seconds=1)
    ended = (await stand_in.call("check_container", container_id=container_id, command_id=started["command_id"],
                                 wait_seconds=5))["command"]
    assert ended["status"] == "timed_out" and ended["reason"] == "timed_out"
    assert "larger timeout_seconds" in ended["message"]


async def test_send_signal_interrupts_a_running_command(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    started = await stand_in.call("execute_command", container_id=container_id, command="sleep 30")
    result = await stand_in.call("send_signal", container_id=container_id, command_id=started["command_id"],
                                 signal="SIGINT")
    assert result["signal_sent"] == "INT" and result["exit_code"] == 130
    assert result["reason"] == "killed" and result["signal"] == "INT"


async def test_send_signal_refuses_an_unknown_signal_listing_the_known(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    started = await stand_in.call("execute_command", container_id=container_id, command="sleep 30")
    said = await stand_in.refused("send_signal", container_id=container_id, command_id=started["command_id"],
                                  signal="SIGWINCH")
    assert "INT" in said and "TERM" in said


async def test_send_signal_to_an_ended_command_says_it_ended(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    ran = await stand_in.call("execute_command", container_id=container_id, command="echo done")
    said = await stand_in.refused("send_signal", container_id=container_id, command_id=ran["command_id"], signal="TERM")
    assert "already ended" in said


async def test_a_command_id_of_the_wrong_shape_says_what_ids_look_like(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    said = await stand_in.refused("check_container", container_id=container_id, command_id="42")
    assert "cmd_0123456789abcdef" in said


async def test_write_stdin_types_into_a_command_kept_open_and_close_ends_it(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    started = await stand_in.call("execute_command", container_id=container_id, command="cat", keep_stdin_open=True)
    assert started["status"] == "running" and started["stdin_open"] is True
    answer = await stand_in.call("write_stdin", container_id=container_id, command_id=started["command_id"],
                                 data="hello\n")
    assert answer["bytes_written"] == 6 and answer["stdout"] == "hello\n" and answer["stdin_open"] is True
    closed = await stand_in.call("write_stdin", container_id=container_id, command_id=started["command_id"],
                                 data="", close=True)
    assert closed["status"] == "completed"


async def test_write_stdin_to_a_command_not_kept_open_says_how_to_start_one(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    started = await stand_in.call("execute_command", container_id=container_id, command="sleep 30")
    said = await stand_in.refused("write_stdin", container_id=container_id, command_id=started["command_id"], data="x")
    assert "keep_stdin_open=true" in said


async def test_write_stdin_refuses_data_that_is_not_base64(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    started = await stand_in.call("execute_command", container_id=container_id, command="cat", keep_stdin_open=True)
    said = await stand_in.refused("write_stdin", container_id=container_id, command_id=started["command_id"],
                                  data="not base64!", encoding="base64")
    assert "not valid base64" in said


async def test_stdin_over_the_limit_is_refused_with_the_way_around(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    said = await stand_in.refused("execute_command", container_id=container_id, command="cat", stdin="x" * 2000)
    assert "SANDBOX_STDIN_MAX_BYTES" in said and "write_file" in said


# --------------------------------------------------------------------------- files


async def test_write_file_then_read_file_round_trips_text(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    written = await stand_in.call("write_file", container_id=container_id, path="/root/app/main.py", content="print(1)\n")
    assert written == {"container_id": container_id, "path": "/root/app/main.py", "size_bytes": 9, "mode": "644"}
    read = await stand_in.call("read_file", container_id=container_id, path="/root/app/main.py")
    assert (read["content"], read["size_bytes"], read["eof"], read["encoding"]) == ("print(1)\n", 9, True, "text")


async def test_write_file_and_read_file_carry_binary_as_base64(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    data = bytes(range(256))
    await stand_in.call("write_file", container_id=container_id, path="/tmp/blob", encoding="base64",
                        content=base64.b64encode(data).decode())
    read = await stand_in.call("read_file", container_id=container_id, path="/tmp/blob", encoding="base64")
    assert base64.b64decode(read["content"]) == data


async def test_a_relative_path_is_refused_with_an_absolute_suggestion(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    said = await stand_in.refused("write_file", container_id=container_id, path="notes.txt", content="x")
    assert "'/root/notes.txt'" in said


async def test_write_file_over_the_limit_says_the_limit(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    said = await stand_in.refused("write_file", container_id=container_id, path="/tmp/big", content="x" * 5000)
    assert "SANDBOX_WRITE_MAX_BYTES" in said


async def test_read_file_pages_and_says_where_the_next_part_starts(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    await stand_in.call("write_file", container_id=container_id, path="/tmp/abc", content="abcdefghij")
    part = await stand_in.call("read_file", container_id=container_id, path="/tmp/abc", offset=2, length=3)
    assert (part["content"], part["offset"], part["length"], part["eof"]) == ("cde", 2, 3, False)
    assert "offset=5" in part["message"]


async def test_read_file_as_text_of_bytes_that_are_not_utf8_says_use_base64(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    await stand_in.call("write_file", container_id=container_id, path="/tmp/latin1", encoding="base64",
                        content=base64.b64encode(b"caf\xe9\n").decode())
    said = await stand_in.refused("read_file", container_id=container_id, path="/tmp/latin1")
    assert "encoding='base64'" in said


async def test_read_file_of_a_missing_file_says_so(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    said = await stand_in.refused("read_file", container_id=container_id, path="/tmp/nothing-here")
    assert "/tmp/nothing-here" in said


async def test_list_files_lists_entries_with_type_size_and_mode(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    await stand_in.call("write_file", container_id=container_id, path="/root/a/b.txt", content="12345")
    listed = await stand_in.call("list_files", container_id=container_id, path="/root", depth=2)
    entries = {entry["path"]: entry for entry in listed["entries"]}
    assert entries["/root/a"]["type"] == "dir" and entries["/root/a/b.txt"]["type"] == "file"
    assert entries["/root/a/b.txt"]["size_bytes"] == 5 and entries["/root/a/b.txt"]["mode"] == "0644"
    assert listed["truncated"] is False
    shallow = await stand_in.call("list_files", container_id=container_id, path="/root")
    assert [entry["path"] for entry in shallow["entries"]] == ["/root/a"]


async def test_list_files_of_a_file_says_it_is_not_a_folder(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    said = await stand_in.refused("list_files", container_id=container_id, path="/etc/os-release")
    assert "/etc/os-release" in said


async def test_get_file_url_gives_a_download_url_on_the_servers_base_url(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    await stand_in.call("write_file", container_id=container_id, path="/tmp/report.txt", content="done\n")
    link = await stand_in.call("get_file_url", container_id=container_id, path="/tmp/report.txt")
    assert re.fullmatch(re.escape(BASE_URL) + r"/files/[A-Za-z0-9_-]{32,64}", link["url"])
    assert (link["path"], link["size_bytes"]) == ("/tmp/report.txt", 5)
    assert link["content_type"].startswith("text/plain")


async def test_get_file_url_of_a_file_over_the_limit_says_its_size(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    stand_in.backend.containers[f"mcp-sandbox-{container_id}"].files["/tmp/huge"] = b"x" * 3000
    said = await stand_in.refused("get_file_url", container_id=container_id, path="/tmp/huge")
    assert "3,000 bytes" in said


async def test_get_file_url_of_a_missing_file_says_so(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    said = await stand_in.refused("get_file_url", container_id=container_id, path="/tmp/nope.txt")
    assert "/tmp/nope.txt" in said


# --------------------------------------------------------------------------- snapshots


async def test_snapshots_start_empty_and_an_unknown_one_cannot_be_deleted_or_forked(stand_in: StandIn) -> None:
    assert await stand_in.call("list_snapshots") == {"snapshots": []}
    for tool in ("delete_snapshot", "create_container"):
        said = await stand_in.refused(tool, snapshot_id="snap_0000000000000000")
        assert "No snapshot with snapshot_id 'snap_0000000000000000'" in said and "list_snapshots" in said


async def test_a_snapshot_where_the_storage_keeps_no_layer_is_refused_and_the_sandbox_goes_on(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    said = await stand_in.refused("snapshot_container", container_id=container_id)
    assert "overlay" in said and "An operator can give sandboxes disks" in said
    ran = await stand_in.call("execute_command", container_id=container_id, command="echo still here")
    assert ran["stdout"] == "still here\n"


# --------------------------------------------------------------------------- preview links


async def test_expose_port_gives_one_url_per_port_and_check_container_lists_it(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    first = await stand_in.call("expose_port", container_id=container_id, port=8000)
    token = re.fullmatch(re.escape(BASE_URL) + r"/ports/([0-9a-f]{40})/", first["url"]).group(1)
    assert first["host_url"] == f"https://{token}.preview.example/" and first["port"] == 8000
    assert (await stand_in.call("expose_port", container_id=container_id, port=8000))["url"] == first["url"]
    ports = (await stand_in.call("check_container", container_id=container_id))["ports"]
    assert ports == [{"port": 8000, "url": first["url"], "host_url": first["host_url"]}]


async def test_expose_port_past_the_limit_says_the_limit(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    await stand_in.call("expose_port", container_id=container_id, port=8000)
    await stand_in.call("expose_port", container_id=container_id, port=8001)
    said = await stand_in.refused("expose_port", container_id=container_id, port=8002)
    assert "2" in said


async def test_expose_port_refuses_a_port_out_of_range_naming_the_field(stand_in: StandIn) -> None:
    container_id = await stand_in.sandbox()
    said = await stand_in.refused("expose_port", container_id=container_id, port=70000)
    assert "port" in said and "65535" in said
