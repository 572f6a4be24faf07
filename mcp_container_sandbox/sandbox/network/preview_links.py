"""Preview links: a port inside a sandbox as an unguessable URL (``expose_port``).

A link is a token (160 random bits) naming a sandbox and a port; the token is the capability,
as a file link's id is. Links are kept where a restart finds them, in the server's state folder
(``<SANDBOX_STATE_DIR>/<namespace>/ports/<token>.json``), and die with their sandbox; where servers
share the sandboxes (Kubernetes), also on the sandbox (``port:<token>`` records), so any of them
serves the link. Each
connection through a link is made inside the sandbox's own network namespace by the backend
(backend.connect): nothing is published on the host, and a sandbox without a network, or under
the egress policy, is reached alike.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

from anyio.abc import ByteStream

from ..backend.abstract import Backend
from ..clock import clock
from ..errors import PortLinkNotFound, SandboxError, SandboxLimitReached
from ..model import LOCAL_TENANT, Sandbox

logger = logging.getLogger("mcp_sandbox.ports")

TOKEN_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class PortLink:
    token: str
    container_id: str
    port: int
    tenant: str
    created_at: float


class PortLinks:
    def __init__(self, directory: Path, max_per_sandbox: int, get: Callable[[str, str], Sandbox],
                 live: Callable[[str], Sandbox | None], backend: Backend) -> None:
        self.dir, self.max_per_sandbox, self.backend = directory, max_per_sandbox, backend
        self._get, self._live = get, live  # a tenant's live sandbox (or SandboxNotFound); any record by id
        self._links: dict[str, PortLink] = {}

    def load(self) -> None:
        self._links.clear()
        if not self.dir.is_dir():
            return
        for record in self.dir.glob("*.json"):
            try:
                link = PortLink(**json.loads(record.read_text()))
            except (OSError, ValueError, TypeError):
                record.unlink(missing_ok=True)
                continue
            if TOKEN_RE.match(link.token) and record.stem == link.token:
                self._links[link.token] = link

    def keep(self, container_ids: set[str]) -> None:
        """Drop the links of sandboxes that are no more (called after adoption)."""
        for link in list(self._links.values()):
            if link.container_id not in container_ids:
                self._drop(link)

    def forget(self, container_id: str) -> None:
        for link in self.of(container_id):
            self._drop(link)

    def _drop(self, link: PortLink) -> None:
        self._links.pop(link.token, None)
        (self.dir / f"{link.token}.json").unlink(missing_ok=True)

    def of(self, container_id: str) -> list[PortLink]:
        return sorted((link for link in self._links.values() if link.container_id == container_id),
                      key=lambda link: link.port)

    def learn(self, container_id: str, tenant: str, records: Mapping[str, str]) -> None:
        """The links another server made for a sandbox, from its records ("port:<token>" -> "<port> <made at>")."""
        for record, value in records.items():
            kind, _, token = record.partition(":")
            fields = value.split()
            if (kind == "port" and TOKEN_RE.match(token) and token not in self._links and len(fields) == 2
                    and fields[0].isdigit()):
                try:
                    self._links[token] = PortLink(token, container_id, int(fields[0]), tenant, float(fields[1]))
                except ValueError:
                    continue

    async def expose(self, container_id: str, port: int, tenant: str = LOCAL_TENANT) -> PortLink:
        sandbox = self._get(container_id, tenant)
        if not isinstance(port, int) or not 1 <= port <= 65535:
            raise SandboxError(f"port must be a TCP port number from 1 to 65535, got {port!r}.")
        for link in self.of(sandbox.container_id):
            if link.port == port:
                return link
        if len(self.of(sandbox.container_id)) >= self.max_per_sandbox:
            raise SandboxLimitReached(
                f"This sandbox already has {self.max_per_sandbox} preview links, the most one may have "
                f"(SANDBOX_MAX_PORTS): {', '.join(str(link.port) for link in self.of(sandbox.container_id))}. "
                "Serve more on one port (one web server for several apps), or use another sandbox.")
        link = PortLink(secrets.token_hex(20), sandbox.container_id, port, sandbox.tenant, clock.now())
        if self.backend.shared:  # before it is handed out: any server serves it from now on
            await self.backend.put_records(sandbox.name, {f"port:{link.token}": f"{port} {link.created_at:.3f}"})
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        part = self.dir / f"{link.token}.json.part"
        part.write_text(json.dumps(asdict(link)))
        part.rename(self.dir / f"{link.token}.json")
        self._links[link.token] = link
        logger.info("sandbox %s: port %d exposed", sandbox.container_id, port)
        return link

    def find(self, token: str) -> tuple[PortLink, Sandbox]:
        """The link and its live sandbox; PortLinkNotFound for anything else."""
        link = self._links.get(token) if isinstance(token, str) else None
        sandbox = self._live(link.container_id) if link is not None else None
        if link is None or sandbox is None or sandbox.destroying or sandbox.expired():
            raise PortLinkNotFound(
                "Unknown preview link. Preview links come from the expose_port tool and stop working when "
                "their sandbox is destroyed.")
        return link, sandbox

    async def open(self, token: str) -> tuple[PortLink, ByteStream]:
        """A connection to the link's port inside its sandbox (PortClosed when nothing listens)."""
        link, sandbox = self.find(token)
        return link, await self.backend.connect(sandbox.name, link.port)
