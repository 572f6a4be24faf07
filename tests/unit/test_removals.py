"""removals.py: destroyed sandboxes marked on disk, removed in the background, retried, drained
(the removal itself is a function of the test's: no Podman)."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest

from mcp_container_sandbox.sandbox.background import BackgroundTasks
from mcp_container_sandbox.sandbox.errors import SandboxError
from mcp_container_sandbox.sandbox.removals import Removals

pytestmark = pytest.mark.anyio


async def test_a_removal_is_marked_until_it_succeeds_and_the_reaper_tries_again(tmp_path: Path) -> None:
    background = BackgroundTasks()
    await background.start()
    failing, removed = {"mcp-sandbox-b"}, []

    async def remove(name: str) -> None:
        await anyio.sleep(0.05)
        if name in failing:
            raise SandboxError("podman rm failed")
        removed.append(name)

    removals = Removals(tmp_path / "removing", remove, background)
    try:
        for name in ("mcp-sandbox-a", "mcp-sandbox-b"):
            removals.mark(name)
            removals.start(name)
        removals.start("mcp-sandbox-a")  # once at a time
        assert removals.marked() == {"mcp-sandbox-a", "mcp-sandbox-b"}
        await removals.drain(5)
        assert removed == ["mcp-sandbox-a"] and removals.marked() == {"mcp-sandbox-b"}  # the failed one stays marked
        failing.clear()
        removals.retry()
        await removals.drain(5)
        assert removed == ["mcp-sandbox-a", "mcp-sandbox-b"] and removals.marked() == set()
    finally:
        await background.stop()


async def test_a_new_server_finds_the_marks_of_the_last(tmp_path: Path) -> None:
    background = BackgroundTasks()
    await background.start()

    async def never(name: str) -> None:
        await anyio.sleep(60)

    first = Removals(tmp_path, never, background)
    first.mark("mcp-sandbox-c")
    first.start("mcp-sandbox-c")
    await first.drain(0.1)  # a stopping server waits a while, then leaves the mark
    await background.stop()
    assert Removals(tmp_path, never, background).marked() == {"mcp-sandbox-c"}
    assert Removals(tmp_path / "missing", never, background).marked() == set()


async def test_a_new_container_waits_while_removals_are_far_behind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Destroy answers at once; under churn a create must not outrun the removals (each stops a
    running container), so past BACKLOG under way a new container waits, for a bounded time."""
    from mcp_container_sandbox.sandbox import removals as module

    monkeypatch.setattr(module, "BACKLOG", 2)
    background = BackgroundTasks()
    await background.start()
    gate = anyio.Event()

    async def remove(name: str) -> None:
        await gate.wait()

    removals = Removals(tmp_path, remove, background)
    try:
        await removals.caught_up()  # nothing behind: no wait
        for index in range(5):
            removals.mark(f"mcp-sandbox-{index}")
            removals.start(f"mcp-sandbox-{index}")
        waited: list[bool] = []

        async def create() -> None:
            await removals.caught_up()
            waited.append(True)

        async with anyio.create_task_group() as group:
            group.start_soon(create)
            await anyio.sleep(0.3)
            assert not waited  # five under way, more than two: the create waits
            gate.set()
        assert waited and removals.marked() == set()
        monkeypatch.setattr(module, "BACKLOG_WAIT_SECONDS", 0.2)
        gate = anyio.Event()
        for index in range(5):
            removals.mark(f"mcp-sandbox-{index}")
            removals.start(f"mcp-sandbox-{index}")
        with anyio.fail_after(5):
            await removals.caught_up()  # removals that never end hold a create up for a bounded time only
        gate.set()
        await removals.drain(5)
    finally:
        await background.stop()
