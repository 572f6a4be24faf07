"""The console's API over sandboxes: the list, destroy, a signal to a command, and the tickets its
WebSockets take. A viewer is a tenant (a token the MCP endpoint takes), or an admin
(CONSOLE_ADMIN_TOKENS), who sees every tenant's sandboxes and their commands, read-only."""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ..sandbox import Sandbox, SandboxError, SandboxManager, SandboxNotFound, utc_iso

logger = logging.getLogger("mcp_sandbox.console")

TICKET_SECONDS = 30.0
MAX_TICKETS = 1024
PURPOSES = ("terminal", "commands")
APP_TERMINAL = "app-terminal"  # a terminal of the MCP App's, which runs in the host's frame (any origin)
NOT_FOUND = "No such sandbox: it was never made, has gone, or is not yours."
READ_ONLY = "An admin token sees every sandbox but changes none; sign in with the owner's token to act."


@dataclass(frozen=True)
class Viewer:
    tenant: str  # "" for an admin
    who: str  # for the log of actions
    admin: bool = False


Caller = Callable[[Request], Awaitable[Viewer | None]]


async def acting(caller: Caller, refused: Callable[[], Response], request: Request) -> Viewer | Response:
    """Who makes a request that acts in a sandbox or reads inside it: 401 without a token this server
    takes, 403 for an admin (read-only)."""
    viewer = await caller(request)
    if viewer is None:
        return refused()
    if viewer.admin:
        return JSONResponse({"error": READ_ONLY}, status_code=403)
    return viewer


class Tickets:
    """One-time tickets for the WebSockets: made by an authenticated request for one sandbox and one
    purpose, good once and for TICKET_SECONDS."""

    def __init__(self) -> None:
        self._tickets: dict[str, tuple[float, str, str, str]] = {}

    def issue(self, tenant: str, container_id: str, purpose: str) -> str:
        now = time.monotonic()
        self._tickets = {k: v for k, v in self._tickets.items() if v[0] > now}
        if len(self._tickets) >= MAX_TICKETS:
            self._tickets.pop(next(iter(self._tickets)))
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = (now + TICKET_SECONDS, tenant, container_id, purpose)
        return ticket

    def purpose(self, ticket: str) -> str | None:
        entry = self._tickets.get(ticket)
        return entry[3] if entry is not None else None

    def redeem(self, ticket: str, purpose: str) -> tuple[str, str] | None:
        """(tenant, container_id) of a ticket for this purpose, not used before and not expired."""
        entry = self._tickets.pop(ticket, None)
        if entry is None or entry[0] <= time.monotonic() or entry[3] != purpose:
            return None
        return entry[1], entry[2]


