"""A sandbox that has run thousands of commands: their records live on the sandbox's 64 MB state
tmpfs (~20 KB each), so without a bound ~3,000 commands filled it and no command could start
(found by the fork-bomb test, whose sibling sandbox answered ~3,300 `echo ok`s). The newest
1,000 finished commands' records and output stay, on both command paths; running ones always do."""

from __future__ import annotations

import anyio
import pytest
from conftest import structured, wait_for_command
from fastmcp import Client

from mcp_container_sandbox.sandbox.paths import COMMANDS_DIR, OUTPUT_DIR
from mcp_container_sandbox.sandbox.runtime.command_records import KEEP_RECORDS

pytestmark = pytest.mark.anyio

FAKES = 2900  # finished records, ~12 KB each on the tmpfs: more than it could take twice over the kept number


def fake_id(i: int) -> str:
    return f"cmd_{10**15 + i}"  # 16 decimal digits are 16 hex digits too (as the shell below makes them)


# Records as the agent and the shell library leave them, started long ago (oldest first); one more
# that never finished and whose process (the sandbox's init, pid 1) still runs. Shell builtins only:
# mkdir runs once for all folders.
FILL = f"""
i=0; dirs=""
while [ $i -lt {FAKES} ]; do dirs="$dirs {COMMANDS_DIR}/cmd_$((1000000000000000 + i))"; i=$((i + 1)); done
mkdir $dirs {COMMANDS_DIR}/cmd_2000000000000000 || exit 1
i=0
while [ $i -lt {FAKES} ]; do
  id=cmd_$((1000000000000000 + i)); d={COMMANDS_DIR}/$id
  echo "echo fake $i" > $d/command; echo $((1000000 + i)) > $d/started; echo 0 > $d/exit
  echo "fake $i" > {OUTPUT_DIR}/$id.stdout; : > {OUTPUT_DIR}/$id.stderr
  i=$((i + 1))
done
d={COMMANDS_DIR}/cmd_2000000000000000; echo "sleep forever" > $d/command; echo 999 > $d/started; echo 1 > $d/pid
echo filled
"""


async def run(client: Client, container_id: str, command: str) -> dict:
    result = structured(await client.call_tool("execute_command", {
        "container_id": container_id, "command": command, "timeout_seconds": 300}))
    if result["status"] == "running":
        result = await wait_for_command(client, container_id, result["command_id"], seconds=300)
    return result


@pytest.mark.parametrize("path", ["agent", "podman exec"])
async def test_a_sandbox_keeps_the_newest_thousand_records_and_goes_on(start_server, path: str) -> None:  # type: ignore[no-untyped-def]
    server = start_server({"SANDBOX_AGENT": "/nonexistent/sandbox-agent"} if path == "podman exec" else {})
    async with Client(server.url + "/mcp") as client:
        box = structured(await client.call_tool("create_container", {}))["container_id"]
        filled = await run(client, box, FILL)
        assert filled["stdout"] == "filled\n", filled
        after = await run(client, box, "echo after")  # its start is what finds too many records
        assert after["stdout"] == "after\n", after

        async def records() -> list[str]:
            listing = await run(client, box, f"ls {COMMANDS_DIR} | grep -c ^cmd_; ls {COMMANDS_DIR}/{fake_id(0)} "
                                             f"{OUTPUT_DIR}/{fake_id(0)}.stdout 2>&1 | grep -c 'No such'")
            return listing["stdout"].split()

        # The agent removes them before its next request; the library after its report: poll.
        for polls in range(1, 61):
            count, gone = [int(n) for n in await records()]
            if gone == 2:  # the oldest fake's record and output file
                break
            await anyio.sleep(0.5)
        assert gone == 2 and count <= KEEP_RECORDS + polls + 1, (count, gone)  # + the commands since then
        newest = fake_id(FAKES - 1)
        kept = structured(await client.call_tool("check_container", {"container_id": box, "command_id": newest}))
        assert kept["command"]["stdout"] == f"fake {FAKES - 1}\n", kept
        running = await run(client, box, f"cat {COMMANDS_DIR}/cmd_2000000000000000/command")
        assert running["stdout"] == "sleep forever\n"  # a command still running is never removed
        oldest = await client.call_tool("check_container", {"container_id": box, "command_id": fake_id(0)},
                                        raise_on_error=False)
        assert oldest.is_error and f"newest {KEEP_RECORDS:,} finished commands" in oldest.content[0].text
        mine = structured(await client.call_tool("check_container", {"container_id": box,
                                                                     "command_id": after["command_id"]}))
        assert mine["command"]["stdout"] == "after\n"
        await client.call_tool("destroy_container", {"container_id": box})
