"""The tools through FastMCP's in-memory client, against real Podman sandboxes."""

from __future__ import annotations

import re
import time

import anyio
import pytest
from conftest import APP, inspect, podman, structured, wait_for_command, wait_until
from fastmcp import Client

from mcp_container_sandbox.tools import tool_names

pytestmark = pytest.mark.anyio


async def run(client: Client, container_id: str, command: str, **extra: object) -> dict:
    result = await client.call_tool("execute_command", {"container_id": container_id, "command": command, **extra})
    return structured(result)


async def test_lists_the_contracts_five_tools_and_the_others_with_annotations(client: Client) -> None:
    tools = {tool.name: tool for tool in await client.list_tools()}
    assert {"create_container", "execute_command", "check_container", "destroy_container", "get_file_url"} <= set(tools)
    assert sorted(tools) == sorted(tool_names())
    assert tools["destroy_container"].annotations.destructive_hint is True
    assert tools["check_container"].annotations.read_only_hint is True
    assert tools["get_file_url"].annotations.read_only_hint is True
    schema = tools["execute_command"].input_schema["properties"]
    assert schema["timeout_seconds"]["default"] == 600
    assert schema["timeout_seconds"]["minimum"] == 1


async def test_usage_example_today_date_with_a_terminal(client: Client) -> None:
    created = structured(await client.call_tool("create_container", {}))
    try:
        assert created["status"] == "running"
        assert re.fullmatch(r"[0-9a-f]{32}", created["container_id"])
        assert created["expires_at"].endswith("Z") and created["created_at"] < created["expires_at"]
        result = await run(client, created["container_id"], "date -u +%Y-%m-%d")
        assert result["status"] == "completed"
        assert result["exit_code"] == 0
        assert result["stdout"].strip() == time.strftime("%Y-%m-%d", time.gmtime())
        assert result["truncated"] is False
        assert isinstance(result["duration_ms"], int)
    finally:
        await client.call_tool("destroy_container", {"container_id": created["container_id"]})


async def test_sandbox_has_the_exact_limits_and_labels(client: Client, sandbox: str) -> None:
    info = inspect(f"mcp-sandbox-{sandbox}")
    host = info["HostConfig"]
    assert host["Memory"] == 256 * 1024 * 1024
    assert host["NanoCpus"] == 500_000_000
    assert host["PidsLimit"] == 100
    assert "no-new-privileges" in " ".join(host.get("SecurityOpt") or [])
    labels = info["Config"]["Labels"]
    assert labels["mcp-sandbox.managed"] == "true"
    assert labels["mcp-sandbox.namespace"] == APP.sandboxes.settings.namespace
    assert float(labels["mcp-sandbox.expires-at"]) - float(labels["mcp-sandbox.created-at"]) == pytest.approx(7200)
    status = await run(client, sandbox, "grep -E '^(CapEff|NoNewPrivs)' /proc/self/status")
    assert "CapEff:\t0000000000000000" in status["stdout"]
    assert "NoNewPrivs:\t1" in status["stdout"]


async def test_nonzero_exit_is_a_result_with_separate_streams(client: Client, sandbox: str) -> None:
    result = await run(client, sandbox, "echo out; echo err >&2; exit 7")
    assert (result["status"], result["exit_code"], result["stdout"], result["stderr"]) == ("completed", 7, "out\n", "err\n")


async def test_commands_get_no_stdin(client: Client, sandbox: str) -> None:
    started = time.monotonic()
    result = await run(client, sandbox, "cat; read line; echo read=$?")
    assert result["status"] == "completed"
    assert result["stdout"] == "read=1\n"
    assert time.monotonic() - started < 3


async def test_shell_syntax_and_quoting_reach_the_shell_untouched(client: Client, sandbox: str) -> None:
    result = await run(client, sandbox, "x='a b'; printf '%s|' \"$x\" $x; echo \"$(echo nested)\" | tr a-z A-Z")
    assert result["stdout"] == "a b|a|b|NESTED\n"


async def test_long_command_runs_as_a_script(client: Client, sandbox: str) -> None:
    filler = "x" * 200_000
    result = await run(client, sandbox, f": '{filler}'\necho long-ok")
    assert (result["exit_code"], result["stdout"]) == (0, "long-ok\n")


async def test_command_goes_async_and_check_container_follows_it(client: Client, sandbox: str) -> None:
    started = time.monotonic()
    first = await run(client, sandbox, "echo start; sleep 5; echo end")
    assert 2.5 < time.monotonic() - started < 4.5
    assert first["status"] == "running"
    assert first["stdout"] == "start\n"
    assert "check_container" in first["message"]
    finished = await wait_for_command(client, sandbox, first["command_id"])
    assert (finished["status"], finished["exit_code"], finished["stdout"]) == ("completed", 0, "start\nend\n")


