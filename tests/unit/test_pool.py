"""The warm pool's rule for how many sandboxes it keeps (a floor, the recent peak of demand
within a ceiling and the room left), and the pool run against stand-ins for Podman: its members
here are plain records that ``make`` returns after a delay (the pool's own logic is what is
tested; the real pool against Podman is in tests/test_speed_paths.py)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest

from mcp_container_sandbox.sandbox.model import Sandbox
from mcp_container_sandbox.sandbox.pool import (
    REFILL_AFTER_SECONDS,
    WarmPool,
    pool_target,
    recent_peak,
)
from mcp_container_sandbox.settings import SandboxSettings

pytestmark = pytest.mark.anyio


def test_the_peak_counts_creates_close_together_within_the_recent_past() -> None:
    assert recent_peak([], 100, 60) == 0
    burst = [50.0 + i * 0.01 for i in range(16)]
    assert recent_peak(burst, 100, 60) == 16
    assert recent_peak(burst, 111, 60) == 0  # older than the idle time: forgotten
    steady = [float(t) for t in range(40, 100)]  # one a second
    assert recent_peak(steady, 100, 60, burst_seconds=5) == 6
    assert recent_peak([*steady[:5], *burst], 100, 60, burst_seconds=5) == 16  # 40..44 s: more than 5 s before
    assert recent_peak([*steady[:11], *burst], 100, 60, burst_seconds=5) == 16 + 5  # 46..50 s: within 5 s
    assert recent_peak([10.0, 10.1, 10.2, 20.0], 30, 60, burst_seconds=5) == 3


def test_the_target_is_the_floor_raised_to_the_peak_within_the_ceiling_and_the_room() -> None:
    assert pool_target(2, 16, 0, 20) == 2
    assert pool_target(2, 16, 9, 20) == 9
    assert pool_target(2, 16, 40, 20) == 16
    assert pool_target(2, 16, 40, 5) == 5  # only 5 more sandboxes may exist
    assert pool_target(2, 16, 40, 0) == 2  # the floor stays, as before
    assert pool_target(0, 16, 40, 20) == 0  # SANDBOX_POOL_SIZE=0: no pool at all


def test_the_settings_and_their_defaults() -> None:
    settings = SandboxSettings.from_env({})
    assert (settings.pool_size, settings.pool_max, settings.pool_idle_seconds) == (2, 16, 300.0)
    settings = SandboxSettings.from_env({"SANDBOX_POOL_SIZE": "1", "SANDBOX_POOL_MAX": "4",
                                         "SANDBOX_POOL_IDLE_SECONDS": "1.5"})
    assert (settings.pool_size, settings.pool_max, settings.pool_idle_seconds) == (1, 4, 1.5)
    with pytest.raises(ValueError, match="SANDBOX_POOL_IDLE_SECONDS"):
        SandboxSettings.from_env({"SANDBOX_POOL_IDLE_SECONDS": "0"})


class StandIn:
    """make/claim/discard for a pool, counting what it was asked to do."""

    def __init__(self, make_seconds: float) -> None:
        self.make_seconds, self.made, self.discarded, self.at_once, self.most_at_once = make_seconds, 0, [], 0, 0

    async def make(self) -> Sandbox:
        self.at_once += 1
        self.most_at_once = max(self.most_at_once, self.at_once)
        await anyio.sleep(self.make_seconds)
        self.at_once -= 1
        self.made += 1
        return Sandbox(f"{self.made:032x}", "image", time.time(), time.time() + 3600)

    async def claim(self, sandbox: Sandbox, claim: bytes) -> None:
        pass

    async def discard(self, sandbox: Sandbox) -> None:
        self.discarded.append(sandbox.container_id)

    def pool(self, size: int, **settings: Any) -> WarmPool:
        return WarmPool(size, self.make, self.claim, self.discard, lambda: True, **settings)


@asynccontextmanager
async def filling(pool: WarmPool) -> AsyncIterator[None]:
    """The pool filling itself in the background while the body runs."""
    async with anyio.create_task_group() as group:
        group.start_soon(pool.fill_forever)
        yield
        group.cancel_scope.cancel()


async def wait_for(condition, seconds: float = 5) -> None:
    with anyio.fail_after(seconds):
        while not condition():
            await anyio.sleep(0.01)


async def test_a_burst_grows_the_pool_several_at_a_time_and_idleness_shrinks_it_to_the_floor() -> None:
    stand_in = StandIn(make_seconds=0.05)
    pool = stand_in.pool(2, ceiling=8, idle_seconds=1.0)
    async with filling(pool):
        await wait_for(lambda: len(pool) == 2)
        taken = [await pool.take("t", 60) for _ in range(6)]  # a burst: 2 from the pool, 4 it had not
        assert sum(s is not None for s in taken) == 2
        assert pool.target() == 6
        await wait_for(lambda: len(pool) == 6)
        assert stand_in.most_at_once > 1  # filled several at once
        assert stand_in.discarded == []
        # Idle: back to the floor. The pool lets a member go before its discard has run (the discard
        # is a task of its own), so the wait is for both: counting at once flaked under CI's load.
        await wait_for(lambda: len(pool) == 2 and len(stand_in.discarded) == 4, seconds=1.0 + 5 + 2)
        assert pool.describe()["target"] == 2 and len(pool) == 2


async def test_the_pool_starts_none_of_its_own_while_a_create_that_found_it_empty_is_starting() -> None:
    stand_in = StandIn(make_seconds=0.01)
    pool = stand_in.pool(1, ceiling=4, idle_seconds=60)
    async with filling(pool):
        await wait_for(lambda: len(pool) == 1)
        assert await pool.take("t", 60) is not None
        async with pool.creating():
            assert await pool.take("t", 60) is None  # the second of a burst starts its own
            made = stand_in.made
            await anyio.sleep(0.3)
            assert stand_in.made == made  # and the pool waits for it
        await wait_for(lambda: len(pool) == 2)


async def test_no_pool_when_its_size_is_zero() -> None:
    stand_in = StandIn(make_seconds=0.01)
    pool = stand_in.pool(0, ceiling=16)
    assert await pool.take("t", 60) is None and pool.target() == 0


async def test_what_waits_for_a_burst_of_creates_goes_on_when_the_last_one_ends_or_after_its_time() -> None:
    stand_in = StandIn(make_seconds=0.01)
    pool = stand_in.pool(1)
    with anyio.fail_after(0.5):
        await pool.no_creates(10)  # none under way: at once
    waited: list[float] = []

    async def waiter() -> None:
        started = time.monotonic()
        await pool.no_creates(10)
        waited.append(time.monotonic() - started)

    async with anyio.create_task_group() as group:
        async with pool.creating():
            async with pool.creating():
                group.start_soon(waiter)
                await anyio.sleep(0.2)
            await anyio.sleep(0.2)  # one of the two still starts its sandbox
            assert waited == []
    assert 0.35 < waited[0] < 2
    async with pool.creating():
        started = time.monotonic()
        await pool.no_creates(0.2)  # a create that takes too long is not waited for
        assert 0.15 < time.monotonic() - started < 2



async def test_a_burst_is_remembered_for_the_idle_time_however_many_creates_follow_it(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("mcp_container_sandbox.sandbox.pool.time.monotonic", lambda: clock[0])
    stand_in = StandIn(make_seconds=0.01)
    pool = stand_in.pool(1, ceiling=4, idle_seconds=300)
    for _ in range(4):  # a burst
        await pool.take("t", 60)
    for _ in range(140):  # then a create every 2 s: 140, more than the old bound of 4 x the ceiling
        clock[0] += 2
        await pool.take("t", 60)
    assert pool.target() == 4  # the burst, 280 s ago, still counts
    clock[0] += 25  # 305 s after the burst: it no longer counts; 3 creates within 5 s of each other do
    assert pool.target() == 3
    clock[0] += 400  # nothing for 400 s: back to the floor, and the old creates are dropped at the next one
    assert pool.target() == 1
    await pool.take("t", 60)
    assert len(pool._takes) == 1


async def test_a_hand_out_is_refilled_a_moment_later_while_the_pool_holds_others() -> None:
    stand_in = StandIn(make_seconds=0.01)
    pool = stand_in.pool(2, ceiling=2, idle_seconds=60)
    async with filling(pool):
        await wait_for(lambda: len(pool) == 2)
        made = stand_in.made
        taken_at = time.monotonic()
        assert await pool.take("t", 60) is not None
        await anyio.sleep(REFILL_AFTER_SECONDS * 0.6)
        assert stand_in.made == made and len(pool) == 1  # the new sandbox's first commands have the CPU
        await wait_for(lambda: len(pool) == 2)
        assert time.monotonic() - taken_at >= REFILL_AFTER_SECONDS
        assert await pool.take("t", 60) is not None and await pool.take("t", 60) is not None
        await wait_for(lambda: len(pool) > 0, seconds=REFILL_AFTER_SECONDS * 0.6)  # emptied: refilled at once


async def test_a_restarted_servers_pool_is_as_big_as_the_last_ones_was(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The recent creates are kept on the host at stop: the next server's pool sizes itself (and
    adopts pooled sandboxes) by them, until they are idle_seconds old."""
    demand = tmp_path / "pool-demand.json"
    before = StandIn(make_seconds=0.01).pool(2, ceiling=8, idle_seconds=60.0, demand_file=demand)
    for _ in range(6):  # a burst of 6 on an empty pool
        assert await before.take("t", 60) is None
    assert before.target() == 6
    before.save_demand()
    after = StandIn(make_seconds=0.01).pool(2, ceiling=8, idle_seconds=60.0, demand_file=demand)
    assert after.target() == 2  # nothing known yet
    after.load_demand()
    assert after.target() == 6
    assert all(after.adopt(Sandbox(f"{n:032x}", "image", 0, 3600)) for n in range(6))
    assert not after.adopt(Sandbox(f"{7:032x}", "image", 0, 3600))
    # Creates older than idle_seconds are not carried over; a file that is not the pool's is ignored.
    demand.write_text(json.dumps([time.time() - 120 + n * 0.01 for n in range(6)]))  # a burst 2 minutes ago
    stale = StandIn(make_seconds=0.01).pool(2, ceiling=8, idle_seconds=60.0, demand_file=demand)
    stale.load_demand()
    assert stale.target() == 2
    demand.write_text("not json")
    broken = StandIn(make_seconds=0.01).pool(2, ceiling=8, idle_seconds=60.0, demand_file=demand)
    broken.load_demand()
    assert broken.target() == 2
