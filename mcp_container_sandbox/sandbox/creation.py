"""How a sandbox comes to be: create_container's checks (lifetime, image, snapshot, allow-list,
quotas), a sandbox from the warm pool or a new container, its place behind the egress proxy, and
its channel opened ahead; and the pool's own makes, claims and discards."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from ..settings import SandboxSettings
from .backend.abstract import Backend
from .containers import SandboxContainers, sandbox_labels
from .egress_changes import sandbox_address
from .errors import ImageNotAllowed, SandboxError, TakenElsewhere
from .idempotency import IdempotencyKeys
from .lifetimes import Lifetime, Lifetimes
from .limits import LimitsCheck
from .model import LOCAL_TENANT, Sandbox, VolumeMount
from .network.egress import Egress
from .network.secret_rules import SecretRule
from .paths import CLAIM_PATH, ENV_PATH
from .pool import WarmPool
from .registry import SandboxRegistry
from .removals import Removals
from .runtime.commands import CommandRunner
from .runtime.runtimes import AgentChannels, Runtimes
from .storage.snapshots import Snapshots
from .storage.volumes import Volumes

logger = logging.getLogger("mcp_sandbox.manager")
OPEN_AHEAD_WAIT_SECONDS = 10.0  # how long a new sandbox's channel waits for a burst of creates to end


class Creation:
    def __init__(
        self, settings: SandboxSettings, backend: Backend, registry: SandboxRegistry, containers: SandboxContainers,
        snapshots: Snapshots, egress: Egress, limits: LimitsCheck, channels: AgentChannels, runtimes: Runtimes,
        commands: CommandRunner, lifetimes: Lifetimes, start_soon: Callable[..., Any],
    ) -> None:
        self.settings, self.backend, self.registry, self.containers = settings, backend, registry, containers
        self.snapshots, self.egress, self.limits = snapshots, egress, limits
        self.channels, self.runtimes, self.commands, self.lifetimes = channels, runtimes, commands, lifetimes
        self._start_soon = start_soon
        self.pool: WarmPool  # made by the manager with this object's pool callbacks, then set here
        self.keys: IdempotencyKeys  # create_container's idempotency keys, set by the manager
        self.volumes: Volumes  # the tenants' volumes, set by the manager
        self.removals: Removals  # the destroyed sandboxes still being removed, set by the manager
        self.discard_created: Callable[[Sandbox], Any]  # destroys a sandbox just made (the manager's destroy)

    def room(self) -> int:
        """How big the warm pool may be now: SANDBOX_MAX_CONTAINERS less the live sandboxes (a
        sandbox network that fills is followed by the next: network/sandbox_networks.py)."""
        return self.settings.max_containers - len(self.registry)

    async def create(
        self, image: str | None = None, tenant: str = LOCAL_TENANT, ttl_seconds: int | None = None,
        network: bool | None = None, allow_domains: list[str] | None = None, snapshot_id: str | None = None,
        snapshot_on_expiry: bool = False, idempotency_key: str | None = None,
        volumes: Sequence[VolumeMount] = (), secrets: Sequence[dict[str, str]] = (),
    ) -> Sandbox:
        """A sandbox for the tenant; ttl_seconds (up to SANDBOX_TTL_SECONDS) shortens its lifetime,
        network=False cuts it off from every network (None: as the egress policy says), allow_domains
        lets it reach only those hosts, through the egress proxy; snapshot_id starts it from that
        snapshot's files (a fork), snapshot_on_expiry keeps its files in a snapshot when it expires;
        idempotency_key: the sandbox an earlier create with this key made, while it lives (idempotency.py);
        volumes: the tenant's volumes it mounts (storage/volumes.py); secrets: the server's secrets the
        egress proxy puts into its requests (network/secrets.py)."""
        arguments = (image, ttl_seconds, network, allow_domains, snapshot_id, snapshot_on_expiry)
        if idempotency_key is None:
            return await self._create(tenant, *arguments, tuple(volumes), secrets)
        # What the key's sandbox was asked with (the newer arguments only when given: keys recorded before them hold).
        asked = self.keys.arguments(*arguments, *((tuple(volumes), tuple(tuple(sorted(entry.items())) for entry in secrets))
                                                   if volumes or secrets else ()))
        key_hash = self.keys.hashed(tenant, idempotency_key)
        async with self.keys.held(key_hash) as earlier:
            made = self.registry.live(earlier[0]) if earlier is not None else None
            if (made is not None and earlier is not None and made.tenant == tenant and not made.destroying
                    and not made.expired()):
                if earlier[1] != asked:
                    raise SandboxError(
                        f"idempotency_key was used for sandbox {made.container_id}, created with other arguments. "
                        "Send a new key for another sandbox, or the same arguments to get that one again.")
                return made
            sandbox = await self._create(tenant, *arguments, tuple(volumes), secrets)
            try:
                self.keys.record(sandbox.container_id, key_hash, asked)
                if self.backend.shared:
                    await self.backend.put_records(sandbox.name, {f"idem:{key_hash}": asked})
            except (OSError, SandboxError) as exc:
                self._start_soon(self.discard_created, sandbox)
                raise SandboxError(f"The sandbox's idempotency_key could not be recorded ({exc}); nothing was made. "
                                   "Try again.") from exc
            return sandbox

    async def _create(self, tenant: str, image: str | None, ttl_seconds: int | None, network: bool | None,
                      allow_domains: list[str] | None, snapshot_id: str | None, snapshot_on_expiry: bool,
                      volumes: tuple[VolumeMount, ...] = (), secrets: Sequence[dict[str, str]] = ()) -> Sandbox:
        if ttl_seconds is not None and not 1 <= ttl_seconds <= self.settings.ttl_seconds:
            raise SandboxError(
                f"ttl_seconds must be between 1 and {self.settings.ttl_seconds} (SANDBOX_TTL_SECONDS, the server's "
                "maximum). Omit it for the maximum."
            )
        ttl = ttl_seconds or self.settings.ttl_seconds
        snapshot = self.snapshots.get(snapshot_id, tenant) if snapshot_id is not None else None
        if snapshot is not None:
            if (image or "").strip() not in ("", snapshot.image):
                raise SandboxError(f"A sandbox made from snapshot {snapshot.snapshot_id} runs on the snapshot's image, "
                                   f"{snapshot.image!r}; omit the image argument.")
            image = snapshot.image
        image = (image or "").strip() or self.settings.image
        if image not in self.settings.images:
            allowed = ", ".join(self.settings.images)
            raise ImageNotAllowed(
                f"Image {image[:200]!r} is not allowed here. Allowed images: {allowed}. "
                "Omit the image argument to get the default one."
            )
        domains = self.egress.check_allow_domains(allow_domains, network) if allow_domains is not None else ()
        rules = self.egress.check_secrets(secrets, domains)
        mounts = self.volumes.check(tenant, volumes)
        self.limits.require()
        async with self.registry.reserve(tenant), self.volumes.taken(tenant, mounts) as binds:
            # The pool holds sandboxes of the default image on the server's network, with no volumes.
            offline = network is False and self.egress.network != "none"
            pooled = image == self.settings.image and not offline and snapshot is None and not mounts
            sandbox = await self.pool.take(tenant, ttl) if pooled else None
            fresh = sandbox is None
            if sandbox is None:
                layer = None
                if snapshot is not None:
                    image, layer = await self.snapshots.base_image(snapshot), self.snapshots.archive(snapshot)
                async with self.pool.creating():  # the pool waits for this one to start
                    await self.removals.caught_up()
                    sandbox = await self.containers.start(
                        image, pooled=False, tenant=tenant, ttl=ttl, network="none" if offline else None, layer=layer,
                        mounts=mounts, binds=binds)
            if domains:
                await self._behind_proxy(sandbox, domains, rules)
            if snapshot_on_expiry:
                self.snapshots.mark(sandbox.container_id)
            self.registry.add(sandbox)
            self.commands.know(sandbox.container_id)
        if fresh:  # a pooled one has its channel open already
            self._start_soon(self._open_ahead, sandbox)
        logger.info("created sandbox %s from %s for tenant %s", sandbox.container_id, image, tenant)
        return sandbox

    async def _open_ahead(self, sandbox: Sandbox) -> None:
        """A new sandbox's command channel, opened while its creator reads the answer: its first
        command finds it open, or waits for the opening under way rather than start another.
        During a burst it waits for the other creates first (its podman exec would slow them);
        a command that comes meanwhile opens the channel itself."""
        await self.pool.no_creates(OPEN_AHEAD_WAIT_SECONDS)
        if self.registry.live(sandbox.container_id) is None:
            return
        try:
            await self.channels.get(sandbox)
        except SandboxError:
            return  # the first command opens it again, or says why it cannot
        if self.registry.live(sandbox.container_id) is None:  # destroyed meanwhile
            await self.channels.close(sandbox.container_id)

    async def _behind_proxy(self, sandbox: Sandbox, domains: tuple[str, ...], rules: tuple[SecretRule, ...]) -> None:
        """Let the sandbox reach only these hosts, through the proxy, which puts its secrets (rules)
        into its requests; it is removed if that fails."""
        try:
            address = await sandbox_address(self.backend, sandbox)
            for path, data in self.egress.ca_files() if rules else ():
                await self.runtimes.ask(sandbox, lambda runtime: runtime.put(sandbox, path, data, 0o644))
            await self.egress.restrict(sandbox.container_id, address, domains, rules)
            await self.runtimes.ask(sandbox, lambda runtime: runtime.put(
                sandbox, ENV_PATH, self.egress.sandbox_environment(sandbox.container_id), 0o644))
        except SandboxError:
            await self.containers.remove(sandbox.name)
            await self.egress.release(sandbox.container_id)
            raise

    async def make_pooled(self) -> Sandbox:
        await self.removals.caught_up()
        sandbox = await self.containers.start(self.settings.image, pooled=True)
        await self.channels.get(sandbox)  # a pooled sandbox answers its first command at once
        if sandbox.network in self.egress.sandbox_networks.bridges:
            sandbox.address = await self.backend.address(sandbox.name, sandbox.network)  # for allow_domains
        return sandbox

    async def claim_pooled(self, sandbox: Sandbox, claim: bytes) -> None:
        """Hand a pooled sandbox out: its lifetime and tenant recorded on the host (what a restarted
        server believes), then the claim inside it (what tells a server before that one it was taken).
        Where servers share the sandboxes, the claim is the backend's instead, and only one of them wins."""
        if self.backend.shared:
            if not await self.backend.claim(sandbox.name, sandbox_labels(sandbox, self.settings.namespace)):
                await self.channels.close(sandbox.container_id)
                raise TakenElsewhere(f"pooled sandbox {sandbox.container_id} was handed out by another server")
            return
        try:
            self.lifetimes.record(sandbox.container_id, Lifetime(sandbox.created_at, sandbox.expires_at, sandbox.tenant))
        except OSError as exc:
            raise SandboxError(f"its lifetime could not be recorded under {self.lifetimes.folder} ({exc})") from exc
        await self.runtimes.ask(sandbox, lambda runtime: runtime.put(sandbox, CLAIM_PATH, claim, 0o644))

    async def discard(self, sandbox: Sandbox) -> None:
        await self.channels.close(sandbox.container_id)
        await self.containers.remove(sandbox.name)
