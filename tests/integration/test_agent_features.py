"""What agents need beyond the seed: long-poll, progress, list_containers, write_file."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time

import anyio
import pytest
from conftest import APP, ServerProcess, podman, structured
from fastmcp import Client

pytestmark = pytest.mark.anyio


async def run(client: Client, container_id: str, command: str, **extra: object) -> dict:
    return structured(await client.call_tool("execute_command", {"container_id": container_id, "command": command, **extra}))


async def test_check_container_long_polls_until_the_command_ends(client: Client, sandbox: str) -> None:
    first = await run(client, sandbox, "sleep 5; echo finished")
    assert first["status"] == "running"
    started = time.monotonic()
    result = structured(await client.call_tool("check_container", {
        "container_id": sandbox, "command_id": first["command_id"], "wait_seconds": 30}))
    waited = time.monotonic() - started
    assert result["command"]["status"] == "completed" and result["command"]["stdout"] == "finished\n"
    assert waited < 4, f"returned {waited:.1f} s later: it should return as soon as the command ends"


async def test_long_poll_returns_at_wait_seconds_for_a_command_still_running(client: Client, sandbox: str) -> None:
    first = await run(client, sandbox, "sleep 30")
    started = time.monotonic()
    result = structured(await client.call_tool("check_container", {
        "container_id": sandbox, "command_id": first["command_id"], "wait_seconds": 2}))
    assert result["command"]["status"] == "running"
    assert 1.5 < time.monotonic() - started < 4


async def test_wait_seconds_is_bounded(client: Client, sandbox: str) -> None:
    result = await client.call_tool("check_container", {"container_id": sandbox, "command_id": "cmd_" + "0" * 16,
                                                        "wait_seconds": 51}, raise_on_error=False)
    assert result.is_error and "wait_seconds" in result.content[0].text


async def test_progress_notifications_carry_the_latest_output_line(client: Client, sandbox: str) -> None:
    messages: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message)

    await client.call_tool("execute_command", {
        "container_id": sandbox, "command": "for i in 1 2 3 4 5 6; do echo line$i; sleep 0.5; done"},
        progress_handler=on_progress)
    assert messages, "no progress notification arrived"
    # Each names the line printed last when it was sent: they follow the output, and move with it.
    numbers = [int(m[4:]) for m in messages if m and re.fullmatch(r"line[1-6]", m)]
    assert numbers == sorted(numbers) and len(set(numbers)) >= 2, messages


async def test_list_containers_shows_my_sandboxes_and_running_commands(client: Client, sandbox: str) -> None:
    running = await run(client, sandbox, "sleep 20")
    listed = structured(await client.call_tool("list_containers", {}))["containers"]
    mine = {c["container_id"]: c for c in listed}
    assert sandbox in mine
    entry = mine[sandbox]
    assert entry["status"] == "running" and entry["image"] == APP.sandboxes.settings.image
    assert running["command_id"] in entry["running_commands"]
    assert 7000 < entry["seconds_remaining"] <= 7200 and entry["expires_at"].endswith("Z")


async def test_list_containers_opens_no_channel_and_still_tells_what_runs(client: Client, sandbox: str) -> None:
    channels = APP.sandboxes.channels
    running = await run(client, sandbox, "sleep 6")
    assert running["status"] == "running"
    quiet = structured(await client.call_tool("create_container", {}))["container_id"]  # nothing ever ran in it
    try:
        await channels.close(sandbox)
        await channels.close(quiet)

        async def listed() -> dict[str, dict]:
            return {c["container_id"]: c for c in structured(await client.call_tool("list_containers", {}))["containers"]}

        entries = await listed()
        # Without a channel, the sandbox with a command seen running is asked (by podman exec).
        assert entries[sandbox]["running_commands"] == [running["command_id"]]
        assert entries[quiet]["running_commands"] == [] and entries[quiet]["status"] == "running"
        assert channels.open_one(sandbox) is None and channels.open_one(quiet) is None  # none was opened
        deadline = time.monotonic() + 20
        while (await listed())[sandbox]["running_commands"]:  # it ends: asked again, told so
            assert time.monotonic() < deadline, "list_containers still shows a command 20 s past its end"
            await anyio.sleep(0.5)
    finally:
        await client.call_tool("destroy_container", {"container_id": quiet})


async def test_write_file_text_without_shell_quoting(client: Client, sandbox: str) -> None:
    content = "quotes ' \" `backticks` $HOME \\ and\nnewlines\n\ttabs ünïcödé\n"
    written = structured(await client.call_tool("write_file", {
        "container_id": sandbox, "path": "/tmp/deep/dir/notes.txt", "content": content}))
    assert written["size_bytes"] == len(content.encode())
    assert (await run(client, sandbox, "cat /tmp/deep/dir/notes.txt"))["stdout"] == content


async def test_write_file_binary_and_executable(client: Client, sandbox: str) -> None:
    blob = os.urandom(200_000)
    await client.call_tool("write_file", {"container_id": sandbox, "path": "/tmp/blob.bin",
                                          "content": base64.b64encode(blob).decode(), "encoding": "base64"})
    digest = (await run(client, sandbox, "sha256sum /tmp/blob.bin"))["stdout"].split()[0]
    assert digest == hashlib.sha256(blob).hexdigest()
    await client.call_tool("write_file", {"container_id": sandbox, "path": "/usr/local/bin/hello",
                                          "content": "#!/bin/sh\necho hello from a script\n", "mode": "755"})
    assert (await run(client, sandbox, "hello"))["stdout"] == "hello from a script\n"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        ({"path": "relative.txt", "content": "x"}, "relative"),
        ({"path": "/tmp", "content": "x"}, "directory"),
        ({"path": "/etc/hostname/below", "content": "x"}, "not a directory"),
        ({"path": "/tmp/x", "content": "%%%", "encoding": "base64"}, "base64"),
        ({"path": "/tmp/x", "content": "x", "encoding": "hex"}, "encoding"),
        ({"path": "/tmp/x", "content": "x", "mode": "999"}, "mode"),
    ],
)
async def test_write_file_bad_input_is_a_clear_error(client: Client, sandbox: str, arguments: dict, expected: str) -> None:
    result = await client.call_tool("write_file", {"container_id": sandbox, **arguments}, raise_on_error=False)
    assert result.is_error and expected in result.content[0].text, result.content[0].text


async def test_write_file_size_cap(client: Client, sandbox: str) -> None:
    limit = APP.sandboxes.settings.write_max_bytes
    result = await client.call_tool("write_file", {"container_id": sandbox, "path": "/tmp/big",
                                                   "content": "x" * (limit + 1)}, raise_on_error=False)
    assert result.is_error and "SANDBOX_WRITE_MAX_BYTES" in result.content[0].text


async def test_tenants_see_only_their_own_containers(start_server) -> None:  # type: ignore[no-untyped-def]
    secured: ServerProcess = start_server({"AUTH_TOKENS": "token-a-0123456789,token-b-0123456789"})
    async with Client(secured.url + "/mcp", auth="token-a-0123456789") as a, \
            Client(secured.url + "/mcp", auth="token-b-0123456789") as b:
        mine = structured(await a.call_tool("create_container", {}))["container_id"]
        theirs = structured(await b.call_tool("create_container", {}))["container_id"]
        assert [c["container_id"] for c in structured(await a.call_tool("list_containers", {}))["containers"]] == [mine]
        assert [c["container_id"] for c in structured(await b.call_tool("list_containers", {}))["containers"]] == [theirs]
        refused = await b.call_tool("write_file", {"container_id": mine, "path": "/tmp/x", "content": "x"}, raise_on_error=False)
        assert refused.is_error and "No sandbox" in refused.content[0].text
        # A command ended by its sandbox's end is told only to the sandbox's own tenant.
        running = structured(await a.call_tool("execute_command", {"container_id": mine, "command": "sleep 30"}))
        await a.call_tool("destroy_container", {"container_id": mine})
        asked = {"container_id": mine, "command_id": running["command_id"]}
        told = structured(await a.call_tool("check_container", asked))["command"]
        assert told["reason"] == "sandbox_gone"
        other = await b.call_tool("check_container", asked, raise_on_error=False)
        never = await b.call_tool("check_container", {**asked, "container_id": "0" * 12}, raise_on_error=False)
        assert other.is_error and other.content[0].text == never.content[0].text.replace("0" * 12, mine)
        await b.call_tool("destroy_container", {"container_id": theirs})


async def test_output_cursors_return_only_what_follows(client: Client, sandbox: str) -> None:
    first = await run(client, sandbox, "echo one; sleep 4; echo two; echo err-two >&2")
    assert first["status"] == "running" and first["stdout"] == "one\n"
    seen = first["stdout_bytes"]
    done = structured(await client.call_tool("check_container", {
        "container_id": sandbox, "command_id": first["command_id"], "wait_seconds": 20,
        "stdout_offset": seen, "stderr_offset": 0}))["command"]
    assert done["status"] == "completed"
    assert done["stdout"] == "two\n" and done["stderr"] == "err-two\n"
    assert (done["stdout_bytes"], done["stdout_offset"]) == (8, 4)
    past_the_end = structured(await client.call_tool("check_container", {
        "container_id": sandbox, "command_id": first["command_id"], "stdout_offset": 100, "stderr_offset": 100}))["command"]
    assert (past_the_end["stdout"], past_the_end["stderr"], past_the_end["truncated"]) == ("", "", False)


async def test_output_cursors_page_through_a_long_output(client: Client, sandbox: str) -> None:
    cap = APP.sandboxes.settings.output_limit_bytes
    made = await run(client, sandbox, "seq 1 100000")
    assert made["truncated"] is True
    expected = "".join(f"{i}\n" for i in range(1, 100001))
    pages, offset = [], 0
    while offset < made["stdout_bytes"]:
        page = structured(await client.call_tool("check_container", {
            "container_id": sandbox, "command_id": made["command_id"], "stdout_offset": offset}))["command"]
        assert len(page["stdout"].encode()) <= cap
        pages.append(page["stdout"])
        offset += len(page["stdout"].encode())
    assert "".join(pages) == expected


async def test_create_container_with_a_shorter_lifetime(client: Client) -> None:
    created = structured(await client.call_tool("create_container", {"ttl_seconds": 600}))
    try:
        info = structured(await client.call_tool("check_container", {"container_id": created["container_id"]}))
        assert 590 <= info["seconds_remaining"] <= 600
    finally:
        await client.call_tool("destroy_container", {"container_id": created["container_id"]})
    too_long = await client.call_tool("create_container", {"ttl_seconds": 10**6}, raise_on_error=False)
    assert too_long.is_error and "SANDBOX_TTL_SECONDS" in too_long.content[0].text


@pytest.mark.parametrize(
    ("command", "timeout", "reason"),
    [
        ("exit 3", 60, None),
        ("kill -9 $$", 60, "killed"),
        ("sleep 30", 1, "timed_out"),
        ("head -c 400000000 /dev/zero | tail > /dev/null", 60, "oom_killed"),
    ],
)
async def test_failure_reasons_come_from_real_evidence(client: Client, sandbox: str, command: str, timeout: int,
                                                       reason: str | None) -> None:
    result = await run(client, sandbox, command, timeout_seconds=timeout)
    if result["status"] == "running":
        result = structured(await client.call_tool("check_container", {
            "container_id": sandbox, "command_id": result["command_id"], "wait_seconds": 30}))["command"]
    assert result.get("reason") == reason, result


async def test_create_container_without_network(client: Client) -> None:
    offline = structured(await client.call_tool("create_container", {"network": False}))["container_id"]
    online = structured(await client.call_tool("create_container", {}))["container_id"]
    try:
        cut_off = await run(client, offline, "ip -o link 2>/dev/null | grep -v ' lo' | wc -l; cat /proc/net/route | wc -l")
        assert cut_off["stdout"].split() == ["0", "1"]  # no interface but loopback, no route
        connected = await run(client, online, "cat /proc/net/route | wc -l")
        assert int(connected["stdout"]) > 1
    finally:
        for container_id in (offline, online):
            await client.call_tool("destroy_container", {"container_id": container_id})


@pytest.mark.parametrize(
    ("how", "why"),
    [
        ("destroy_container", "was destroyed by destroy_container"),
        ("podman rm", "was removed outside this server"),
        ("podman kill", "stopped"),
    ],
)
async def test_a_command_whose_sandbox_goes_away_ends_with_reason_sandbox_gone(client: Client, how: str, why: str) -> None:
    container_id = structured(await client.call_tool("create_container", {}))["container_id"]
    try:
        first = await run(client, container_id, "echo started; sleep 60")
        assert first["status"] == "running"
        if how == "destroy_container":
            await client.call_tool("destroy_container", {"container_id": container_id})
        elif how == "podman rm":
            podman("rm", "-f", "-v", "-t", "0", f"mcp-sandbox-{container_id}")
        else:
            podman("kill", f"mcp-sandbox-{container_id}")
        result = structured(await client.call_tool("check_container", {
            "container_id": container_id, "command_id": first["command_id"], "wait_seconds": 5}))
        command = result["command"]
        assert (command["status"], command["exit_code"], command["reason"]) == ("killed", None, "sandbox_gone"), command
        assert command["stdout"] == "started\n"  # what was last seen of it
        assert why in command["message"] and "create_container" in command["message"]
        if how != "podman kill":
            assert result["status"] == "gone"
            listed = await client.call_tool("check_container", {"container_id": container_id}, raise_on_error=False)
            assert listed.is_error and "No sandbox" in listed.content[0].text
    finally:
        await client.call_tool("destroy_container", {"container_id": container_id}, raise_on_error=False)


async def test_output_files_are_bounded_keeping_head_and_tail(start_server) -> None:  # type: ignore[no-untyped-def]
    file_max = 1024 * 1024
    served: ServerProcess = start_server({"SANDBOX_OUTPUT_FILE_MAX_BYTES": str(file_max)})
    expected = "".join(f"{i}\n" for i in range(1, 800001)).encode()
    async with Client(served.url + "/mcp") as client:
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        result = await run(client, container_id, "seq 1 800000", timeout_seconds=120)
        if result["status"] == "running":
            result = structured(await client.call_tool("check_container", {
                "container_id": container_id, "command_id": result["command_id"], "wait_seconds": 50}))["command"]
        assert result["status"] == "completed" and result["stdout_bytes"] == len(expected)
        start, end = result["stdout_dropped"]
        assert start == file_max // 2 and len(expected) - file_max // 2 - 4096 < end <= len(expected) - file_max // 2
        assert "SANDBOX_OUTPUT_FILE_MAX_BYTES" in result["message"]
        shown = result["stdout"].encode()
        assert shown.startswith(expected[:20000]) and shown.endswith(expected[-20000:])
        # On disk the file holds about file_max bytes; its size (and every offset) stays true.
        usage = await run(client, container_id, f"du -k {result['stdout_path']}; wc -c < {result['stdout_path']}")
        kilobytes, size = int(usage["stdout"].split()[0]), int(usage["stdout"].split()[2])
        assert size == len(expected) and kilobytes <= file_max // 1024 + 64, usage["stdout"]
        # Paging with cursors never returns the hole: a cursor inside it moves to its end.
        pages, offset = [], 0
        while offset < result["stdout_bytes"]:
            page = structured(await client.call_tool("check_container", {
                "container_id": container_id, "command_id": result["command_id"], "stdout_offset": offset}))["command"]
            offset = page.get("stdout_offset", 0)
            pages.append((offset, page["stdout"].encode()))
            offset += len(page["stdout"].encode())
        assert b"".join(data for _, data in pages) == expected[:start] + expected[end:]
        assert end in [at for at, _ in pages]
        # A background process that goes on writing after its command's shell exited is bounded too.
        background = await run(client, container_id, "(sleep 1; seq 1 800000) &")
        assert background["status"] == "completed"
        asked = {"container_id": container_id, "command_id": background["command_id"]}
        for _ in range(60):
            later = structured(await client.call_tool("check_container", asked))["command"]
            if later["stdout_bytes"] == len(expected) and later.get("stdout_dropped"):
                break
            await anyio.sleep(0.5)
        assert later["stdout_bytes"] == len(expected) and later["stdout_dropped"][0] == file_max // 2, later
        await anyio.sleep(0.5)  # the agent's next look, 100 ms apart, punches what came last
        usage = await run(client, container_id, f"du -k {later['stdout_path']}")
        assert int(usage["stdout"].split()[0]) <= file_max // 1024 + 64, usage["stdout"]
        await client.call_tool("destroy_container", {"container_id": container_id})
