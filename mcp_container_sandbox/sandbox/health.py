"""/health's answer: whether Podman answers, and what this server runs with."""

from __future__ import annotations

import time
from typing import Any

import anyio

from .backend.abstract import Backend
from .backend.disks import SandboxDisks
from .errors import SandboxError
from .limits import LimitsCheck
from .network.egress import Egress
from .pool import WarmPool
from .registry import SandboxRegistry


class HealthProbe:
    def __init__(self, backend: Backend, limits: LimitsCheck, disks: SandboxDisks, registry: SandboxRegistry,
                 egress: Egress, pool: WarmPool) -> None:
        self.backend, self.limits, self.disks, self.registry, self.egress, self.pool = (
            backend, limits, disks, registry, egress, pool)
        self._health_lock = anyio.Lock()
        self._health_probe: tuple[float, str | SandboxError] | None = None  # (when it started, its answer)

    async def health(self) -> dict[str, Any]:
        """Whether Podman answers, and what this server runs with. One ``podman version`` a probe
        (it opens Podman's store and database as every command does, ~30 ms whatever the number
        of containers; listing them cost ~0.3 ms each and, with 1,000 live, waited seconds behind
        creates); requests that come while a probe runs share the next one instead of each
        starting its own, so a storm of health checks costs two probes."""
        asked = time.monotonic()
        async with self._health_lock:
            if self._health_probe is None or self._health_probe[0] < asked:
                started = time.monotonic()
                try:
                    self._health_probe = (started, await self.backend.version())
                except SandboxError as exc:
                    self._health_probe = (started, exc)
            answer = self._health_probe[1]
        if isinstance(answer, SandboxError):
            raise answer
        version = answer
        self.limits.require()
        disk = self.disks.limit_bytes if self.disks.enabled else f"unbounded: {self.disks.why_not}"
        answer: dict[str, Any] = {"backend": self.backend.name, f"{self.backend.name}_version": version,
                                  "sandboxes": len(self.registry), "egress": self.egress.describe(),
                                  "sandbox_disk_bytes": disk, "limits": "enforced", "pool": self.pool.describe(),
                                  "networks": self.egress.networks()}
        if self.backend.name == "kubernetes":  # what the server can see in force, and what it cannot
            answer["sandbox_disk_bytes"] = f"the Pod's ephemeral-storage limit: {self.disks.limit_bytes} (eviction, no ENOSPC)"
            answer["limits"] = {
                "memory_and_cpu": "enforced: requests = limits (256Mi, 500m), checked in the first sandbox's cgroup",
                "processes": "not set per Pod: the sandbox nodes' kubelet podPidsLimit, which the server cannot see "
                             "(docs/kubernetes.md)",
            }
        return answer