class SandboxesApi:
    def __init__(self, sandboxes: SandboxManager, caller: Caller, refused: Callable[[], Response],
                 tickets: Tickets) -> None:
        self.sandboxes, self.caller, self.refused, self.tickets = sandboxes, caller, refused, tickets
        self._cpu: dict[str, tuple[float, float]] = {}  # per sandbox, the last (time, CPU seconds) read

    def _use(self, container_id: str, tenant: str) -> dict[str, object]:
        """CPU (percent of one core since the list was last asked for) and memory, from the cgroup."""
        usage = self.sandboxes.usage(container_id, tenant)
        if usage is None:
            return {"cpu_percent": None, "memory_bytes": None}
        now = time.monotonic()
        before = self._cpu.get(container_id)
        self._cpu[container_id] = (now, usage.cpu_seconds)
        percent = None
        if before is not None and now - before[0] > 0.05:
            percent = round(max(0.0, usage.cpu_seconds - before[1]) / (now - before[0]) * 100, 1)
        return {"cpu_percent": percent, "memory_bytes": usage.memory_bytes}

    def routes(self, prefix: str) -> list[Route]:
        api = prefix + "/api/sandboxes"
        return [Route(api, self.list, methods=["GET"]),
                Route(api + "/{container_id}", self.destroy, methods=["DELETE"]),
                Route(api + "/{container_id}/tickets", self.ticket, methods=["POST"]),
                Route(api + "/{container_id}/snapshots", self.snapshot, methods=["POST"]),
                Route(api + "/{container_id}/lifetime", self.extend, methods=["POST"]),
                Route(api + "/{container_id}/commands/{command_id}/signal", self.signal, methods=["POST"])]

    def _row(self, sandbox: Sandbox, admin: bool) -> dict[str, object]:
        container_id, tenant = sandbox.container_id, sandbox.tenant
        links = self.sandboxes.port_links(container_id, tenant)
        row: dict[str, object] = {
            "container_id": container_id, "image": sandbox.image,
            "created_at": utc_iso(sandbox.created_at), "expires_at": utc_iso(sandbox.expires_at),
            "seconds_remaining": sandbox.seconds_remaining(),
            "egress": self.sandboxes.egress_of(container_id, tenant).get("policy"),
            "ports": [link.port for link in links],
            "snapshot_on_expiry": self.sandboxes.snapshot_on_expiry(container_id, tenant),
            **self._use(container_id, tenant),
        }
        if admin:  # a preview link opens the app inside: the owner's, not a read-only viewer's
            return {**row, "tenant": tenant}
        return {**row, "previews": [{"port": link.port, "url": f"/ports/{link.token}/"} for link in links]}

    async def list(self, request: Request) -> Response:
        viewer = await self.caller(request)
        if viewer is None:
            return self.refused()
        shown = self.sandboxes.list_all() if viewer.admin else self.sandboxes.list(viewer.tenant)
        if len(self._cpu) > 1024:  # forget the readings of sandboxes gone
            everywhere = {sandbox.container_id for sandbox in self.sandboxes.list_all()}
            self._cpu = {k: v for k, v in self._cpu.items() if k in everywhere}
        rows = []
        for sandbox in sorted(shown, key=lambda s: s.created_at):
            try:
                rows.append(self._row(sandbox, viewer.admin))
            except SandboxError:  # gone while the list was made
                continue
        return JSONResponse({"sandboxes": rows, "admin": viewer.admin}, headers={"Cache-Control": "no-store"})

    def _owner(self, viewer: Viewer, container_id: str) -> str | None:
        """The tenant of a sandbox this viewer may look at, or None (404, whoever's it is)."""
        if viewer.admin:
            found = [s for s in self.sandboxes.list_all() if s.container_id == container_id]
            return found[0].tenant if found else None
        try:
            return self.sandboxes.get(container_id, viewer.tenant).tenant
        except SandboxError:
            return None

    async def ticket(self, request: Request) -> Response:
        viewer = await self.caller(request)
        if viewer is None:
            return self.refused()
        container_id, purpose = request.path_params["container_id"], request.query_params.get("for", "terminal")
        if purpose not in PURPOSES:
            return JSONResponse({"error": f"A ticket is for one of {', '.join(PURPOSES)}."}, status_code=400)
        owner = self._owner(viewer, container_id)
        if owner is None:
            return JSONResponse({"error": NOT_FOUND}, status_code=404)
        if viewer.admin and purpose != "commands":
            return JSONResponse({"error": READ_ONLY}, status_code=403)
        return JSONResponse({"ticket": self.tickets.issue(owner, container_id, purpose)})

    async def destroy(self, request: Request) -> Response:
        viewer = await acting(self.caller, self.refused, request)
        if isinstance(viewer, Response):
            return viewer
        container_id = request.path_params["container_id"]
        try:
            await self.sandboxes.destroy(container_id, viewer.tenant)
        except SandboxError:
            return JSONResponse({"error": NOT_FOUND}, status_code=404)
        logger.info("console: %s destroyed sandbox %s", viewer.who, container_id)
        return JSONResponse({"destroyed": True, "container_id": container_id})

    async def snapshot(self, request: Request) -> Response:
        """Keep the sandbox's files, as snapshot_container does (create_container(snapshot_id=...) continues)."""
        viewer = await acting(self.caller, self.refused, request)
        if isinstance(viewer, Response):
            return viewer
        container_id = request.path_params["container_id"]
        try:
            taken = await self.sandboxes.snapshot(container_id, None, viewer.tenant)
        except SandboxError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404 if isinstance(exc, SandboxNotFound) else 409)
        logger.info("console: %s took snapshot %s of sandbox %s", viewer.who, taken.snapshot_id, container_id)
        return JSONResponse({"snapshot_id": taken.snapshot_id, "name": taken.name, "size_bytes": taken.size_bytes,
                             "expires_at": utc_iso(taken.expires_at)})

    async def extend(self, request: Request) -> Response:
        """{"seconds": N}: N more seconds of life, up to SANDBOX_TTL_SECONDS from now."""
        viewer = await acting(self.caller, self.refused, request)
        if isinstance(viewer, Response):
            return viewer
        container_id = request.path_params["container_id"]
        try:
            seconds = (await request.json())["seconds"]
            if isinstance(seconds, bool) or not isinstance(seconds, int) or seconds < 1:
                raise ValueError
        except (ValueError, TypeError, KeyError):
            return JSONResponse({"error": 'Send {"seconds": N}, N a whole number of seconds of at least 1.'},
                                status_code=400)
        try:
            sandbox = self.sandboxes.extend(container_id, seconds, viewer.tenant)
        except SandboxError as exc:
            return JSONResponse({"error": NOT_FOUND if isinstance(exc, SandboxNotFound) else str(exc)},
                                status_code=404 if isinstance(exc, SandboxNotFound) else 500)
        logger.info("console: %s extended sandbox %s until %s", viewer.who, container_id, utc_iso(sandbox.expires_at))
        longest = self.sandboxes.settings.ttl_seconds
        return JSONResponse({"container_id": container_id, "expires_at": utc_iso(sandbox.expires_at),
                             "seconds_remaining": sandbox.seconds_remaining(),
                             "most_seconds_remaining": longest})

    async def signal(self, request: Request) -> Response:
        viewer = await acting(self.caller, self.refused, request)
        if isinstance(viewer, Response):
            return viewer
        container_id, command_id = request.path_params["container_id"], request.path_params["command_id"]
        try:
            body = await request.json()
            state, sent = await self.sandboxes.send_signal(container_id, command_id, str(body.get("signal", "INT")),
                                                           viewer.tenant)
        except (ValueError, AttributeError):
            return JSONResponse({"error": 'Send {"signal": "INT"} (or TERM, KILL, HUP, ...).'}, status_code=400)
        except SandboxError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        logger.info("console: %s sent %s to command %s in sandbox %s", viewer.who, sent, command_id, container_id)
        return JSONResponse({"signal": sent, "status": state.status})
