"""A sandbox's lifetime where no one in the sandbox can change it: on the host, under
``<SANDBOX_STATE_DIR>/<namespace>/lifetimes/<container_id>`` ("created expires tenant").

A sandbox made for its tenant has its lifetime in its Podman labels, which cannot change; a pooled
one is labelled before anyone claims it. So a record is written here when a pooled sandbox is
handed out, and when a person extends a sandbox's lifetime from the console; a restarted server
reads it at adoption, over the labels. (The claim file inside a pooled sandbox, which its own root
could rewrite, counts only for a sandbox with no record here.)"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from .model import CONTAINER_ID_RE, TENANT_RE

logger = logging.getLogger("mcp_sandbox.lifetimes")


@dataclass(frozen=True)
class Lifetime:
    created_at: float
    expires_at: float
    tenant: str


class Lifetimes:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def record(self, container_id: str, lifetime: Lifetime) -> None:
        """Raises OSError when it cannot be written (the caller says so and changes nothing)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / container_id
        temporary = path.with_name(f".{container_id}.tmp")
        temporary.write_text(f"{lifetime.created_at:.3f} {lifetime.expires_at:.3f} {lifetime.tenant}\n")
        os.replace(temporary, path)

    def read(self, container_id: str) -> Lifetime | None:
        if not CONTAINER_ID_RE.match(container_id):
            return None
        try:
            fields = (self.folder / container_id).read_text().split()
            lifetime = Lifetime(float(fields[0]), float(fields[1]), fields[2])
        except (OSError, ValueError, IndexError):
            return None
        return lifetime if TENANT_RE.match(lifetime.tenant) else None

    def forget(self, container_id: str) -> None:
        with contextlib.suppress(OSError):
            (self.folder / container_id).unlink(missing_ok=True)

    def keep(self, container_ids: set[str]) -> None:
        """At adoption: the records of sandboxes that are no more go."""
        with contextlib.suppress(OSError):
            for path in self.folder.iterdir():
                if path.name not in container_ids:
                    path.unlink(missing_ok=True)
