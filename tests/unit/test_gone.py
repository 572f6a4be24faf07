"""Commands whose sandbox went away: answered with reason sandbox_gone, to their tenant only, bounded."""

from __future__ import annotations

from dataclasses import replace

from mcp_container_sandbox.sandbox.model import Sandbox
from mcp_container_sandbox.sandbox.runtime.gone_commands import (
    GONE_DESTROYED,
    GONE_REMOVED,
    MAX_SEEN_RUNNING,
    MAX_TOMBSTONES,
    SEEN_OUTPUT_CHARS,
    TOMBSTONE_SECONDS,
    GoneCommands,
)

CID = "a" * 32
CMD = "cmd_0123456789abcdef"


def sandbox(tenant: str = "alice", destroying: bool = False) -> Sandbox:
    return Sandbox(CID, "image", 0.0, 7200.0, destroying=destroying, tenant=tenant, gone_why=GONE_DESTROYED)


def test_a_command_running_when_its_sandbox_went_ends_with_sandbox_gone_for_its_tenant_only() -> None:
    gone = GoneCommands()
    gone.started(CID, CMD)
    gone.bury(CID, sandbox(), GONE_DESTROYED)
    state = gone.gone(CID, CMD, "alice", None)
    assert state is not None and (state.status, state.reason, state.exit_code) == ("killed", "sandbox_gone", None)
    assert state.detail == GONE_DESTROYED
    assert gone.gone(CID, CMD, "mallory", None) is None


def test_a_command_that_never_started_or_ended_is_not_claimed() -> None:
    gone = GoneCommands()
    gone.started(CID, CMD)
    gone.never_started(CID, CMD)
    other = "cmd_fedcba9876543210"
    gone.started(CID, other)
    gone.bury(CID, sandbox(), GONE_DESTROYED)
    assert gone.gone(CID, CMD, "alice", None) is None and gone.gone(CID, other, "alice", None) is not None


def test_while_a_sandbox_is_being_destroyed_its_running_commands_are_told_so() -> None:
    gone = GoneCommands()
    gone.started(CID, CMD)
    assert gone.gone(CID, CMD, "alice", sandbox()) is None  # alive: nothing gone yet
    assert gone.gone(CID, CMD, "alice", sandbox(destroying=True)) is not None
    assert "stopped" in gone.gone(CID, CMD, "alice", sandbox(), stopped=True).detail


def test_memory_stays_bounded() -> None:
    now = [0.0]
    gone = GoneCommands(clock=lambda: now[0])
    for n in range(MAX_SEEN_RUNNING + 5):
        gone.started(CID, f"cmd_{n:016x}")
    gone.bury(CID, sandbox(), GONE_DESTROYED)
    assert gone.gone(CID, f"cmd_{0:016x}", "alice", None) is None  # the oldest was let go
    for n in range(MAX_TOMBSTONES + 1):
        gone.started(f"{n:032x}", CMD)
        gone.bury(f"{n:032x}", replace(sandbox(), container_id=f"{n:032x}"), GONE_DESTROYED)
    assert gone.gone(f"{0:032x}", CMD, "alice", None) is None and gone.gone(f"{MAX_TOMBSTONES:032x}", CMD, "alice", None)
    now[0] = TOMBSTONE_SECONDS + 1
    gone.bury("f" * 32, sandbox(), GONE_DESTROYED)
    assert gone.gone(f"{MAX_TOMBSTONES:032x}", CMD, "alice", None) is None  # older than an hour


def test_the_output_remembered_is_the_end_of_each_stream() -> None:
    gone = GoneCommands()
    gone.started(CID, CMD)
    long = "x" * (SEEN_OUTPUT_CHARS + 10) + "END"
    running = gone.gone(CID, CMD, "alice", sandbox(destroying=True))
    assert running is not None
    gone.seen(CID, replace(running, status="running", reason=None, stdout=long))
    state = gone.gone(CID, CMD, "alice", sandbox(destroying=True))
    assert state is not None and state.stdout.endswith("END") and len(state.stdout) == SEEN_OUTPUT_CHARS and state.truncated


def test_why_a_sandbox_went_is_told_to_its_tenant_only() -> None:
    gone = GoneCommands()
    assert gone.why(CID, "alice") == ""
    gone.bury(CID, sandbox(), GONE_REMOVED)  # nothing was running in it: why it went is kept all the same
    assert gone.why(CID, "alice") == GONE_REMOVED
    assert gone.why(CID, "mallory") == ""
