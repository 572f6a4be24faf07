"""The life of sandboxes around the server's own: adoption at start (what Podman still runs of
this namespace, pooled ones checked against the configuration in force), and the reaper
(lifetimes, idle channels, sandboxes removed behind the server's back)."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Awaitable, Callable

import anyio

from .backend.abstract import Container
from .backend.podman_cli import is_missing_container
from .clock import clock
from .containers import SandboxContainers
from .errors import DiskUnavailable, PodmanError, SandboxError
from .idempotency import IdempotencyKeys
from .lifetimes import Lifetime, Lifetimes
from .model import (
    CONTAINER_ID_RE,
    LABEL_CREATED,
    LABEL_EXPIRES,
    LABEL_IMAGE,
    LABEL_MADE_UNDER,
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    LABEL_NETWORK,
    LABEL_POOLED,
    LABEL_TENANT,
    LABEL_VOLUMES,
    LOCAL_TENANT,
    NAME_PREFIX,
    TENANT_RE,
    Sandbox,
    volumes_from_label,
)
from .network.preview_links import PortLinks
from .paths import CLAIM_PATH
from .pool import WarmPool, changed_settings
from .registry import SandboxRegistry
from .removals import Removals
from .runtime.gone_commands import GONE_ELSEWHERE, GONE_EXPIRED, GONE_REMOVED
from .runtime.runtimes import AgentChannels
from .storage.file_links import FileLinks
from .storage.snapshots import Snapshots

logger = logging.getLogger("mcp_sandbox.lifecycle")

# The reaper compares the server's sandboxes with Podman's list this often.
SYNC_SECONDS = 30


class Lifecycle:
    def __init__(
        self, containers: SandboxContainers, registry: SandboxRegistry, pool: WarmPool, links: FileLinks,
        channels: AgentChannels, snapshots: Snapshots, ports: PortLinks, destroy: Callable[[str, str, str], Awaitable[None]],
        forget: Callable[[str, str], None], removals: Removals, lifetimes: Lifetimes,
    ) -> None:
        self.containers, self.registry, self.pool, self.links, self.channels = containers, registry, pool, links, channels
        self.snapshots, self.ports = snapshots, ports
        self.settings, self.backend, self.disks = containers.settings, containers.backend, containers.disks
        self._destroy, self._forget, self.removals, self.lifetimes = destroy, forget, removals, lifetimes
        self.keys: IdempotencyKeys | None = None  # create_container's idempotency keys, set by the manager
        clock.on_step(self.clock_stepped)

    def clock_stepped(self, step: float) -> None:
        """The system clock jumped by ``step`` seconds: every sandbox keeps the seconds it had left
        (clock.py), and a restarted server reads the moved lifetimes from their records."""
        self.pool.clock_stepped(step)
        for sandbox in self.registry.all():
            sandbox.created_at += step
            sandbox.expires_at += step
            if self.backend.shared:  # a Pod's deadline is the kubelet's, on elapsed time
                continue
            try:
                self.lifetimes.record(sandbox.container_id,
                                      Lifetime(sandbox.created_at, sandbox.expires_at, sandbox.tenant))
            except OSError as exc:
                logger.warning("could not record the moved lifetime of %s: %s", sandbox.container_id, exc)

    def extend(self, sandbox: Sandbox, seconds: int) -> Sandbox:
        """Give the sandbox ``seconds`` more, up to SANDBOX_TTL_SECONDS from now (the longest lifetime a
        create may ask for); recorded on the host, so a restarted server keeps it (lifetimes.py)."""
        if self.backend.shared:
            raise SandboxError(f"A sandbox's lifetime cannot be extended on the {self.backend.name} backend: its "
                               "Pod's deadline (activeDeadlineSeconds) is set when it starts and can only be shortened.")
        expires_at = min(sandbox.expires_at + max(0, seconds), clock.now() + self.settings.ttl_seconds)
        if expires_at > sandbox.expires_at:
            try:
                self.lifetimes.record(sandbox.container_id, Lifetime(sandbox.created_at, expires_at, sandbox.tenant))
            except OSError as exc:
                raise SandboxError(
                    f"Sandbox {sandbox.container_id} keeps its lifetime: the server could not record the new one under "
                    f"{self.lifetimes.folder} ({exc.strerror or exc}). Free space or fix the permissions of "
                    "SANDBOX_STATE_DIR, then try again.") from exc
            sandbox.expires_at = expires_at
        return sandbox

    async def adopt(self) -> list[str]:
        """Take over this namespace's sandboxes: expired or unreadable ones are destroyed, stopped
        ones started again, pooled ones rejoin the pool or are adopted as handed out."""
        entries = await self.backend.list({LABEL_MANAGED: "true", LABEL_NAMESPACE: self.settings.namespace})
        adopted: list[Sandbox] = []
        now = clock.now()
        removing = self.removals.marked()
        for entry in entries:
            name, labels = entry.name, entry.labels
            if name in removing:  # destroyed, and the server stopped before its container went
                self.removals.start(name)
                continue
            sandbox = self._from_labels(entry)
            container_id, expires = sandbox.container_id, sandbox.expires_at
            if not CONTAINER_ID_RE.match(container_id) or not math.isfinite(expires) or expires <= now:
                logger.info("destroying expired or unreadable sandbox %s", name)
                # an unclaimed pooled one has no files of anyone's; a claimed one has its tenant from its record
                if labels.get(LABEL_POOLED) != "true" or self.lifetimes.read(container_id) is not None:
                    await self.snapshots.take_at_expiry(sandbox, running=entry.running)
                await self.containers.remove(name)
                continue
            if entry.running or entry.paused:  # frozen, if a server stopped while taking its snapshot
                await self.backend.thaw(name)
            if not entry.running and not entry.paused:
                try:
                    await self.containers.restart(sandbox)
                except (PodmanError, DiskUnavailable) as exc:
                    logger.warning("sandbox %s could not be restarted, destroying it: %s", name, exc)
                    await self.containers.remove(sandbox.name)
                    continue
            if labels.get(LABEL_POOLED) == "true" and not await self._adopt_pooled(sandbox, labels.get(LABEL_MADE_UNDER, "")):
                continue
            self.registry.add(sandbox)
            adopted.append(sandbox)
        listed = {entry.name for entry in entries}
        self.removals.retry()  # marked ones whose container is already gone: their disks and marks go
        for name in self.disks.names() - listed - removing:
            logger.info("removing the disk of sandbox %s, whose container is gone", name)
            await self.disks.release(name)
        egress = self.containers.egress
        egress.forget_saved({sandbox.container_id for sandbox in adopted})
        self.lifetimes.keep({sandbox.container_id for sandbox in adopted})
        if self.keys is not None:
            self.keys.keep({sandbox.container_id for sandbox in adopted})
        self.snapshots.keep_marks({sandbox.container_id for sandbox in adopted})
        self.ports.keep({sandbox.container_id for sandbox in adopted})
        async with anyio.create_task_group() as tg:
            for sandbox in adopted:
                tg.start_soon(self.links.adopt, sandbox)
                tg.start_soon(self._readopt_allow_list, sandbox)
        if adopted:
            logger.info("adopted %d sandbox(es)", len(adopted))
        return [sandbox.container_id for sandbox in adopted]

    def _from_labels(self, entry: Container) -> Sandbox:
        """A listed container's record, from its labels (and a lifetime extended since, lifetimes.py)."""
        name, labels = entry.name, entry.labels
        container_id = name[len(NAME_PREFIX):] if name.startswith(NAME_PREFIX) else ""
        try:
            created = float(labels.get(LABEL_CREATED, "nan"))
            expires = float(labels.get(LABEL_EXPIRES, "nan"))
        except ValueError:
            created = expires = float("nan")
        tenant = labels.get(LABEL_TENANT, LOCAL_TENANT)
        sandbox = Sandbox(container_id, labels.get(LABEL_IMAGE) or entry.image, created, expires,
                          tenant=tenant if TENANT_RE.match(tenant) else LOCAL_TENANT,
                          network=labels.get(LABEL_NETWORK, ""),
                          volumes=volumes_from_label(labels.get(LABEL_VOLUMES, "")))
        recorded = self.lifetimes.read(container_id)  # handed out from the pool, or extended since
        if recorded is not None and (recorded.tenant == sandbox.tenant or labels.get(LABEL_POOLED) == "true"):
            sandbox.created_at, sandbox.expires_at, sandbox.tenant = (
                recorded.created_at, recorded.expires_at, recorded.tenant)
        return sandbox

    async def _readopt_allow_list(self, sandbox: Sandbox) -> None:
        """A sandbox with allow_domains goes back behind the proxy, or is destroyed: never left open."""
        try:
            await self.containers.egress.readopt(sandbox)
        except SandboxError as exc:
            logger.error("sandbox %s has allow_domains that cannot be put in force again (%s); destroying it",
                         sandbox.container_id, exc)
            await self._destroy(sandbox.container_id, sandbox.tenant, GONE_REMOVED)

    async def follow_others(self) -> None:
        """Where servers share the sandboxes (Kubernetes): a sandbox another server made is served here
        too once it runs, one it destroyed is forgotten, and the links made for any are served here."""
        labels = {LABEL_MANAGED: "true", LABEL_NAMESPACE: self.settings.namespace}
        async for kind, entry in self.backend.follow(labels):
            container_id = entry.name[len(NAME_PREFIX):] if entry.name.startswith(NAME_PREFIX) else ""
            known = self.registry.live(container_id)
            if kind == "DELETED":
                if known is not None and not known.destroying:
                    logger.info("sandbox %s was removed by another server", container_id)
                    self._forget(container_id, GONE_ELSEWHERE)
                continue
            if known is None and not entry.ours and entry.running and entry.labels.get(LABEL_POOLED) != "true":
                sandbox = self._from_labels(entry)
                if CONTAINER_ID_RE.match(container_id) and math.isfinite(sandbox.expires_at) and \
                        sandbox.expires_at > clock.now():
                    self.registry.add(sandbox)
                    known = sandbox
            if known is not None:
                self.links.learn(container_id, entry.records)
                self.ports.learn(container_id, known.tenant, entry.records)
                self.containers.egress.learn(container_id, entry.address, entry.records)
                if self.keys is not None:
                    self.keys.learn(container_id, entry.records)

    async def _adopt_pooled(self, sandbox: Sandbox, made_under: str) -> bool:
        """A pooled sandbox was handed out if its lifetime was recorded (lifetimes.py) or it holds a
        claim: then it is adopted with that lifetime (True), whatever changed since. Unclaimed, it
        rejoins the pool if it was made under the configuration in force now, else it is destroyed
        (False)."""
        recorded = self.lifetimes.read(sandbox.container_id)
        if recorded is not None:  # written on the host when handed out: the claim inside is not asked
            sandbox.created_at, sandbox.expires_at, sandbox.tenant = (
                recorded.created_at, recorded.expires_at, recorded.tenant)
            if sandbox.expires_at > clock.now():
                return True
            await self.snapshots.take_at_expiry(sandbox)
            await self.containers.remove(sandbox.name)
            return False
        result = await self.backend.exec(sandbox.name, "cat", CLAIM_PATH, timeout=30, stdout_limit=1024)
        fields = result.stdout.decode(errors="replace").split()
        if result.exit_code == 0 and len(fields) in (2, 3):
            try:
                sandbox.created_at, sandbox.expires_at = float(fields[0]), float(fields[1])
            except ValueError:
                pass
            else:
                sandbox.tenant = fields[2] if len(fields) == 3 and TENANT_RE.match(fields[2]) else LOCAL_TENANT
                if sandbox.expires_at > clock.now():
                    return True
                await self.snapshots.take_at_expiry(sandbox)
            # A claim that cannot be read was still a claim: never hand the sandbox out again.
            await self.containers.remove(sandbox.name)
            return False
        changed = changed_settings(made_under, await self.containers.made_under())
        if changed:
            logger.info("destroying pooled sandbox %s: it was made under another configuration (%s)",
                        sandbox.container_id, changed)
        unclaimed = result.exit_code != 0 and not is_missing_container(result.stderr)
        if not (unclaimed and not changed and not self.containers.limits.problem and self.pool.adopt(sandbox)):
            await self.containers.remove(sandbox.name)
        return False

    async def reap_forever(self) -> None:
        last_sync = time.monotonic()
        while True:
            await anyio.sleep(self.settings.reap_interval_seconds)
            await self.reap_expired()
            self.removals.retry()
            await self.channels.close_idle()
            if time.monotonic() - last_sync > SYNC_SECONDS:
                last_sync = time.monotonic()
                await self.forget_vanished()
                await self.containers.egress.keep()

    async def reap_expired(self) -> list[str]:
        now = clock.now()
        await self.pool.drop_expired(now)
        self.snapshots.reap_expired(now)
        expired = [s for s in self.registry.all() if s.expires_at <= now]
        for sandbox in expired:
            container_id = sandbox.container_id
            logger.info("sandbox %s reached the end of its lifetime; destroying it", container_id)
            try:
                await self._destroy(container_id, sandbox.tenant, GONE_EXPIRED)
            except SandboxError as exc:
                logger.warning("could not destroy expired sandbox %s: %s", container_id, exc)
        return [s.container_id for s in expired]

    async def forget_vanished(self) -> None:
        """Drop sandboxes that were removed behind the server's back: those made before Podman was
        asked (a listing of a thousand containers takes seconds) that it did not list, and that it
        then says are gone when asked about each (a listing made while containers come and go may
        leave one out)."""
        asked_at = clock.now()
        try:
            alive = {entry.name for entry in await self.backend.list({LABEL_NAMESPACE: self.settings.namespace})}
        except SandboxError as exc:
            logger.warning("could not list sandboxes: %s", exc)
            return
        for sandbox in self.registry.all():
            if sandbox.name in alive or sandbox.created_at >= asked_at - 1:
                continue
            said = await self.backend.status(sandbox.name)
            if said.exit_code != 0 and is_missing_container(said.stderr) and self.registry.live(sandbox.container_id):
                # Where servers share the sandboxes, another server's destroy is the likely cause (its
                # watch event may simply come after this look).
                self._forget(sandbox.container_id, GONE_ELSEWHERE if self.backend.shared else GONE_REMOVED)
