"""The warm pool's rule: a pooled sandbox is handed out only while the configuration it was
made under is the one in force."""

from __future__ import annotations

import json
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from .clock import clock
from .errors import SandboxError, TakenElsewhere
from .model import Sandbox

logger = logging.getLogger("mcp_sandbox.pool")


def changed_settings(recorded: str, now: Mapping[str, str]) -> str:
    """What differs between the configuration a sandbox recorded (JSON) and the one in force;
    "" when nothing does."""
    try:
        then = json.loads(recorded) if recorded else None
    except ValueError:
        then = None
    if not isinstance(then, dict):
        return "it carries no record of the configuration it was made under"
    return "; ".join(
        f"{key}: {str(then.get(key))[:80]!r} -> {str(value)[:80]!r}"
        for key, value in now.items() if then.get(key) != value
    )


BURST_SECONDS = 5.0  # creates this close together count as one burst
FILL_AT_ONCE = 4  # pooled sandboxes started at the same time while the pool is short
CHECK_SECONDS = 5.0  # how often the pool looks at its target without being asked
REFILL_AFTER_SECONDS = 0.3  # a hand-out's refill waits this long while the pool still holds others
TAKES_KEPT = 100_000  # the most creates remembered (over SANDBOX_POOL_IDLE_SECONDS), a bound on memory only


def recent_peak(takes: Sequence[float], now: float, idle_seconds: float, burst_seconds: float = BURST_SECONDS) -> int:
    """The most creates asked for within ``burst_seconds`` of each other during the last
    ``idle_seconds`` (``takes``: their monotonic times, oldest first)."""
    recent = [t for t in takes if t > now - idle_seconds]
    peak, first = 0, 0
    for last, at in enumerate(recent):
        while at - recent[first] > burst_seconds:
            first += 1
        peak = max(peak, last - first + 1)
    return peak


def pool_target(floor: int, ceiling: int, peak: int, room: int) -> int:
    """How many sandboxes the pool keeps: at least ``floor`` (SANDBOX_POOL_SIZE), as many as the
    recent peak of demand within ``ceiling`` (SANDBOX_POOL_MAX), never more above the floor than
    sandboxes may still be created (``room``: SANDBOX_MAX_CONTAINERS less the live ones)."""
    if floor <= 0:
        return 0
    return max(floor, min(ceiling, peak, room))


