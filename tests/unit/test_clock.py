"""A step of the system clock moves no sandbox's remaining lifetime (sandbox/clock.py). The real
clock stepped an hour either way, against a real server: tests/integration/test_faults.py."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from test_tools_stand_in import epoch, standing_in

from mcp_container_sandbox.sandbox import clock as clock_module
from mcp_container_sandbox.sandbox.clock import LifetimeClock

pytestmark = pytest.mark.anyio


class Steps:
    def __init__(self) -> None:
        self.seen: list[float] = []

    def heard(self, step: float) -> None:
        self.seen.append(step)


def test_a_step_is_told_once_and_slewing_is_not_a_step() -> None:
    wall, elapsed = [1000.0], [50.0]
    clock = LifetimeClock(lambda: wall[0], lambda: elapsed[0])
    steps = Steps()
    clock.on_step(steps.heard)
    wall[0], elapsed[0] = 1010.5, 60.0  # 0.5 s of slewing over 10 s: no step
    assert clock.now() == 1010.5 and steps.seen == []
    wall[0], elapsed[0] = 4611.0, 61.0  # an hour forward
    assert clock.now() == 4611.0 and steps.seen == [pytest.approx(3599.5)]
    assert clock.now() == 4611.0 and len(steps.seen) == 1  # told once
    wall[0], elapsed[0] = 1012.0, 62.0  # and back
    clock.now()
    assert steps.seen[1] == pytest.approx(-3600.0)


def test_a_listener_that_is_gone_is_not_called() -> None:
    wall, elapsed = [0.0], [0.0]
    clock = LifetimeClock(lambda: wall[0], lambda: elapsed[0])
    steps = Steps()
    clock.on_step(steps.heard)
    del steps
    wall[0] = 100.0
    clock.now()  # no error: the listener died with its object


@pytest.mark.parametrize("step", [3600.0, -3600.0])
async def test_sandboxes_keep_their_remaining_lifetime_across_a_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: float) -> None:
    fresh = LifetimeClock()
    monkeypatch.setattr(clock_module.clock, "_wall", fresh._wall)
    async with standing_in(tmp_path) as stand_in:
        container_id = await stand_in.sandbox(ttl_seconds=60)
        before = await stand_in.call("check_container", container_id=container_id)
        monkeypatch.setattr(clock_module.clock, "_wall", lambda: time.time() + step)
        listed = (await stand_in.call("list_containers"))["containers"]
        assert [box["container_id"] for box in listed] == [container_id]  # an hour forward did not end it
        after = await stand_in.call("check_container", container_id=container_id)
        assert 55 <= after["seconds_remaining"] <= 60
        assert epoch(after["expires_at"]) - epoch(before["expires_at"]) == pytest.approx(step, abs=1)
        recorded = stand_in.app.sandboxes.lifecycle.lifetimes.read(container_id)
        assert recorded is not None and recorded.expires_at == pytest.approx(epoch(before["expires_at"]) + step, abs=1)
