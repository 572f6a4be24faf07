"""How a sandbox ends: destroyed (by its tenant, the console or the reaper) or found gone, and what
it leaves behind: its record, channel, links and preview ports go; its running commands are
buried (gone_commands.py) so that asking after them answers sandbox_gone; the tenant asking after
it later hears why, or where its files went (a snapshot at expiry)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .background import BackgroundTasks
from .backend.disks import SandboxDisks
from .containers import SandboxContainers
from .errors import SandboxError, SandboxNotFound
from .idempotency import IdempotencyKeys
from .lifetimes import Lifetimes
from .model import LOCAL_TENANT, NAME_PREFIX
from .network.egress import Egress
from .network.preview_links import PortLinks
from .registry import SandboxRegistry
from .removals import Removals
from .runtime.channel import AgentChannel
from .runtime.commands import CommandRunner
from .runtime.gone_commands import GONE_DESTROYED, GONE_EXPIRED, GONE_REMOVED, GoneCommands
from .runtime.runtimes import AgentChannels
from .storage.file_links import FileLinks
from .storage.snapshots import Snapshots

logger = logging.getLogger("mcp_sandbox.manager")


@dataclass
class Endings:
    registry: SandboxRegistry
    gone: GoneCommands
    containers: SandboxContainers
    disks: SandboxDisks
    channels: AgentChannels
    commands: CommandRunner
    links: FileLinks
    snapshots: Snapshots
    ports: PortLinks
    egress: Egress
    lifetimes: Lifetimes
    background: BackgroundTasks
    removals: Removals | None = None  # set once made (it calls back into remove_destroyed)
    keys: IdempotencyKeys | None = None  # create_container's idempotency keys, set by the manager
    # destroyed sandboxes' channels, closed by their removal
    _closing: dict[str, AgentChannel] = field(default_factory=dict)

    async def destroy(self, container_id: str, tenant: str = LOCAL_TENANT, why: str = GONE_DESTROYED) -> None:
        assert self.removals is not None
        sandbox = self.registry.live(container_id)
        if sandbox is None or sandbox.tenant != tenant:
            raise SandboxNotFound(str(container_id), self.gone_note(str(container_id), tenant))
        sandbox.destroying, sandbox.gone_why = True, why
        if why == GONE_EXPIRED:  # before anything of it goes
            sandbox.gone_why = why = why + await self.snapshots.take_at_expiry(sandbox)
        # Marked first, so that a server that dies from here on leaves it to the next one to
        # remove; forgotten, so that nothing reaches it any more; removed in the background.
        try:
            self.removals.mark(sandbox.name)  # a file's creation: well under a millisecond
        except OSError as exc:
            sandbox.destroying, sandbox.gone_why = False, ""
            raise SandboxError(
                f"Sandbox {container_id} was not destroyed: the server could not record its removal under "
                f"{self.removals.folder} ({exc.strerror or exc}). The sandbox is unchanged; free space or fix the "
                "permissions of SANDBOX_STATE_DIR, then try again.") from exc
        channel = self.channels.detach(container_id)  # closed by the removal, which a stopping server waits for
        if channel is not None:
            self._closing[sandbox.name] = channel
        self.forget(container_id, why, release_egress=False)
        self.removals.start(sandbox.name)
        logger.info("destroyed sandbox %s (its container goes in the background)", container_id)

    def forget(self, container_id: str, why: str, release_egress: bool = True) -> None:
        """A sandbox is gone: its record, channel and links go; its running commands are buried.
        Without release_egress its address stays behind the proxy (its container still runs)."""
        sandbox = self.registry.pop(container_id)
        self.gone.bury(container_id, sandbox, why)
        if sandbox is not None and why == GONE_REMOVED:  # its container is gone: so may its disk be
            self.background.start_soon(self.disks.release, sandbox.name)
        self.channels.forget(container_id)
        self.commands.forget(container_id)
        self.links.forget(container_id)
        self.snapshots.unmark(container_id)
        self.ports.forget(container_id)
        self.lifetimes.forget(container_id)
        if self.keys is not None:
            self.keys.forget(container_id)
        if release_egress:
            self.background.start_soon(self.egress.release, container_id)

    def gone_note(self, container_id: str, tenant: str) -> str:
        """What the tenant is told of a sandbox it no longer has: where its files went at expiry, or
        why it went (removed outside this server, say, as the reaper found it), when remembered."""
        kept = self.snapshots.kept_from(container_id, tenant)
        why = "" if kept else self.gone.why(container_id, tenant)
        return kept or (f"; it {why}" if why else "")

    async def remove_destroyed(self, name: str) -> None:
        """A destroyed sandbox's container goes, then its place behind the proxy (not before:
        what still runs in it must not reach past the proxy meanwhile)."""
        channel = self._closing.pop(name, None)
        if channel is not None:
            await channel.close()
        await self.containers.remove(name, check=True)
        await self.egress.release(name[len(NAME_PREFIX):])
