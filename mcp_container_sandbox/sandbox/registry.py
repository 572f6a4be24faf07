"""The server's sandboxes in memory: who holds which, and the quotas (SANDBOX_MAX_CONTAINERS,
SANDBOX_MAX_PER_TENANT) that a create must pass. Podman's labels hold the truth; this is what
adoption rebuilds from them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import anyio

from .clock import clock
from .errors import SandboxLimitReached, SandboxNotFound
from .model import LOCAL_TENANT, Sandbox


class SandboxRegistry:
    def __init__(self, max_containers: int, max_per_tenant: int,
                 gone_note: Callable[[str, str], str] = lambda container_id, tenant: "") -> None:
        self._gone_note = gone_note  # what the tenant is told of a sandbox it no longer has
        self.max_containers = max_containers
        self.max_per_tenant = max_per_tenant or max_containers
        self._sandboxes: dict[str, Sandbox] = {}
        self._creating = 0
        self._creating_by_tenant: dict[str, int] = {}
        self._lock = anyio.Lock()

    def __len__(self) -> int:
        return len(self._sandboxes)

    def get(self, container_id: str, tenant: str = LOCAL_TENANT) -> Sandbox:
        """The tenant's sandbox; another tenant's is answered exactly as one that does not exist."""
        sandbox = self.live(container_id)
        if sandbox is None or sandbox.tenant != tenant:
            raise SandboxNotFound(str(container_id), self._gone_note(str(container_id), tenant))
        if sandbox.expired():
            raise SandboxNotFound(container_id, " (its lifetime ended; it is being destroyed)")
        if sandbox.destroying:
            raise SandboxNotFound(container_id, " (it is being destroyed)")
        return sandbox

    def live(self, container_id: str) -> Sandbox | None:
        """The record of a sandbox the server holds, whoever's it is (None for any other input)."""
        return self._sandboxes.get(container_id) if isinstance(container_id, str) else None

    def list(self, tenant: str = LOCAL_TENANT) -> list[Sandbox]:
        """The tenant's usable sandboxes: one whose lifetime ended, or being destroyed, is gone to its
        tenant (as get() says) while its removal finishes."""
        now = clock.now()
        return sorted((s for s in self._sandboxes.values() if s.tenant == tenant and not s.destroying
                       and not s.expired(now)), key=lambda s: s.created_at)

    def all(self) -> list[Sandbox]:
        return list(self._sandboxes.values())

    def mounting(self, tenant: str, volume: str) -> list[str]:
        """The tenant's sandboxes that mount the volume (those being destroyed too: their containers may
        hold it still)."""
        return [sandbox.container_id for sandbox in self._sandboxes.values()
                if sandbox.tenant == tenant and any(mount.name == volume for mount in sandbox.volumes)]

    def add(self, sandbox: Sandbox) -> None:
        self._sandboxes[sandbox.container_id] = sandbox

    def pop(self, container_id: str) -> Sandbox | None:
        return self._sandboxes.pop(container_id, None)

    @asynccontextmanager
    async def reserve(self, tenant: str) -> AsyncIterator[None]:
        """A place for one more sandbox of the tenant while it is made, or SandboxLimitReached."""
        async with self._lock:
            if len(self._sandboxes) + self._creating >= self.max_containers:
                raise SandboxLimitReached(
                    f"The server already runs its maximum of {self.max_containers} sandboxes "
                    "(SANDBOX_MAX_CONTAINERS). Destroy one you no longer need with destroy_container, "
                    "or wait until one expires."
                )
            creating = self._creating_by_tenant.get(tenant, 0)
            if len(self.list(tenant)) + creating >= self.max_per_tenant:
                raise SandboxLimitReached(
                    f"You already have {self.max_per_tenant} sandboxes, the most one client may hold "
                    "(SANDBOX_MAX_PER_TENANT). Destroy one you no longer need with destroy_container, "
                    "or wait until one expires."
                )
            self._creating += 1
            self._creating_by_tenant[tenant] = creating + 1
        try:
            yield
        finally:
            self._creating -= 1
            self._creating_by_tenant[tenant] -= 1
            if not self._creating_by_tenant[tenant]:
                del self._creating_by_tenant[tenant]
