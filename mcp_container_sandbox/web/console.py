"""The web console at ``/console/``: a person signs in with a token the MCP endpoint takes, sees their
tenant's sandboxes, opens a terminal of their own in one (xterm.js over a WebSocket) and destroys one.

The page and its scripts are files of the package (``console_assets/``; xterm.js vendored from npm, so
nothing is fetched at run time), served with a Content Security Policy that allows no inline script.
The API takes the token in the ``Authorization`` header only (no cookie a cross-site request could
ride); a terminal's WebSocket, which a browser cannot give a header, takes a one-time ticket that an
authenticated request made, and its upgrade is refused from another origin."""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any

import anyio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket, WebSocketDisconnect

from ..auth import TenantAccess
from ..auth.tenancy import bearer_token
from ..sandbox import LOCAL_TENANT, SandboxError, SandboxManager, utc_iso
from .console_feed import CommandFeeds
from .console_files import ConsoleFiles

logger = logging.getLogger("mcp_sandbox.console")

PREFIX = "/console"
ASSETS = {"index.html": "text/html", "console.js": "text/javascript", "console.css": "text/css",
          "vendor/xterm.js": "text/javascript", "vendor/xterm.css": "text/css", "vendor/addon-fit.js": "text/javascript"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
TICKET_SECONDS = 30.0
MAX_TICKETS = 1024
Verify = Callable[[str], Awaitable[TenantAccess | None]]
NOT_FOUND = "No such sandbox: it was never made, has gone, or is not yours."


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("console_assets", name).read_bytes()


class Tickets:
    """One-time tickets for a terminal's WebSocket: made by an authenticated request, good once and
    for TICKET_SECONDS."""

    def __init__(self) -> None:
        self._tickets: dict[str, tuple[float, str, str]] = {}

    def issue(self, tenant: str, container_id: str) -> str:
        now = time.monotonic()
        self._tickets = {k: v for k, v in self._tickets.items() if v[0] > now}
        if len(self._tickets) >= MAX_TICKETS:
            self._tickets.pop(next(iter(self._tickets)))
        ticket = secrets.token_urlsafe(24)
        self._tickets[ticket] = (now + TICKET_SECONDS, tenant, container_id)
        return ticket

    def redeem(self, ticket: str) -> tuple[str, str] | None:
        """(tenant, container_id) of a ticket not used before and not expired."""
        entry = self._tickets.pop(ticket, None)
        if entry is None or entry[0] <= time.monotonic():
            return None
        return entry[1], entry[2]


class Console:
    """The console's routes, over the sandbox facade and the server's token check."""

    def __init__(self, sandboxes: SandboxManager, verify: Verify | None, hosts: list[str], origins: list[str],
                 output_cap: int, write_max_bytes: int) -> None:
        """``verify``: the server's token check; None for a server without authentication, whose one
        (local) tenant anyone who reaches it is, as on its MCP endpoint."""
        self.sandboxes, self.verify, self.hosts, self.origins = sandboxes, verify, hosts, origins
        self.tickets = Tickets()
        self.feeds = CommandFeeds(sandboxes, output_cap)
        self.app = Starlette(routes=[
            Route(PREFIX, lambda request: RedirectResponse(PREFIX + "/"), methods=["GET"]),
            Route(PREFIX + "/", self.page, methods=["GET"]),
            Route(PREFIX + "/assets/{name:path}", self.asset, methods=["GET"]),
            Route(PREFIX + "/api/sandboxes", self.list_sandboxes, methods=["GET"]),
            Route(PREFIX + "/api/sandboxes/{container_id}", self.destroy, methods=["DELETE"]),
            Route(PREFIX + "/api/sandboxes/{container_id}/tickets", self.ticket, methods=["POST"]),
            Route(PREFIX + "/api/sandboxes/{container_id}/commands/{command_id}/signal", self.signal,
                  methods=["POST"]),
            WebSocketRoute(PREFIX + "/api/terminal", self.terminal),
            WebSocketRoute(PREFIX + "/api/commands", self.commands),
            *ConsoleFiles(sandboxes, self._caller, self._refused, write_max_bytes).routes(PREFIX),
        ])

    def known_host(self, scope: Scope) -> bool:
        host = dict(scope.get("headers") or []).get(b"host", b"").decode("latin-1")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return name.strip("[]") in self.hosts

    # ----- the page

    async def page(self, request: Request) -> Response:
        return Response(_asset("index.html"), media_type="text/html", headers=self._headers())

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return Response("Not found", status_code=404)
        return Response(_asset(name), media_type=ASSETS[name], headers=self._headers())

    @staticmethod
    def _headers() -> dict[str, str]:
        return {"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
                "Cache-Control": "no-store"}

    # ----- the API

    async def _caller(self, request: Request) -> TenantAccess | None:
        if self.verify is None:
            return TenantAccess(token="", client_id=LOCAL_TENANT, scopes=[], tenant=LOCAL_TENANT)
        token = bearer_token(request.scope)
        return await self.verify(token) if token else None

    @staticmethod
    def _refused() -> Response:
        return JSONResponse({"error": "Sign in with a token this server takes (Authorization: Bearer <token>)."},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})

    async def list_sandboxes(self, request: Request) -> Response:
        caller = await self._caller(request)
        if caller is None:
            return self._refused()
        rows = []
        for sandbox in sorted(self.sandboxes.list(caller.tenant), key=lambda s: s.created_at):
            rows.append({
                "container_id": sandbox.container_id, "image": sandbox.image,
                "created_at": utc_iso(sandbox.created_at), "expires_at": utc_iso(sandbox.expires_at),
                "seconds_remaining": max(0, int(sandbox.expires_at - time.time())),
                "egress": self.sandboxes.egress_of(sandbox.container_id, caller.tenant).get("policy"),
                "ports": [link.port for link in self.sandboxes.port_links(sandbox.container_id, caller.tenant)],
                "snapshot_on_expiry": self.sandboxes.snapshot_on_expiry(sandbox.container_id, caller.tenant),
            })
        return JSONResponse({"sandboxes": rows}, headers={"Cache-Control": "no-store"})

    async def destroy(self, request: Request) -> Response:
        caller = await self._caller(request)
        if caller is None:
            return self._refused()
        container_id = request.path_params["container_id"]
        try:
            await self.sandboxes.destroy(container_id, caller.tenant)
        except SandboxError:
            return JSONResponse({"error": NOT_FOUND}, status_code=404)
        logger.info("console: %s destroyed sandbox %s", _who(caller), container_id)
        return JSONResponse({"destroyed": True, "container_id": container_id})

    async def ticket(self, request: Request) -> Response:
        caller = await self._caller(request)
        if caller is None:
            return self._refused()
        container_id = request.path_params["container_id"]
        try:
            self.sandboxes.get(container_id, caller.tenant)
        except SandboxError:
            return JSONResponse({"error": NOT_FOUND}, status_code=404)
        return JSONResponse({"ticket": self.tickets.issue(caller.tenant, container_id)})

    async def signal(self, request: Request) -> Response:
        caller = await self._caller(request)
        if caller is None:
            return self._refused()
        container_id, command_id = request.path_params["container_id"], request.path_params["command_id"]
        try:
            body = await request.json()
            state, sent = await self.sandboxes.send_signal(container_id, command_id, str(body.get("signal", "INT")),
                                                           caller.tenant)
        except (ValueError, AttributeError):
            return JSONResponse({"error": 'Send {"signal": "INT"} (or TERM, KILL, HUP, ...).'}, status_code=400)
        except SandboxError as exc:
            return JSONResponse({"error": str(exc)}, status_code=404)
        logger.info("console: %s sent %s to command %s in sandbox %s", _who(caller), sent, command_id, container_id)
        return JSONResponse({"signal": sent, "status": state.status})

    # ----- the live views: a terminal, the commands

    def _same_origin(self, websocket: WebSocket) -> bool:
        origin = websocket.headers.get("origin", "")
        host = websocket.headers.get("host", "")
        return bool(origin) and (origin in (f"http://{host}", f"https://{host}") or origin in self.origins)

    async def _admit(self, websocket: WebSocket) -> tuple[str, str] | None:
        """(tenant, container_id) of a same-origin upgrade with a good ticket; otherwise refused."""
        if not self._same_origin(websocket):
            await websocket.send_denial_response(Response("Cross-origin upgrade refused", status_code=403))
            return None
        redeemed = self.tickets.redeem(websocket.query_params.get("ticket", ""))
        if redeemed is None:
            await websocket.send_denial_response(Response("Unknown or used ticket", status_code=401))
        return redeemed

    async def commands(self, websocket: WebSocket) -> None:
        """The sandbox's commands as they run: JSON events, one a change (new output, a new status)."""
        admitted = await self._admit(websocket)
        if admitted is None:
            return
        await websocket.accept()
        async with anyio.create_task_group() as group:
            async def until_closed() -> None:
                with contextlib.suppress(WebSocketDisconnect):
                    while (await websocket.receive())["type"] != "websocket.disconnect":
                        pass
                group.cancel_scope.cancel()

            group.start_soon(until_closed)
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                await self.feeds.follow(admitted[1], admitted[0], websocket.send_json)
            group.cancel_scope.cancel()
        with contextlib.suppress(RuntimeError):
            await websocket.close()

    async def terminal(self, websocket: WebSocket) -> None:
        admitted = await self._admit(websocket)
        if admitted is None:
            return
        tenant, container_id = admitted
        cols, rows = _int(websocket.query_params.get("cols"), 80), _int(websocket.query_params.get("rows"), 24)
        try:
            terminal = await self.sandboxes.open_terminal(container_id, tenant, cols, rows)
        except SandboxError:
            await websocket.send_denial_response(Response(NOT_FOUND, status_code=404))
            return
        await websocket.accept()
        logger.info("console: tenant %s opened a terminal in sandbox %s", tenant, container_id)
        try:
            async with anyio.create_task_group() as group:
                group.start_soon(_screen_to_browser, terminal, websocket, group.cancel_scope)
                await _keys_to_terminal(websocket, terminal)
                group.cancel_scope.cancel()
        finally:
            await terminal.close()
            with contextlib.suppress(RuntimeError):
                await websocket.close()