async def test_several_commands_run_at_once_in_one_sandbox(client: Client, sandbox: str) -> None:
    results: dict[int, dict] = {}

    async def one(n: int) -> None:
        results[n] = await run(client, sandbox, f"sleep 1; echo {n}")

    started = time.monotonic()
    async with anyio.create_task_group() as tg:
        for n in range(4):
            tg.start_soon(one, n)
    assert time.monotonic() - started < 3  # not one after the other
    assert {n: r["stdout"] for n, r in results.items()} == {n: f"{n}\n" for n in range(4)}
    assert len({r["command_id"] for r in results.values()}) == 4


async def test_timeout_stops_the_command_and_its_children_inside_the_sandbox(client: Client, sandbox: str) -> None:
    result = await run(client, sandbox, "sleep 300 & sleep 301", timeout_seconds=1)
    assert result["status"] == "timed_out"
    assert result["exit_code"] in (137, 143)
    deadline = time.monotonic() + 15  # the watchdog's grace period (2 s) before SIGKILL, on a loaded machine
    while True:
        processes = await run(client, sandbox, "ps -o args")
        if "sleep 300" not in processes["stdout"] and "sleep 301" not in processes["stdout"]:
            break
        assert time.monotonic() < deadline, processes["stdout"]
        await anyio.sleep(0.2)


async def test_background_process_does_not_hold_the_call(client: Client, sandbox: str) -> None:
    started = time.monotonic()
    result = await run(client, sandbox, "sleep 30 > /dev/null 2>&1 & echo started")
    assert result["status"] == "completed" and result["stdout"] == "started\n"
    assert time.monotonic() - started < 2.5


async def test_output_is_capped_and_the_whole_stream_stays_in_the_sandbox(client: Client, sandbox: str) -> None:
    cap = APP.sandboxes.settings.output_limit_bytes
    result = await run(client, sandbox, "yes 0123456789 | head -c 1000000; echo tail-marker")
    assert result["truncated"] is True
    head, marker, tail = result["stdout"].partition("\n[... ")
    assert len(head.encode()) == cap // 2 and head.startswith("0123456789\n")
    assert tail.endswith("tail-marker\n")  # the end, where errors are, is kept
    assert len(tail.split("...]\n", 1)[1].encode()) == cap // 2
    assert "stdout_offset=" in tail
    assert result["stdout_bytes"] == 1_000_000 + len("tail-marker\n")
    tail = await run(client, sandbox, f"tail -c 12 {result['stdout_path']}")
    assert tail["stdout"] == "tail-marker\n"


async def test_check_container_lists_status_lifetime_and_commands(client: Client, sandbox: str) -> None:
    done = await run(client, sandbox, "exit 3")
    info = structured(await client.call_tool("check_container", {"container_id": sandbox}))
    assert info["status"] == "running"
    assert 7100 < info["seconds_remaining"] <= 7200
    listed = {c["command_id"]: c for c in info["commands"]}
    assert listed[done["command_id"]]["exit_code"] == 3
    assert listed[done["command_id"]]["command"] == "exit 3"
    one = structured(await client.call_tool("check_container", {"container_id": sandbox, "command_id": done["command_id"]}))
    assert one["command"]["exit_code"] == 3 and one["command"]["status"] == "completed"


async def test_get_file_url_describes_the_file(client: Client, sandbox: str) -> None:
    await run(client, sandbox, "echo 'Hello World' > /tmp/hello.txt")
    link = structured(await client.call_tool("get_file_url", {"container_id": sandbox, "path": "/tmp/hello.txt"}))
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/files/[A-Za-z0-9_-]{32,}", link["url"])
    assert (link["path"], link["size_bytes"]) == ("/tmp/hello.txt", 12)
    assert link["content_type"].startswith("text/plain")


async def test_destroy_removes_the_container(client: Client) -> None:
    created = structured(await client.call_tool("create_container", {}))
    name = f"mcp-sandbox-{created['container_id']}"
    assert podman("container", "exists", name, check=False).returncode == 0
    result = structured(await client.call_tool("destroy_container", {"container_id": created["container_id"]}))
    assert result == {"container_id": created["container_id"], "destroyed": True}
    # Unusable at once; its container goes in the background.
    gone = await client.call_tool("execute_command", {"container_id": created["container_id"], "command": "true"},
                                  raise_on_error=False)
    assert gone.is_error and "destroyed" in gone.content[0].text
    await wait_until(lambda: podman("container", "exists", name, check=False).returncode == 1)


# --------------------------------------------------------------------------- bad input


async def error_text(client: Client, tool: str, arguments: dict) -> str:
    result = await client.call_tool(tool, arguments, raise_on_error=False)
    assert result.is_error, f"{tool}({arguments!r}) should have failed, got {result.structured_content}"
    return result.content[0].text


