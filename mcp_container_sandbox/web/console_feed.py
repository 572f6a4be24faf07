"""The console's live view of a sandbox's commands (an agent's included): one watcher per sandbox,
however many people look. Each viewer's connection may run the watcher's polling, but only one at a
time does (a lock): when that viewer leaves, another's takes over, and with no viewer nothing polls.
A viewer who joins late gets what the watcher kept (the newest commands, the end of their output)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from ..sandbox import CommandSummary, SandboxError, SandboxManager

POLL_SECONDS = 0.05
KEPT_COMMANDS = 20
KEPT_BYTES = 64 * 1024  # of each stream of each command, for a viewer who joins late
QUEUED_EVENTS = 1024  # a viewer this far behind is dropped rather than slowing the others


@dataclass
class Seen:
    """One command as the watcher has it: its cursors into the streams, and the end of its output."""

    command: str
    status: str = "running"
    exit_code: int | None = None
    stdout_at: int = 0
    stderr_at: int = 0
    stdout: str = ""
    stderr: str = ""

    def event(self, command_id: str, stdout: str, stderr: str) -> dict[str, Any]:
        return {"command_id": command_id, "command": self.command, "status": self.status,
                "exit_code": self.exit_code, "stdout": stdout, "stderr": stderr}


@dataclass
class CommandFeed:
    sandboxes: SandboxManager
    container_id: str
    tenant: str
    cap: int
    viewers: set[MemoryObjectSendStream[dict[str, Any]]] = field(default_factory=set)
    seen: OrderedDict[str, Seen] = field(default_factory=OrderedDict)
    lock: anyio.Lock = field(default_factory=anyio.Lock)

    async def poll_while_watched(self) -> None:
        """Poll and tell every viewer, for as long as there are viewers (one caller at a time)."""
        async with self.lock:
            while self.viewers:
                try:
                    await self.poll()
                except SandboxError as exc:  # the sandbox is gone: say so, and stop
                    self.broadcast({"gone": str(exc)})
                    return
                await anyio.sleep(POLL_SECONDS)

    async def poll(self) -> None:
        for summary in self._followed(await self.sandboxes.list_commands(self.container_id, self.tenant)):
            seen = self.seen.get(summary.command_id)
            if seen is None:
                seen = self.seen[summary.command_id] = Seen(summary.command)
            elif seen.status != "running":
                continue
            state = await self.sandboxes.read_command(self.container_id, summary.command_id, self.tenant,
                                                      seen.stdout_at, seen.stderr_at)
            if not state.stdout and not state.stderr and state.status == seen.status:
                continue
            seen.stdout_at = min(state.stdout_bytes, seen.stdout_at + self.cap)
            seen.stderr_at = min(state.stderr_bytes, seen.stderr_at + self.cap)
            seen.stdout, seen.stderr = (seen.stdout + state.stdout)[-KEPT_BYTES:], (seen.stderr + state.stderr)[-KEPT_BYTES:]
            seen.status, seen.exit_code = state.status, state.exit_code
            self.broadcast(seen.event(summary.command_id, state.stdout, state.stderr))

    def _followed(self, summaries: list[CommandSummary]) -> list[CommandSummary]:
        """The commands shown: every running one, and the newest others up to KEPT_COMMANDS, oldest
        first; what falls out of them is forgotten (and never read again)."""
        oldest_first = sorted(summaries, key=lambda s: s.started_at or 0)
        running = [s for s in oldest_first if s.status == "running"]
        ended = [s for s in oldest_first if s.status != "running"]
        room = max(0, KEPT_COMMANDS - len(running))
        kept = {s.command_id for s in running} | {s.command_id for s in ended[len(ended) - room:]} if room else set()
        followed = [s for s in oldest_first if s.command_id in kept] if room else running
        keep = {s.command_id for s in followed}
        for command_id in [c for c in self.seen if c not in keep]:
            del self.seen[command_id]
        return followed

    def broadcast(self, event: dict[str, Any]) -> None:
        for viewer in list(self.viewers):
            try:
                viewer.send_nowait(event)
            except (anyio.WouldBlock, anyio.BrokenResourceError, anyio.ClosedResourceError):
                self.viewers.discard(viewer)
                viewer.close()

    def join(self) -> tuple[MemoryObjectSendStream[dict[str, Any]], MemoryObjectReceiveStream[dict[str, Any]]]:
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](QUEUED_EVENTS)
        for command_id, seen in self.seen.items():  # what was kept, for a viewer who joins late
            send.send_nowait(seen.event(command_id, seen.stdout, seen.stderr))
        self.viewers.add(send)
        return send, receive


class CommandFeeds:
    """The feeds being watched, one per sandbox; a feed without viewers is dropped."""

    def __init__(self, sandboxes: SandboxManager, cap: int) -> None:
        self.sandboxes, self.cap = sandboxes, cap
        self._feeds: dict[tuple[str, str], CommandFeed] = {}

    async def follow(self, container_id: str, tenant: str, deliver: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        """Deliver the events of a sandbox's commands to one viewer until the sandbox is gone or the caller
        is cancelled (the viewer left)."""
        key = (tenant, container_id)
        feed = self._feeds.get(key)
        if feed is None:
            feed = self._feeds[key] = CommandFeed(self.sandboxes, container_id, tenant, self.cap)
        send, events = feed.join()
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(feed.poll_while_watched)
                async with events:
                    async for event in events:
                        await deliver(event)
                        if "gone" in event:
                            break
                group.cancel_scope.cancel()
        finally:
            feed.viewers.discard(send)
            send.close()
            if not feed.viewers and self._feeds.get(key) is feed:
                del self._feeds[key]

