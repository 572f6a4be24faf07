"""tools/waits.py: the wait each MCP session is told, from what it has shown (no Podman, no server)."""

from __future__ import annotations

import mcp_container_sandbox.tools.waits as waits
import pytest
from mcp_container_sandbox.tools.waits import (
    FIRST_WAIT,
    LONG_WAIT,
    SessionWaits,
    WaitAdvisor,
)


def test_a_python_sdk_client_that_did_not_name_itself_is_told_a_short_wait_unless_it_asks_for_progress() -> None:
    advisor = WaitAdvisor()
    assert advisor.of("a", "mcp").suggested() == FIRST_WAIT < 5  # under the OpenAI Agents SDK's 5 s
    assert advisor.of("a", "mcp").suggested(progress=True) == LONG_WAIT
    assert advisor.of("b", "claude-ai").suggested() == LONG_WAIT
    assert advisor.of(None, None).suggested() == LONG_WAIT
    assert LONG_WAIT < waits.MAX_WAIT < 60  # the TypeScript SDK's default request timeout


def test_a_client_that_gave_up_on_a_wait_is_told_waits_under_half_of_how_long_it_lasted() -> None:
    advisor = WaitAdvisor()
    session = advisor.of("s", "my-agent")
    assert session.allowed(30) == 30
    with advisor.waiting(session):
        session.waiting[next(iter(session.waiting))] -= 6.2  # the wait began 6.2 s ago
        again = advisor.of("s", "my-agent")  # and the client asks again: it gave up
    assert again is session and 6.2 <= session.gave_up_after < 7
    assert session.suggested() == 3 and session.allowed(30) == 3 and session.allowed(2) == 2
    assert session.waiting == {} and session.answered is None  # the wait given up on was not taken
    advisor.of("s", "my-agent")
    assert session.tolerated == 0


def test_a_short_session_is_told_the_longest_wait_it_has_taken() -> None:
    advisor = WaitAdvisor()
    session = advisor.of("s", "mcp")
    with advisor.waiting(session):
        session.waiting[next(iter(session.waiting))] -= 12.0  # a wait of 12 s the model asked for itself
    assert session.suggested() == FIRST_WAIT  # not yet known to have reached the client
    advisor.of("s", "mcp")  # the next request came after the answer: the client took it
    assert session.tolerated >= 12 and session.suggested() == 12 and session.gave_up_after is None


def test_calls_made_together_are_not_taken_for_a_timeout() -> None:
    advisor = WaitAdvisor()
    session = advisor.of("s", "mcp")
    with advisor.waiting(session):
        advisor.of("s", "mcp")  # a parallel tool call, a moment later
    assert session.gave_up_after is None and session.suggested() == FIRST_WAIT


def test_sessions_are_kept_by_id_and_the_oldest_forgotten(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(waits, "SESSIONS_KEPT", 3)
    advisor = WaitAdvisor()
    first = advisor.of("1", "x")
    first.gave_up_after = 4.0
    for name in ("2", "3", "1", "4"):  # "1" heard from again, so "2" is the oldest
        advisor.of(name, "x")
    assert advisor.of("1", "x") is first
    assert advisor.of("2", "x").gave_up_after is None
    assert SessionWaits(gave_up_after=1.0).suggested() == 1  # never below a second


@pytest.mark.anyio
async def test_the_middleware_sees_whether_a_call_asked_for_progress() -> None:
    from fastmcp import Client, FastMCP

    from mcp_container_sandbox.tools.waits import WaitAdvisor, WaitTracking, current

    server = FastMCP("probe")
    server.add_middleware(WaitTracking(WaitAdvisor()))

    @server.tool
    def probe() -> dict[str, bool]:
        return {"progress": current()[1]}

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        return None

    async with Client(server) as client:
        plain = (await client.session.call_tool("probe", {})).structured_content
        asked = (await client.call_tool("probe", {}, progress_handler=on_progress)).structured_content
    assert plain == {"progress": False} and asked == {"progress": True}