class WarmPool:
    """Sandboxes of the default kind started ahead of demand, each handed out once.

    The pool keeps ``size`` sandboxes and follows demand above that: after a burst of creates it
    grows toward the burst's size (up to ``ceiling``), and it shrinks back once ``idle_seconds``
    pass without such a burst. It fills several at once while short, but never while a create
    that found it empty is still starting its sandbox (that create comes first).

    The pool knows when to make, hand out and drop its members; the manager says how
    (``make`` starts one and opens its channel, ``claim`` records a hand-out inside the sandbox,
    so that a restarted server adopts it as handed out, ``discard`` removes one), whether any can
    be made now (``can_fill``) and how many more sandboxes may be created (``room``).
    """

    def __init__(
        self, size: int, make: Callable[[], Awaitable[Sandbox]], claim: Callable[[Sandbox, bytes], Awaitable[None]],
        discard: Callable[[Sandbox], Awaitable[None]], can_fill: Callable[[], bool], ceiling: int | None = None,
        idle_seconds: float = 300.0, room: Callable[[], int] = lambda: 1 << 30, demand_file: Path | None = None,
    ) -> None:
        self.demand_file = demand_file  # the recent creates, kept across restarts (save_demand, load_demand)
        self.size, self.ceiling, self.idle_seconds = size, max(size, ceiling if ceiling is not None else size), idle_seconds
        self._make, self._claim, self._discard, self._can_fill, self._room = make, claim, discard, can_fill, room
        self._members: list[Sandbox] = []
        self._filling = 0
        self._creating = 0  # creates that found the pool empty and are starting a sandbox of their own
        self._takes: deque[float] = deque(maxlen=TAKES_KEPT)  # within idle_seconds: older ones are dropped
        self._wanted = anyio.Event()
        self._no_creates = anyio.Event()
        self._no_creates.set()
        self._last_take = 0.0

    def __len__(self) -> int:
        return len(self._members)

    def holds(self, container_id: str) -> bool:
        return any(member.container_id == container_id for member in self._members)

    def target(self, now: float | None = None) -> int:
        now = time.monotonic() if now is None else now
        return pool_target(self.size, self.ceiling, recent_peak(self._takes, now, self.idle_seconds), self._room())

    def describe(self) -> dict[str, int]:
        return {"ready": len(self._members), "starting": self._filling, "target": self.target(),
                "size": self.size, "max": self.ceiling}

    def reset(self) -> None:
        """Empty, before adoption rebuilds it from what Podman still has; the demand the last
        server saw recalled (load_demand)."""
        self._members = []
        self._wanted = anyio.Event()
        self.load_demand()

    def save_demand(self) -> None:
        """Keep the creates of the last idle_seconds on the host (as wall-clock times), so that the
        next server's pool is as big as this one's was and meets the next burst warm."""
        if self.demand_file is None:
            return
        now, wall = time.monotonic(), clock.now()
        recent = [round(wall - (now - at), 3) for at in self._takes if at > now - self.idle_seconds]
        try:
            self.demand_file.parent.mkdir(parents=True, exist_ok=True)
            self.demand_file.write_text(json.dumps(recent))
        except OSError as exc:
            logger.warning("could not keep the pool's recent demand in %s: %s", self.demand_file, exc)

    def load_demand(self) -> None:
        """The creates a server before this one saw (save_demand), as if this one had seen them."""
        if self.demand_file is None:
            return
        try:
            kept = json.loads(self.demand_file.read_text())
        except (OSError, ValueError):
            return
        now, wall = time.monotonic(), clock.now()
        self._takes.clear()
        self._takes.extend(sorted(now - max(0.0, wall - at) for at in kept  # (kept to the ms: a moment ahead)
                                  if isinstance(at, (int, float)) and wall - self.idle_seconds < at <= wall + 1))

    def adopt(self, sandbox: Sandbox) -> bool:
        """Take an unclaimed pooled sandbox back after a restart, while the pool wants it."""
        if len(self._members) >= max(self.size, self.target()):
            return False
        self._members.append(sandbox)
        return True

    async def take(self, tenant: str, ttl: int) -> Sandbox | None:
        """Hand out a pre-started sandbox, once only; its lifetime starts now. None when empty."""
        if self.size <= 0:
            return None
        now = self._last_take = time.monotonic()
        while self._takes and self._takes[0] <= now - self.idle_seconds:
            self._takes.popleft()
        self._takes.append(now)
        self._wanted.set()
        while self._members:
            sandbox = self._members.pop(0)
            sandbox.created_at = clock.now()
            sandbox.expires_at = sandbox.created_at + ttl
            sandbox.tenant = tenant
            claim = f"{sandbox.created_at:.3f} {sandbox.expires_at:.3f} {tenant}\n".encode()
            try:
                await self._claim(sandbox, claim)
                return sandbox
            except TakenElsewhere:
                continue  # another server's now: it is not removed
            except SandboxError as exc:
                logger.warning("pooled sandbox %s unusable (%s); destroying it", sandbox.container_id, exc)
                await self._discard(sandbox)
        return None

    @asynccontextmanager
    async def creating(self) -> AsyncIterator[None]:
        """Around a create that found the pool empty: the pool does not start its own meanwhile."""
        if not self._creating:
            self._no_creates = anyio.Event()
        self._creating += 1
        try:
            yield
        finally:
            self._creating -= 1
            self._wanted.set()
            if not self._creating:
                self._no_creates.set()

    async def no_creates(self, seconds: float) -> None:
        """Once no create is starting a sandbox of its own (at most ``seconds``): what can wait for a
        burst to end (a new sandbox's channel opened ahead) leaves the CPU to the burst meanwhile."""
        with anyio.move_on_after(seconds):
            await self._no_creates.wait()

    def clock_stepped(self, step: float) -> None:
        for member in self._members:
            member.created_at += step
            member.expires_at += step

    async def drop_expired(self, now: float) -> None:
        for member in [m for m in self._members if m.expires_at <= now]:
            self._members.remove(member)
            await self._discard(member)
            self._wanted.set()

    async def fill_forever(self) -> None:
        async with anyio.create_task_group() as group:
            while True:
                target = self.target()
                while len(self._members) > target:  # demand went: the oldest go first
                    group.start_soon(self._discard, self._members.pop(0))
                if target - len(self._members) - self._filling > 0 and not self._creating:
                    # Not at once after a hand-out while others are ready: the podman run would take
                    # the CPU from the new sandbox's first commands (a whole life took 64 ms, not 47).
                    wait = self._last_take + REFILL_AFTER_SECONDS - time.monotonic()
                    if wait > 0 and self._members:
                        await anyio.sleep(wait)
                        continue
                    if not self._can_fill():
                        group.cancel_scope.cancel()  # no sandbox can be made here; whoever asks is told why
                        return
                    for _ in range(min(target - len(self._members) - self._filling, FILL_AT_ONCE - self._filling)):
                        self._filling += 1
                        group.start_soon(self._fill_one)
                with anyio.move_on_after(CHECK_SECONDS):
                    await self._wanted.wait()
                self._wanted = anyio.Event()

    async def _fill_one(self) -> None:
        try:
            self._members.append(await self._make())
        except SandboxError as exc:
            logger.warning("could not add a sandbox to the pool: %s", exc)
            await anyio.sleep(10)
        finally:
            self._filling -= 1
            self._wanted.set()
