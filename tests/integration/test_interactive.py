"""Talking to running commands and reading files without a command (issue 15): execute_command's
stdin, keep_stdin_open and tty; write_stdin; send_signal; read_file; list_files. Each through a
real server process and FastMCP's client, with the agent's channel and with podman exec alone
(no agent: SANDBOX_AGENT points nowhere)."""

from __future__ import annotations

import base64
import os
from typing import Any

import pytest
from conftest import ServerProcess, structured
from fastmcp import Client
from fastmcp.exceptions import ToolError

pytestmark = pytest.mark.anyio

PATHS = ["agent", "podman exec"]


def server_env(path: str, **extra: str) -> dict[str, str]:
    env = {"SANDBOX_STDIN_MAX_BYTES": "100000", **extra}
    if path == "podman exec":
        env["SANDBOX_AGENT"] = "/nonexistent/sandbox-agent"
    return env


async def call(client: Client, tool: str, **arguments: Any) -> dict[str, Any]:
    return structured(await client.call_tool(tool, arguments))


async def refused(client: Client, tool: str, **arguments: Any) -> str:
    with pytest.raises(ToolError) as caught:
        await client.call_tool(tool, arguments)
    return str(caught.value)


async def finish(client: Client, container_id: str, command_id: str) -> dict[str, Any]:
    return (await call(client, "check_container", container_id=container_id, command_id=command_id,
                       wait_seconds=20))["command"]


@pytest.mark.parametrize("path", PATHS)
async def test_stdin_text_then_end_of_file(start_server, path: str) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = start_server(server_env(path))
    async with Client(server.url + "/mcp") as client:
        box = (await call(client, "create_container"))["container_id"]
        ran = await call(client, "execute_command", container_id=box, command="tr a-z A-Z; echo end",
                         stdin="hello\nwörld\n")
        assert (ran["exit_code"], ran["stdout"]) == (0, "HELLO\nWöRLD\nend\n"), ran
        # Without stdin, input is empty as before (read hits end-of-file at once).
        empty = await call(client, "execute_command", container_id=box, command="cat; echo done")
        assert empty["stdout"] == "done\n"
        too_big = await refused(client, "execute_command", container_id=box, command="cat", stdin="x" * 100001)
        assert "SANDBOX_STDIN_MAX_BYTES" in too_big and "100,001" in too_big
        await call(client, "destroy_container", container_id=box)


