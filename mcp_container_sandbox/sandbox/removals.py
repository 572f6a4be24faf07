"""Sandboxes on their way out: destroy_container answers at once, the container goes in the background.

Each removal is marked on the host's disk before the sandbox is forgotten, so nothing is lost if
the server stops or dies meanwhile: the next server's adoption removes a marked container instead
of adopting it, and the reaper tries a failed removal again. A server that stops waits a while
for the removals in flight.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

import anyio

from .background import BackgroundTasks
from .errors import SandboxError

logger = logging.getLogger("mcp_sandbox.removals")

DRAIN_SECONDS = 30  # how long a stopping server waits for the removals under way
AT_ONCE = 4  # removals that run at once (more only queue up on Podman's locks)
START_AFTER_SECONDS = 0.02  # a removal waits this long: the process it starts would hold up the answer
# Past this many destroyed sandboxes still being removed, a new container waits (up to
# BACKLOG_WAIT_SECONDS): destroy answers at once, so under churn creates would outrun removals and
# the host's running containers pile up, slowing every command (seen: 650 behind after 30 minutes).
BACKLOG = 24
BACKLOG_WAIT_SECONDS = 30


class Removals:
    def __init__(self, folder: Path, remove: Callable[[str], Awaitable[None]], background: BackgroundTasks) -> None:
        self._folder, self._remove, self._background = folder, remove, background
        self._running: set[str] = set()
        self._at_once: anyio.CapacityLimiter | None = None  # made in the event loop, at the first removal

    def marked(self) -> set[str]:
        """The sandboxes (container names) whose removal was begun and has not finished."""
        try:
            return {path.name for path in self._folder.iterdir()}
        except OSError:
            return set()

    @property
    def folder(self) -> Path:
        return self._folder

    def mark(self, name: str) -> None:
        """Raises OSError when the mark cannot be written (the caller says so, and removes nothing)."""
        self._folder.mkdir(parents=True, exist_ok=True)
        (self._folder / name).touch()

    def start(self, name: str) -> None:
        """Remove the marked sandbox in the background (once at a time)."""
        if name not in self._running:
            self._running.add(name)
            self._background.start_soon(self._run, name)

    async def caught_up(self) -> None:
        """Before a new container starts: wait while the removals are BACKLOG behind, at most
        BACKLOG_WAIT_SECONDS (a removal Podman keeps failing must not stop creates for good)."""
        if len(self._running) <= BACKLOG:
            return
        logger.info("a new sandbox waits for %d removals under way", len(self._running) - BACKLOG)
        with anyio.move_on_after(BACKLOG_WAIT_SECONDS):
            while len(self._running) > BACKLOG:
                await anyio.sleep(0.05)

    def retry(self) -> None:
        """The reaper's turn: start every marked removal that is not under way."""
        for name in self.marked() - self._running:
            self.start(name)

    async def _run(self, name: str) -> None:
        if self._at_once is None:
            self._at_once = anyio.CapacityLimiter(AT_ONCE)
        try:
            await anyio.sleep(START_AFTER_SECONDS)  # the destroy's answer goes out first
            async with self._at_once:
                await self._remove(name)
        except SandboxError as exc:
            logger.warning("could not remove sandbox %s (%s); the reaper will try again", name, exc)
        else:
            (self._folder / name).unlink(missing_ok=True)
        finally:
            self._running.discard(name)

    async def drain(self, seconds: float) -> None:
        """Wait up to this long for the removals in flight (a stopping server); the rest stay marked."""
        with anyio.move_on_after(seconds):
            while self._running:
                await anyio.sleep(0.02)