@pytest.mark.parametrize(
    ("tool", "extra"),
    [
        ("execute_command", {"command": "true"}),
        ("check_container", {}),
        ("destroy_container", {}),
        ("get_file_url", {"path": "/etc/hostname"}),
    ],
)
async def test_unknown_container_is_a_clear_error(client: Client, tool: str, extra: dict) -> None:
    for container_id in ["0" * 32, "not-an-id", "../../etc"]:
        text = await error_text(client, tool, {"container_id": container_id, **extra})
        assert "No sandbox with container_id" in text and "create_container" in text
    text = await error_text(client, tool, {"container_id": " ", **extra})  # blank: refused before any lookup
    assert "container_id" in text and "a blank string" in text, text


async def test_destroyed_container_is_a_clear_error_and_server_keeps_serving(client: Client) -> None:
    created = structured(await client.call_tool("create_container", {}))
    await client.call_tool("destroy_container", {"container_id": created["container_id"]})
    text = await error_text(client, "execute_command", {"container_id": created["container_id"], "command": "true"})
    assert "No sandbox" in text
    text = await error_text(client, "destroy_container", {"container_id": created["container_id"]})
    assert "No sandbox" in text


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        ("", "empty"),
        ("   \n\t", "empty"),
        ("echo a\0b", "NUL"),
    ],
)
async def test_bad_commands_are_clear_errors(client: Client, sandbox: str, command: str, expected: str) -> None:
    text = await error_text(client, "execute_command", {"container_id": sandbox, "command": command})
    assert expected in text
    assert (await run(client, sandbox, "echo still-serving"))["stdout"] == "still-serving\n"


async def test_oversized_command_is_a_clear_error(client: Client, sandbox: str) -> None:
    limit = APP.sandboxes.settings.max_command_bytes
    text = await error_text(client, "execute_command", {"container_id": sandbox, "command": "#" * (limit + 1)})
    assert f"{limit:,}" in text and "limit" in text


async def test_bad_timeout_is_rejected(client: Client, sandbox: str) -> None:
    text = await error_text(client, "execute_command", {"container_id": sandbox, "command": "true", "timeout_seconds": 0})
    assert "timeout_seconds" in text


@pytest.mark.parametrize(
    ("setup", "path", "expected"),
    [
        ("true", "tmp/relative.txt", "relative"),
        ("true", "", "a blank string"),  # refused with the field's name before the sandbox is asked
        ("true", "/no/such/file", "does not exist"),
        ("mkdir -p /tmp/adir", "/tmp/adir", "directory"),
        ("true", "/dev/null", "not a regular file"),
        ("mkfifo /tmp/fifo", "/tmp/fifo", "not a regular file"),
        ("ln -sf /nowhere /tmp/dangling", "/tmp/dangling", "symbolic link"),
    ],
)
async def test_bad_file_paths_are_clear_errors(client: Client, sandbox: str, setup: str, path: str, expected: str) -> None:
    await run(client, sandbox, setup)
    started = time.monotonic()
    text = await error_text(client, "get_file_url", {"container_id": sandbox, "path": path})
    assert expected in text
    assert time.monotonic() - started < 5  # a FIFO is refused at once, not read


async def test_image_not_on_the_allow_list_is_refused(client: Client) -> None:
    text = await error_text(client, "create_container", {"image": "docker.io/library/ubuntu:latest"})
    assert "not allowed" in text and APP.sandboxes.settings.image in text


async def test_unknown_and_malformed_command_ids_are_clear_errors(client: Client, sandbox: str) -> None:
    text = await error_text(client, "check_container", {"container_id": sandbox, "command_id": "cmd_" + "0" * 16})
    assert "has no command" in text
    text = await error_text(client, "check_container", {"container_id": sandbox, "command_id": "../../etc/passwd"})
    assert "not a command_id" in text


async def test_destroying_a_sandbox_under_a_running_command_is_reported(client: Client) -> None:
    container_id = structured(await client.call_tool("create_container", {}))["container_id"]
    outcome: dict = {}

    async def run_long() -> None:
        outcome["result"] = await client.call_tool(
            "execute_command", {"container_id": container_id, "command": "touch /tmp/began; sleep 5; echo done"},
            raise_on_error=False,
        )

    async with anyio.create_task_group() as tg:
        tg.start_soon(run_long)
        deadline = time.monotonic() + 20
        while (await run(client, container_id, "test -e /tmp/began"))["exit_code"] != 0:  # the command runs
            assert time.monotonic() < deadline and "result" not in outcome, outcome
            await anyio.sleep(0.05)
        await client.call_tool("destroy_container", {"container_id": container_id})
    result = outcome["result"]
    assert not result.is_error, result.content[0].text
    ended = structured(result)
    assert (ended["status"], ended["exit_code"], ended["reason"]) == ("killed", None, "sandbox_gone")
    assert "was destroyed by destroy_container" in ended["message"] and "create_container" in ended["message"]