@pytest.mark.parametrize("path", PATHS)
async def test_kept_open_stdin_is_written_in_turns_then_closed(start_server, path: str) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = start_server(server_env(path))
    async with Client(server.url + "/mcp") as client:
        box = (await call(client, "create_container"))["container_id"]
        started = await call(client, "execute_command", container_id=box, keep_stdin_open=True, stdin="first\n",
                             command='echo ready; while read -r line; do echo "got $line"; done; echo bye')
        assert started["status"] == "running" and started["stdin_open"] is True, started
        assert started["stdout"] == "ready\ngot first\n", started
        assert "write_stdin" in started["message"]
        command_id = started["command_id"]
        answered = await call(client, "write_stdin", container_id=box, command_id=command_id, data="second\n")
        # Only what the command printed after this write comes back.
        assert (answered["status"], answered["stdout"], answered["bytes_written"]) == ("running", "got second\n", 7)
        assert answered["stdout_offset"] == len("ready\ngot first\n")
        raw = await call(client, "write_stdin", container_id=box, command_id=command_id,
                         data=base64.b64encode(b"third\n").decode(), encoding="base64", close=True)
        assert raw["stdout"] == "got third\nbye\n" and raw["bytes_written"] == 6, raw
        assert (raw["status"], raw["exit_code"]) == ("completed", 0)
        # Bad input: each a clear error, and the server goes on.
        after = await refused(client, "write_stdin", container_id=box, command_id=command_id, data="more\n")
        assert "closed" in after or "has ended" in after, after
        plain = await call(client, "execute_command", container_id=box, command="sleep 30")
        not_open = await refused(client, "write_stdin", container_id=box, command_id=plain["command_id"], data="x")
        assert "keep_stdin_open=true" in not_open
        unknown = await refused(client, "write_stdin", container_id=box, command_id="cmd_0123456789abcdef", data="x")
        assert "has no command cmd_0123456789abcdef" in unknown
        garbage = await refused(client, "write_stdin", container_id=box, command_id="nope", data="x")
        assert "is not a command_id" in garbage
        cat = await call(client, "execute_command", container_id=box, command="cat", keep_stdin_open=True)
        over = await refused(client, "write_stdin", container_id=box, command_id=cat["command_id"], data="y" * 100001)
        assert "SANDBOX_STDIN_MAX_BYTES" in over
        nothing = await refused(client, "write_stdin", container_id=box, command_id=cat["command_id"], data="")
        assert "nothing to do" in nothing
        bad64 = await refused(client, "write_stdin", container_id=box, command_id=cat["command_id"], data="%%%",
                              encoding="base64")
        assert "not valid base64" in bad64
        # A command that is not reading: what fits is taken, the rest is said to be left.
        stuck = await call(client, "execute_command", container_id=box, command="sleep 60", keep_stdin_open=True)
        if path == "agent":  # it writes without blocking into a pipe of up to 1 MiB, and counts
            taken = []
            while len(taken) < 12 and (not taken or taken[-1] == 100000):
                big = await call(client, "write_stdin", container_id=box, command_id=stuck["command_id"],
                                 data="z" * 100000)
                taken.append(big["bytes_written"])
            # Once the pipe is full, what fitted is counted and the rest is said to be left.
            assert taken[-1] < 100000 and sum(taken) <= 1 << 20 and "not reading its input" in big["message"], taken
            assert big["status"] == "running", big
        else:
            said = await refused(client, "write_stdin", container_id=box, command_id=stuck["command_id"],
                                 data="z" * 100000)
            assert "not reading its input" in said
        await call(client, "send_signal", container_id=box, command_id=stuck["command_id"], signal="KILL")
        ended = await call(client, "write_stdin", container_id=box, command_id=cat["command_id"], data="", close=True)
        assert (ended["status"], ended["exit_code"]) == ("completed", 0), ended
        await call(client, "destroy_container", container_id=box)


@pytest.mark.parametrize("path", PATHS)
async def test_signals_reach_the_command_and_its_children(start_server, path: str) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = start_server(server_env(path))
    async with Client(server.url + "/mcp") as client:
        box = (await call(client, "create_container"))["container_id"]
        # A trap: the command decides its exit code. (Without the agent, a shell's background
        # commands ignore INT, as POSIX shells start them: TERM is trapped there instead.)
        trapped_signal = "INT" if path == "agent" else "TERM"
        trap = await call(client, "execute_command", container_id=box, command=(
            f"trap 'echo trapped; exit 7' {trapped_signal}; echo ready; while :; do sleep 0.1; done"))
        assert trap["status"] == "running" and trap["stdout"] == "ready\n"
        sent = await call(client, "send_signal", container_id=box, command_id=trap["command_id"],
                          signal="SIG" + trapped_signal.lower())
        assert (sent["status"], sent["exit_code"], sent["signal_sent"]) == ("completed", 7, trapped_signal), sent
        assert "reason" not in sent and sent["stdout"] == "ready\ntrapped\n"
        # Killed by the signal: the reason and the signal's name; its child in the group goes too.
        for name, code in (("TERM", 143), ("KILL", 137), ("HUP", 129)):
            victim = await call(client, "execute_command", container_id=box,
                                command="sleep 300 & echo $! > /tmp/child; wait")
            killed = await call(client, "send_signal", container_id=box, command_id=victim["command_id"], signal=name)
            assert (killed["status"], killed["exit_code"], killed["reason"], killed["signal"]) == (
                "completed", code, "killed", name), killed
            child = await call(client, "execute_command", container_id=box,
                               command="sleep 0.2; kill -0 $(cat /tmp/child) 2>/dev/null && echo alive || echo gone")
            assert child["stdout"] == "gone\n", name
        if path == "agent":
            interrupted = await call(client, "execute_command", container_id=box, command="sleep 300")
            ended = await call(client, "send_signal", container_id=box, command_id=interrupted["command_id"],
                               signal="INT")
            assert (ended["exit_code"], ended["signal"]) == (130, "INT"), ended
        # STOP and CONT: the process is stopped, then runs on.
        paused = await call(client, "execute_command", container_id=box, command="echo $$ > /tmp/pid; exec sleep 300")
        stopped = await call(client, "send_signal", container_id=box, command_id=paused["command_id"], signal="STOP")
        assert stopped["status"] == "running"
        state = await call(client, "execute_command", container_id=box, command="grep State /proc/$(cat /tmp/pid)/status")
        assert "T (stopped)" in state["stdout"], state
        await call(client, "send_signal", container_id=box, command_id=paused["command_id"], signal="CONT")
        state = await call(client, "execute_command", container_id=box, command="grep State /proc/$(cat /tmp/pid)/status")
        assert "S (sleeping)" in state["stdout"], state
        # Bad input.
        unknown = await refused(client, "send_signal", container_id=box, command_id=paused["command_id"], signal="FOO")
        assert "is not a signal" in unknown and "INT" in unknown
        numeric = await refused(client, "send_signal", container_id=box, command_id=paused["command_id"], signal="9")
        assert "is not a signal" in numeric
        await call(client, "send_signal", container_id=box, command_id=paused["command_id"], signal="KILL")
        done = await refused(client, "send_signal", container_id=box, command_id=paused["command_id"], signal="TERM")
        assert "already ended" in done
        missing = await refused(client, "send_signal", container_id=box, command_id="cmd_0123456789abcdef",
                                signal="TERM")
        assert "has no command" in missing
        await call(client, "destroy_container", container_id=box)