async def _screen_to_browser(terminal: Any, websocket: WebSocket, scope: anyio.CancelScope) -> None:
    while data := await terminal.read():
        await websocket.send_bytes(data)
    scope.cancel()  # the shell ended: so does the page's session


async def _keys_to_terminal(websocket: WebSocket, terminal: Any) -> None:
    """Binary frames are keys; a text frame is a command: {"resize": [cols, rows]}."""
    with contextlib.suppress(WebSocketDisconnect):
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await terminal.write(message["bytes"])
            elif message.get("text"):
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    cols, rows = json.loads(message["text"])["resize"]
                    terminal.resize(_int(cols, 80), _int(rows, 24))


def _int(value: Any, default: int) -> int:
    try:
        return max(2, min(int(value), 1000))
    except (TypeError, ValueError):
        return default


def _who(caller: TenantAccess) -> str:
    claims = caller.claims or {}
    named = claims.get("email") or claims.get("sub")
    return f"tenant {caller.tenant}" + (f" ({named})" if named else "")


class ConsoleRouter:
    """Sends ``/console`` requests (HTTP and WebSocket) to the console and everything else on."""

    def __init__(self, app: ASGIApp, console: Console) -> None:
        self.app, self.console = app, console

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] in ("http", "websocket") and (path == PREFIX or path.startswith(PREFIX + "/")):
            if not self.console.known_host(scope):  # DNS rebinding, as on the MCP endpoint
                await Response("Unknown Host for the console (ALLOWED_HOSTS)", status_code=421)(scope, receive, send)
                return
            await self.console.app(scope, receive, send)
            return
        await self.app(scope, receive, send)
