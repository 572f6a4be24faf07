"""Commands whose sandbox went away: what the server last saw of them, so that check_container
can still answer about them (status killed, reason sandbox_gone) after the sandbox is gone."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

from ..model import Sandbox
from ..paths import OUTPUT_DIR
from .command_records import CommandState

# How long, and for how many sandboxes, the commands that were running when a sandbox went
# away are remembered.
TOMBSTONE_SECONDS = 3600
MAX_TOMBSTONES = 200
# Per sandbox, the running commands remembered and how much of each stream's end (memory stays small).
MAX_SEEN_RUNNING = 32
SEEN_OUTPUT_CHARS = 2048
GONE_DESTROYED = "was destroyed by destroy_container"
GONE_EXPIRED = "reached the end of its lifetime and was destroyed"
GONE_REMOVED = "was removed outside this server (Podman no longer has its container)"
GONE_ELSEWHERE = "was destroyed through another server, or its Pod deleted (servers sharing a cluster)"
GONE_STOPPED = "stopped (Podman reports its container as exited: it was stopped or killed outside this server)"


@dataclass
class _Tombstone:
    """A sandbox that went away, and the commands the server last saw running in it."""

    tenant: str
    why: str
    at: float
    running: dict[str, CommandState]


class GoneCommands:
    """The commands last seen running in each live sandbox, and tombstones of the sandboxes gone."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._seen: dict[str, dict[str, CommandState]] = {}
        self._tombstones: OrderedDict[str, _Tombstone] = OrderedDict()

    def started(self, container_id: str, command_id: str) -> None:
        """A command began (or may have): if its sandbox goes, it ends with reason sandbox_gone."""
        self.seen(container_id, CommandState(
            command_id, "running", None, "", "", 0, 0, False, None,
            f"{OUTPUT_DIR}/{command_id}.stdout", f"{OUTPUT_DIR}/{command_id}.stderr",
        ))

    def never_started(self, container_id: str, command_id: str) -> None:
        """A command that cannot have begun: nothing is claimed of it."""
        self._seen.get(container_id, {}).pop(command_id, None)
        tombstone = self._tombstones.get(container_id)
        if tombstone is not None:
            tombstone.running.pop(command_id, None)

    def seen(self, container_id: str, state: CommandState) -> CommandState:
        """Remember a running command with the end of its output so far; forget one that ended."""
        if state.status == "running":
            seen = self._seen.setdefault(container_id, {})
            seen.pop(state.command_id, None)
            seen[state.command_id] = replace(
                state, stdout=state.stdout[-SEEN_OUTPUT_CHARS:], stderr=state.stderr[-SEEN_OUTPUT_CHARS:],
                truncated=state.truncated or max(len(state.stdout), len(state.stderr)) > SEEN_OUTPUT_CHARS,
            )
            while len(seen) > MAX_SEEN_RUNNING:
                seen.pop(next(iter(seen)))
        else:
            self._seen.get(container_id, {}).pop(state.command_id, None)
        return state

    def running_ids(self, container_id: str) -> list[str]:
        """The commands last seen running in the sandbox (they may have ended since)."""
        return list(self._seen.get(container_id, {}))

    def settle(self, container_id: str, running: set[str]) -> None:
        """The sandbox said which of its commands run now: the others are no longer running."""
        seen = self._seen.get(container_id, {})
        for command_id in [c for c in seen if c not in running]:
            seen.pop(command_id)

    def bury(self, container_id: str, sandbox: Sandbox | None, why: str) -> None:
        """The sandbox went (why): keep what was running in it, within the bounds above."""
        running = self._seen.pop(container_id, {})
        if sandbox is None:
            return
        now = self._clock()
        self._tombstones[container_id] = _Tombstone(sandbox.tenant, why, now, running)
        while len(self._tombstones) > MAX_TOMBSTONES or (
            self._tombstones and next(iter(self._tombstones.values())).at < now - TOMBSTONE_SECONDS
        ):
            self._tombstones.popitem(last=False)

    def why(self, container_id: str, tenant: str) -> str:
        """Why the tenant's sandbox went ("" when the server does not remember it going)."""
        tombstone = self._tombstones.get(container_id)
        return tombstone.why if tombstone is not None and tombstone.tenant == tenant else ""

    def gone(
        self, container_id: str, command_id: str, tenant: str, sandbox: Sandbox | None, stopped: bool = False
    ) -> CommandState | None:
        """A command that was running when its sandbox went away (destroyed, expired, removed or
        stopped, as Podman or this server saw it): its last seen state, ended with reason
        sandbox_gone. None when this tenant had no such command running there. ``sandbox`` is the
        live record, if the server still has one (stopped, or being destroyed)."""
        tombstone = self._tombstones.get(container_id)
        if tombstone is not None and tombstone.tenant == tenant:
            last, why = tombstone.running.get(command_id), tombstone.why
        elif sandbox is not None and sandbox.tenant == tenant and (stopped or sandbox.destroying):
            last = self._seen.get(container_id, {}).get(command_id)
            why = GONE_STOPPED if stopped else sandbox.gone_why
        else:
            return None
        if last is None:
            return None
        return replace(last, status="killed", exit_code=None, reason="sandbox_gone", detail=why)
