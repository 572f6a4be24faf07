"""Arguments are taken as each tool's schema says and nothing looser, and every tool that takes a
container_id answers an unknown one the same clear way (through FastMCP's client in memory, over
the stand-in backend). The lax coercions below were found by a generated run
(tests/integration/test_generated_inputs.py); each is kept here as a regression test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_tools_stand_in import StandIn, standing_in

pytestmark = pytest.mark.anyio

UNKNOWN = "0" * 32
SOME = {"command": "echo hi", "command_id": "cmd_0000000000000000", "data": "x", "signal": "TERM", "path": "/tmp/a",
        "content": "x", "port": 8000, "network": False}

# (tool, arguments beside a live container_id where the tool takes one, the argument the error must name)
LAX = [
    ("create_container", {"ttl_seconds": True}, "ttl_seconds"),  # was a lifetime of 1 second
    ("execute_command", {"command": "echo", "timeout_seconds": True}, "timeout_seconds"),  # was 1 second
    ("check_container", {"command_id": "cmd_0000000000000000", "wait_seconds": True}, "wait_seconds"),
    ("check_container", {"command_id": "cmd_0000000000000000", "stdout_offset": True}, "stdout_offset"),
    ("execute_command", {"command": "cat", "keep_stdin_open": -0.0}, "keep_stdin_open"),  # was false
    ("execute_command", {"command": "echo", "tty": 1}, "tty"),
    ("create_container", {"network": "false"}, "network"),  # a string, never a boolean
    ("create_container", {"image": "   "}, "image"),  # was the default image
    ("create_container", {"idempotency_key": ""}, "idempotency_key"),
    ("create_container", {"volumes": [{"name": "v", "path": "/data", "read_only": 0}]}, "read_only"),
    ("create_container", {"volumes": [{"name": " ", "path": "/data"}]}, "name"),
    ("read_file", {"path": " \t"}, "path"),
    ("send_signal", {"command_id": "cmd_0000000000000000", "signal": " "}, "signal"),
    ("expose_port", {"port": 8000.5}, "port"),
    ("snapshot_container", {"name": "  "}, "name"),
    ("delete_volume", {"name": ""}, "name"),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def stand_in(tmp_path: Path) -> AsyncIterator[StandIn]:
    async with standing_in(tmp_path) as made:
        yield made


async def takes_container_id(stand_in: StandIn) -> list[str]:
    return [tool.name for tool in await stand_in.client.list_tools() if "container_id" in tool.input_schema.get(
        "properties", {})]


@pytest.mark.parametrize(("tool", "arguments", "named"), LAX, ids=[f"{t}-{n}" for t, _, n in LAX])
async def test_a_loose_argument_is_refused_naming_it_and_nothing_happens(
    stand_in: StandIn, tool: str, arguments: dict[str, Any], named: str
) -> None:
    live = await stand_in.sandbox()
    if tool in await takes_container_id(stand_in):
        arguments = {"container_id": live, **arguments}
    said = await stand_in.refused(tool, **arguments)
    assert named in said, said
    assert len(stand_in.backend.containers) == 1  # no sandbox made by a refused create
    listed = await stand_in.call("check_container", container_id=live)
    assert listed["commands"] == []  # no command started by a refused execute_command


async def test_whole_numbers_written_as_numbers_are_still_taken(stand_in: StandIn) -> None:
    live = await stand_in.sandbox(ttl_seconds=60)
    ran = await stand_in.call("execute_command", container_id=live, command="echo hi", timeout_seconds=5,
                              keep_stdin_open=False)
    assert ran["stdout"] == "hi\n"
    checked = await stand_in.call("check_container", container_id=live, command_id=ran["command_id"], wait_seconds=0.5)
    assert checked["command"]["exit_code"] == 0


async def test_every_tool_that_takes_a_container_id_says_an_unknown_one_is_unknown(stand_in: StandIn) -> None:
    tools = await takes_container_id(stand_in)
    assert len(tools) == 12, tools  # the 11 of issue 30 and set_egress
    for tool in tools:
        schema = next(t for t in await stand_in.client.list_tools() if t.name == tool).input_schema
        arguments = {name: SOME[name] for name in schema.get("required", []) if name != "container_id"}
        said = await stand_in.refused(tool, container_id=UNKNOWN, **arguments)
        assert f"No sandbox with container_id '{UNKNOWN}'" in said and "create_container" in said, (tool, said)