async def test_a_repl_on_a_terminal_answers_two_commands(start_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = start_server(server_env("agent"))
    async with Client(server.url + "/mcp") as client:
        box = (await call(client, "create_container"))["container_id"]
        shell = await call(client, "execute_command", container_id=box, command="sh -i", tty=True,
                           keep_stdin_open=True)
        assert shell["status"] == "running" and shell["tty"] is True, shell
        assert "# " in shell["stdout"], shell  # the prompt
        first = await call(client, "write_stdin", container_id=box, command_id=shell["command_id"],
                           data="echo $((6*7)); [ -t 0 ] && echo on-a-terminal\n")
        assert "42\r\n" in first["stdout"] and "on-a-terminal" in first["stdout"], first
        second = await call(client, "write_stdin", container_id=box, command_id=shell["command_id"],
                            data="echo $((100+1)) >&2\n")
        assert "101\r\n" in second["stdout"] and second["stderr"] == "", second  # one stream
        # Ctrl-D ends the shell (close=true on a terminal).
        closed = await call(client, "write_stdin", container_id=box, command_id=shell["command_id"], data="",
                            close=True)
        if closed["status"] == "running":
            closed = await finish(client, box, shell["command_id"])
        assert (closed["status"], closed["exit_code"]) == ("completed", 0), closed
        # A terminal without kept-open stdin: the stdin text, then Ctrl-D.
        once = await call(client, "execute_command", container_id=box, command="cat", tty=True, stdin="typed\n")
        assert once["status"] == "completed" and "typed\r\n" in once["stdout"], once
        # Interrupting a program on the terminal reaches its session.
        loop = await call(client, "execute_command", container_id=box, command="sleep 300", tty=True,
                          keep_stdin_open=True)
        stopped = await call(client, "send_signal", container_id=box, command_id=loop["command_id"], signal="INT")
        assert (stopped["exit_code"], stopped["signal"]) == (130, "INT"), stopped
        await call(client, "destroy_container", container_id=box)


async def test_a_terminal_without_the_agent_is_a_clear_error(start_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = start_server(server_env("podman exec"))
    async with Client(server.url + "/mcp") as client:
        box = (await call(client, "create_container"))["container_id"]
        said = await refused(client, "execute_command", container_id=box, command="sh -i", tty=True)
        assert "tty=true needs the sandbox agent" in said
        assert (await call(client, "execute_command", container_id=box, command="echo fine"))["stdout"] == "fine\n"
        await call(client, "destroy_container", container_id=box)


@pytest.mark.parametrize("path", PATHS)
async def test_read_file_pages_text_and_bytes(start_server, path: str) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = start_server(server_env(path, SANDBOX_READ_MAX_BYTES="1000000"))
    async with Client(server.url + "/mcp") as client:
        box = (await call(client, "create_container"))["container_id"]
        blob = os.urandom(2_500_000)
        for start in range(0, len(blob), 1_000_000):  # write_file takes 4 MiB; three appends keep it simple
            await call(client, "write_file", container_id=box, path=f"/root/part{start}",
                       content=base64.b64encode(blob[start:start + 1_000_000]).decode(), encoding="base64")
        await call(client, "execute_command", container_id=box, command="cat /root/part* > /root/blob; rm /root/part*")
        got, offset = b"", 0
        while True:
            piece = await call(client, "read_file", container_id=box, path="/root/blob", offset=offset,
                               encoding="base64")
            assert piece["size_bytes"] == len(blob) and piece["offset"] == offset
            assert piece["length"] <= 1_000_000
            got += base64.b64decode(piece["content"])
            offset += piece["length"]
            if piece["eof"]:
                break
            assert f"offset={offset}" in piece["message"]
        assert got == blob
        # Text: a character cut by the end of a slice is left for the next call.
        text = "ab€cd"  # € is three bytes, at offsets 2..4
        await call(client, "write_file", container_id=box, path="/root/t.txt", content=text)
        first = await call(client, "read_file", container_id=box, path="/root/t.txt", length=3)
        assert (first["content"], first["length"], first["eof"]) == ("ab", 2, False), first
        rest = await call(client, "read_file", container_id=box, path="/root/t.txt", offset=2)
        assert (rest["content"], rest["length"], rest["eof"]) == ("€cd", 5, True), rest
        assert (await call(client, "read_file", container_id=box, path="/root/t.txt", offset=99))["content"] == ""
        binary = await refused(client, "read_file", container_id=box, path="/root/blob", length=1000)
        assert "not UTF-8" in binary and "base64" in binary
        # Paths resolve inside the sandbox: a symbolic link to a host file is not followed there.
        await call(client, "execute_command", container_id=box, command=(
            "ln -s /etc/hostname /root/inside; "
            f"ln -s {os.path.abspath(__file__)} /root/host; mkdir -p /root/dir; mkfifo /root/fifo"))
        inside = await call(client, "read_file", container_id=box, path="/root/inside")
        hostname = await call(client, "execute_command", container_id=box, command="cat /etc/hostname")
        assert inside["content"] == hostname["stdout"] and inside["content"].startswith("sandbox")
        host = await refused(client, "read_file", container_id=box, path="/root/host")
        assert "symbolic link whose target does not exist" in host
        assert "does not exist" in await refused(client, "read_file", container_id=box, path="/root/missing")
        assert "is a folder" in await refused(client, "read_file", container_id=box, path="/root/dir")
        assert "not a regular file" in await refused(client, "read_file", container_id=box, path="/root/fifo")
        assert "is relative" in await refused(client, "read_file", container_id=box, path="root/t.txt")
        await call(client, "destroy_container", container_id=box)


@pytest.mark.parametrize("path", PATHS)
async def test_list_files_describes_entries(start_server, path: str) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = start_server(server_env(path))
    async with Client(server.url + "/mcp") as client:
        box = (await call(client, "create_container"))["container_id"]
        await call(client, "execute_command", container_id=box, command=(
            "mkdir -p /root/w/sub/deeper && printf 12345 > /root/w/a.txt && chmod 751 /root/w/a.txt && "
            "ln -s a.txt /root/w/link && mkfifo /root/w/pipe && touch /root/w/sub/b && touch /root/w/sub/deeper/c && "
            "touch -d '2020-01-02 03:04:05' /root/w/a.txt && touch \"/root/w/odd name\""))
        listed = await call(client, "list_files", container_id=box, path="/root/w")
        entries = {entry["name"]: entry for entry in listed["entries"]}
        assert sorted(entries) == ["a.txt", "link", "odd name", "pipe", "sub"] and listed["truncated"] is False
        assert entries["a.txt"] == {"name": "a.txt", "path": "/root/w/a.txt", "type": "file", "size_bytes": 5,
                                    "mode": "0751", "modified_at": "2020-01-02T03:04:05Z"}
        assert (entries["link"]["type"], entries["sub"]["type"], entries["pipe"]["type"]) == ("symlink", "dir", "other")
        deep = await call(client, "list_files", container_id=box, path="/root/w/", depth=3)
        assert {"/root/w/sub/b", "/root/w/sub/deeper", "/root/w/sub/deeper/c"} <= {e["path"] for e in deep["entries"]}
        assert [e["path"] for e in deep["entries"]] == sorted(e["path"] for e in deep["entries"])
        await call(client, "execute_command", container_id=box,
                   command="mkdir /root/many && cd /root/many && for i in $(seq 1005); do : > f$i; done")
        many = await call(client, "list_files", container_id=box, path="/root/many")
        assert len(many["entries"]) == 1000 and many["truncated"] is True and "first 1,000" in many["message"]
        assert "is a file" in await refused(client, "list_files", container_id=box, path="/root/w/a.txt")
        assert "does not exist" in await refused(client, "list_files", container_id=box, path="/nowhere")
        too_deep = await refused(client, "list_files", container_id=box, path="/root", depth=11)
        assert "depth" in too_deep
        await call(client, "destroy_container", container_id=box)


async def test_another_tenants_commands_and_files_answer_like_missing_ones(start_server) -> None:  # type: ignore[no-untyped-def]
    server: ServerProcess = start_server({"AUTH_TOKENS": "io-token-a-0123456789,io-token-b-0123456789"})
    async with Client(server.url + "/mcp", auth="io-token-a-0123456789") as a, \
            Client(server.url + "/mcp", auth="io-token-b-0123456789") as b:
        box = (await call(a, "create_container"))["container_id"]
        cat = await call(a, "execute_command", container_id=box, command="cat", keep_stdin_open=True)
        await call(a, "write_file", container_id=box, path="/root/secret", content="mine")
        foreign = [
            await refused(b, "write_stdin", container_id=box, command_id=cat["command_id"], data="x"),
            await refused(b, "send_signal", container_id=box, command_id=cat["command_id"], signal="KILL"),
            await refused(b, "read_file", container_id=box, path="/root/secret"),
            await refused(b, "list_files", container_id=box, path="/root"),
        ]
        missing = await refused(b, "read_file", container_id="f" * 12, path="/root/secret")
        assert all(said == missing.replace("f" * 12, box) for said in foreign), (foreign, missing)
        mine = await call(a, "write_stdin", container_id=box, command_id=cat["command_id"], data="x\n", close=True)
        assert mine["stdout"] == "x\n"
        await call(a, "destroy_container", container_id=box)


@pytest.mark.slow
@pytest.mark.parametrize("path", PATHS)
async def test_kept_open_stdin_survives_a_restart_of_the_server(start_server, path: str) -> None:  # type: ignore[no-untyped-def]
    """A restart does not touch a command's kept-open stdin: it is held inside the sandbox (by the
    agent's wrap, or the shell library's holder), so the next server writes and closes it."""
    env = server_env(path)
    first: ServerProcess = start_server(env)
    async with Client(first.url + "/mcp") as client:
        box = (await call(client, "create_container"))["container_id"]
        cat = await call(client, "execute_command", container_id=box, command="cat; echo eof", keep_stdin_open=True)
        await call(client, "write_stdin", container_id=box, command_id=cat["command_id"], data="before\n")
    first.stop()
    second: ServerProcess = start_server({**env, "SANDBOX_NAMESPACE": first.env["SANDBOX_NAMESPACE"]})
    async with Client(second.url + "/mcp") as client:
        still = (await call(client, "check_container", container_id=box, command_id=cat["command_id"]))["command"]
        assert still["status"] == "running", still
        after = await call(client, "write_stdin", container_id=box, command_id=cat["command_id"], data="after\n",
                           close=True)
        if after["status"] == "running":
            after = await finish(client, box, cat["command_id"])
        whole = (await call(client, "check_container", container_id=box, command_id=cat["command_id"]))["command"]
        assert (whole["status"], whole["exit_code"], whole["stdout"]) == ("completed", 0, "before\nafter\neof\n")
        await call(client, "destroy_container", container_id=box)
