"""The warm pool's rule: a pooled sandbox is handed out only while the configuration it was
made under is the one in force."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import anyio

from .errors import SandboxError
from .model import Sandbox

logger = logging.getLogger("mcp_sandbox.pool")


def changed_settings(recorded: str, now: Mapping[str, str]) -> str:
    """What differs between the configuration a sandbox recorded (JSON) and the one in force;
    "" when nothing does."""
    try:
        then = json.loads(recorded) if recorded else None
    except ValueError:
        then = None
    if not isinstance(then, dict):
        return "it carries no record of the configuration it was made under"
    return "; ".join(
        f"{key}: {str(then.get(key))[:80]!r} -> {str(value)[:80]!r}"
        for key, value in now.items() if then.get(key) != value
    )


class WarmPool:
    """Sandboxes of the default kind started ahead of demand, each handed out once.

    The pool knows when to make, hand out and drop its members; the manager says how
    (``make`` starts one and opens its channel, ``claim`` records a hand-out inside the sandbox,
    so that a restarted server adopts it as handed out, ``discard`` removes one), and whether
    any can be made now (``can_fill``).
    """

    def __init__(
        self, size: int, make: Callable[[], Awaitable[Sandbox]], claim: Callable[[Sandbox, bytes], Awaitable[None]],
        discard: Callable[[Sandbox], Awaitable[None]], can_fill: Callable[[], bool],
    ) -> None:
        self.size = size
        self._make, self._claim, self._discard, self._can_fill = make, claim, discard, can_fill
        self._members: list[Sandbox] = []
        self._filling = 0
        self._wanted = anyio.Event()

    def __len__(self) -> int:
        return len(self._members)

    def reset(self) -> None:
        """Empty, before adoption rebuilds it from what Podman still has."""
        self._members = []
        self._wanted = anyio.Event()

    def adopt(self, sandbox: Sandbox) -> bool:
        """Take an unclaimed pooled sandbox back after a restart, while there is room."""
        if len(self._members) >= self.size:
            return False
        self._members.append(sandbox)
        return True

    async def take(self, tenant: str, ttl: int) -> Sandbox | None:
        """Hand out a pre-started sandbox, once only; its lifetime starts now. None when empty."""
        while self._members:
            sandbox = self._members.pop(0)
            self._wanted.set()
            sandbox.created_at = time.time()
            sandbox.expires_at = sandbox.created_at + ttl
            sandbox.tenant = tenant
            claim = f"{sandbox.created_at:.3f} {sandbox.expires_at:.3f} {tenant}\n".encode()
            try:
                await self._claim(sandbox, claim)
                return sandbox
            except SandboxError as exc:
                logger.warning("pooled sandbox %s unusable (%s); destroying it", sandbox.container_id, exc)
                await self._discard(sandbox)
        return None

    async def drop_expired(self, now: float) -> None:
        for member in [m for m in self._members if m.expires_at <= now]:
            self._members.remove(member)
            await self._discard(member)
            self._wanted.set()

    async def fill_forever(self) -> None:
        while True:
            if self.size - len(self._members) - self._filling <= 0:
                await self._wanted.wait()
                self._wanted = anyio.Event()
                continue
            if not self._can_fill():
                return  # no sandbox can be made here; the error is told to whoever asks for one
            self._filling += 1
            try:
                self._members.append(await self._make())
            except SandboxError as exc:
                logger.warning("could not add a sandbox to the pool: %s", exc)
                await anyio.sleep(10)
            finally:
                self._filling -= 1
