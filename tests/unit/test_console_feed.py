"""Which commands the console's feed follows: every running one and the newest others, up to a
bound; what falls out is forgotten, so a sandbox with many commands is not read again and again."""

from __future__ import annotations

from mcp_container_sandbox.sandbox import CommandSummary
from mcp_container_sandbox.web.console_feed import KEPT_COMMANDS, CommandFeed, Seen


def summary(n: int, status: str = "completed") -> CommandSummary:
    return CommandSummary(command_id=f"c{n:03d}", command=f"echo {n}", status=status, exit_code=0, started_at=float(n))


def test_the_feed_follows_the_running_and_the_newest_commands_within_its_bound() -> None:
    feed = CommandFeed(sandboxes=None, container_id="x", tenant="t", cap=1024)  # type: ignore[arg-type]
    summaries = [summary(n) for n in range(50)] + [CommandSummary(
        command_id="old-running", command="sleep 1000", status="running", exit_code=None, started_at=0.5)]
    feed.seen["c001"] = Seen("echo 1", status="completed")  # followed before, now too old to show
    followed = feed._followed(summaries)
    ids = [s.command_id for s in followed]
    assert len(ids) == KEPT_COMMANDS and ids[0] == "old-running"  # oldest first, the running one kept
    assert ids[1:] == [f"c{n:03d}" for n in range(50 - KEPT_COMMANDS + 1, 50)]
    assert "c001" not in feed.seen
    many_running = [summary(n, "running") for n in range(KEPT_COMMANDS + 5)]
    assert [s.command_id for s in feed._followed(many_running + [summary(99)])] == [s.command_id for s in many_running]
