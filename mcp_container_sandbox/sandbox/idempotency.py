"""create_container's idempotency keys: a client that timed out and asks again with the same key gets
the sandbox its first call made, never a second one.

A key counts per tenant (kept as a hash of tenant and key, so two tenants' keys never meet) for as long
as its sandbox lives. Two calls with one key at the same moment: the second waits for the first and gets
its sandbox. The same key with other arguments is refused (the client meant another sandbox). Kept on the
host, ``<SANDBOX_STATE_DIR>/<namespace>/idempotency/<container_id>`` ("key-hash arguments-hash"), where a
restarted server reads them back; where servers share the sandboxes (Kubernetes), also on the sandbox,
so a retry that reaches another server gets the same one."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import anyio

from .errors import SandboxError
from .model import CONTAINER_ID_RE

KEY_RE = re.compile(r"^[\x21-\x7e]{1,128}$")  # visible ASCII: UUIDs, ULIDs, request ids


class IdempotencyKeys:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._sandboxes: dict[str, tuple[str, str]] = {}  # key hash -> (container id, arguments hash)
        self._pending: dict[str, anyio.Event] = {}

    @staticmethod
    def hashed(tenant: str, key: object) -> str:
        """The key as kept; SandboxError naming the argument when it is not one."""
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise SandboxError("idempotency_key must be 1 to 128 visible ASCII characters (no spaces), such as a "
                               "UUID the client made for this create; send the same one when it asks again.")
        return hashlib.sha256(f"{tenant}\0{key}".encode()).hexdigest()[:32]

    @staticmethod
    def arguments(*arguments: object) -> str:
        return hashlib.sha256(repr(arguments).encode()).hexdigest()[:16]

    @asynccontextmanager
    async def held(self, key_hash: str) -> AsyncIterator[tuple[str, str] | None]:
        """One create at a time for a key: the sandbox it made before, if any, while the caller holds it."""
        while key_hash in self._pending:
            await self._pending[key_hash].wait()
        done = self._pending[key_hash] = anyio.Event()
        try:
            yield self._sandboxes.get(key_hash)
        finally:
            del self._pending[key_hash]
            done.set()

    def record(self, container_id: str, key_hash: str, arguments: str) -> None:
        """Raises OSError when it cannot be written (the caller removes the sandbox and says so)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / container_id
        temporary = path.with_name(f".{container_id}.tmp")
        temporary.write_text(f"{key_hash} {arguments}\n")
        os.replace(temporary, path)
        self._sandboxes[key_hash] = (container_id, arguments)

    def learn(self, container_id: str, records: Mapping[str, str]) -> None:
        """The keys another server recorded on a shared sandbox ("idem:<key hash>" -> arguments hash)."""
        for record, arguments in records.items():
            kind, _, key_hash = record.partition(":")
            if kind == "idem" and re.fullmatch(r"[0-9a-f]{32}", key_hash):
                self._sandboxes.setdefault(key_hash, (container_id, arguments))

    def forget(self, container_id: str) -> None:
        for key_hash, (held, _) in list(self._sandboxes.items()):
            if held == container_id:
                del self._sandboxes[key_hash]
        with contextlib.suppress(OSError):
            (self.folder / container_id).unlink(missing_ok=True)

    def keep(self, container_ids: set[str]) -> None:
        """At adoption: the keys of the sandboxes still there are read back; the others' go."""
        self._sandboxes.clear()
        with contextlib.suppress(OSError):
            for path in self.folder.iterdir():
                fields = path.read_text().split() if path.name in container_ids else []
                if len(fields) == 2 and CONTAINER_ID_RE.match(path.name):
                    self._sandboxes[fields[0]] = (path.name, fields[1])
                else:
                    path.unlink(missing_ok=True)
