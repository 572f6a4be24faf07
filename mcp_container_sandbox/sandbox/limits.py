"""The limits are the product's promise: whether this host's Podman really applies them, decided
at start from ``podman info``, then from Podman's warning on every start and the first
sandbox's own cgroup. Where they would not apply, no sandbox is made and every answer says why."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from .backend.abstract import Backend
from .contract import MEMORY_LIMIT_BYTES
from .errors import LimitsNotEnforced, SandboxError
from .model import Sandbox

logger = logging.getLogger("mcp_sandbox.limits")

# What Podman prints when it starts a container without the limits it was given.
LIMITS_IGNORED_WARNING = "resource limits are not supported and ignored"

# A sandbox's own memory limit as its cgroup shows it: cgroup v1, then v2.
CGROUP_MEMORY_LIMIT_FILES = ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max")
LIMITS_WAY_OUT = (
    " Sandboxes without their memory, CPU and process limits are refused. Run the server as root "
    "(rootful Podman), or use a host with cgroup v2 whose memory, cpu and pids controllers are "
    "delegated to this user (systemd: Delegate=yes), then restart the server."
)


def why_limits_fail(info: Mapping[str, Any]) -> str:
    """Why Podman, by its own ``podman info``, cannot give sandboxes their limits; "" if it can."""
    host = info.get("host") or {}
    rootless = bool((host.get("security") or {}).get("rootless"))
    version = host.get("cgroupVersion") or ""
    controllers = set(host.get("cgroupControllers") or [])
    if rootless and version == "v1":
        return ("Podman runs rootless on a cgroup v1 host, where it ignores every resource limit "
                "(\"Resource limits are not supported and ignored on cgroups V1 rootless systems\")." + LIMITS_WAY_OUT)
    missing = sorted({"memory", "pids", "cpu"} - controllers)
    if rootless and version == "v2" and missing:
        return (f"Podman runs rootless and the cgroup controllers {', '.join(missing)} are not delegated "
                "to this user, so those limits would be ignored." + LIMITS_WAY_OUT)
    return ""


class LimitsCheck:
    """Why sandboxes cannot be given their limits here (``problem``, "" while they can)."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.problem = ""
        self._verified = False

    def require(self) -> None:
        """Raise the reason no sandbox can be made here, if there is one."""
        if self.problem:
            raise LimitsNotEnforced(self.problem)

    async def check_host(self) -> None:
        """At start: what Podman says of the host."""
        try:
            info = await self.backend.host_info()
        except SandboxError as exc:  # Podman is missing or hangs: /health says so
            logger.warning("could not ask Podman about resource limits: %s", exc)
            info = {}
        self._refuse(why_limits_fail(info))

    async def verify(self, sandbox: Sandbox, warnings: str) -> None:
        """A sandbox just started: refuse it if Podman warned that it ignored the limits, and once,
        if the first sandbox's own memory cgroup shows none (a limit the sandbox cannot see is not
        proven absent)."""
        if LIMITS_IGNORED_WARNING in warnings.lower():
            self._refuse(warnings.strip().splitlines()[-1][:300] + LIMITS_WAY_OUT)
        elif not self._verified:
            result = await self.backend.exec(sandbox.name, "cat", *CGROUP_MEMORY_LIMIT_FILES, timeout=30,
                                             stdout_limit=1024)
            words = result.stdout.decode(errors="replace").split()
            if words and (words[0] == "max" or (words[0].isdigit() and int(words[0]) > MEMORY_LIMIT_BYTES)):
                self._refuse(f"the first sandbox's memory cgroup says its limit is {words[0]}, not "
                             f"{MEMORY_LIMIT_BYTES}: Podman did not apply the limits." + LIMITS_WAY_OUT)
            self._verified = True
        self.require()

    def _refuse(self, problem: str) -> None:
        if problem:
            self.problem = problem
            logger.error("sandboxes will NOT be created: %s", problem)
