"""set_egress: a running sandbox's egress changed in place, its processes left running. The kernel's
rules and the proxy (network/) take it at once: behind the proxy with a new allow-list (connections
to hosts no longer on it are cut), cut off from every network, or back under the server's policy;
the sandbox's environment file (paths.ENV_PATH) follows, for the commands that start from then on."""

from __future__ import annotations

from collections.abc import Sequence

from .backend.abstract import Backend
from .errors import SandboxError
from .model import Sandbox
from .network.egress import Egress
from .paths import ENV_PATH
from .runtime.runtimes import Runtimes


class EgressChanges:
    def __init__(self, egress: Egress, backend: Backend, runtimes: Runtimes) -> None:
        self.egress, self.backend, self.runtimes = egress, backend, runtimes

    async def set(self, sandbox: Sandbox, network: bool | None, allow_domains: Sequence[str] | None) -> None:
        if (network is None) == (allow_domains is None):
            raise SandboxError("set_egress takes one of network (true or false) and allow_domains (a list of hosts); "
                               "send exactly one.")
        if self.backend.shared:
            raise SandboxError(f"set_egress is not available on the {self.backend.name} backend yet; create a new "
                               "sandbox with the network or allow_domains it needs.")
        if sandbox.network == "none":
            if network is False:
                return
            raise SandboxError(f"Sandbox {sandbox.container_id} has no network interface (it was created with "
                               "network=false, or the server gives sandboxes none), so none can be turned on. "
                               "Create a new sandbox for work that needs the network.")
        if allow_domains is not None:
            domains = self.egress.check_allow_domains(list(allow_domains), None)
            await self.egress.restrict(sandbox.container_id, await sandbox_address(self.backend, sandbox), domains)
        elif network is False:
            await self.egress.cut_off(sandbox.container_id, await sandbox_address(self.backend, sandbox))
        else:
            await self.egress.release(sandbox.container_id)
        await self._write_environment(sandbox)

    async def _write_environment(self, sandbox: Sandbox) -> None:
        """The proxy's variables for commands started from now on, or none."""
        behind_proxy = self.egress.of(sandbox.network, sandbox.container_id)["policy"] == "allow_domains"
        data = self.egress.sandbox_environment(sandbox.container_id) if behind_proxy else b""
        await self.runtimes.ask(sandbox, lambda runtime: runtime.put(sandbox, ENV_PATH, data, 0o644))


async def sandbox_address(backend: Backend, sandbox: Sandbox) -> str:
    """The sandbox's address on its network (what the kernel's sets and the proxy know it by), asked once."""
    sandbox.address = sandbox.address or await backend.address(sandbox.name, sandbox.network)
    if not sandbox.address:
        raise SandboxError(f"Sandbox {sandbox.container_id} has no address on {sandbox.network}; try again.")
    return sandbox.address
