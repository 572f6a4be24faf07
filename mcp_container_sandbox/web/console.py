"""The web console at ``/console/`` (docs/console.md): a person signs in with a token the MCP endpoint
takes and sees their tenant's sandboxes; in one, its commands as they run (console_feed.py), a terminal
of their own (xterm.js over a WebSocket), its files (console_files.py); they interrupt, snapshot or
destroy (console_api.py). An admin token sees every tenant's, read-only.

The page and its scripts are files of the package (``console_assets/``; xterm.js vendored from npm, so
nothing is fetched at run time), served with a Content Security Policy that allows no inline script.
The API takes the token in the ``Authorization`` header only (no cookie a cross-site request could
ride); a terminal's WebSocket, which a browser cannot give a header, takes a one-time ticket that an
authenticated request made, and its upgrade is refused from another origin."""

from __future__ import annotations

import contextlib
import json
import logging
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

from ..auth import BearerTokens, TenantAccess
from ..auth.console_client import TOKEN_ROUTE, ConsoleSignIn
from ..auth.tenancy import bearer_token
from ..sandbox import LOCAL_TENANT, SandboxError, SandboxManager
from .console_api import APP_TERMINAL, NOT_FOUND, SandboxesApi, Tickets, Viewer
from .console_feed import CommandFeeds
from .console_files import ConsoleFiles

logger = logging.getLogger("mcp_sandbox.console")

PREFIX = "/console"
ASSETS = {"index.html": "text/html", "console.js": "text/javascript", "console.css": "text/css",
          "vendor/xterm.js": "text/javascript", "vendor/xterm.css": "text/css", "vendor/addon-fit.js": "text/javascript"}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
       "img-src 'self' data:; font-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
Verify = Callable[[str], Awaitable[TenantAccess | None]]


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("console_assets", name).read_bytes()


class Console:
    """The console's routes, over the sandbox facade and the server's token check."""

    def __init__(self, sandboxes: SandboxManager, verify: Verify | None, hosts: list[str], origins: list[str],
                 output_cap: int, write_max_bytes: int, admin_tokens: tuple[str, ...] = (),
                 sign_in: ConsoleSignIn | None = None) -> None:
        """``verify``: the server's token check; None for a server without authentication, whose one
        (local) tenant anyone who reaches it is, as on its MCP endpoint. ``admin_tokens``:
        CONSOLE_ADMIN_TOKENS, which see every tenant's sandboxes, read-only. ``sign_in``: how a person
        signs in by OAuth in the browser (auth/console_client.py), None without OAuth."""
        self.sandboxes, self.verify, self.hosts, self.origins = sandboxes, verify, hosts, origins
        self.sign_in = sign_in
        self.admins = BearerTokens(admin_tokens)
        self.tickets = Tickets()
        self.feeds = CommandFeeds(sandboxes, output_cap)
        self.app = Starlette(routes=[
            Route(PREFIX, lambda request: RedirectResponse(PREFIX + "/"), methods=["GET"]),
            Route(PREFIX + "/", self.page, methods=["GET"]),
            Route(PREFIX + "/assets/{name:path}", self.asset, methods=["GET"]),
            Route(PREFIX + "/api/sign-in", self.ways_in, methods=["GET"]),
            Route(TOKEN_ROUTE, self.token, methods=["POST"]),
            *SandboxesApi(sandboxes, self._caller, self._refused, self.tickets).routes(PREFIX),
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

    async def _caller(self, request: Request) -> Viewer | None:
        token = bearer_token(request.scope)
        if token and self.admins.tenant_of(token) is not None:
            return Viewer("", "an admin token", admin=True)
        if self.verify is None:
            return Viewer(LOCAL_TENANT, "the local tenant")
        access = await self.verify(token) if token else None
        if access is None:
            return None
        named = (access.claims or {}).get("email") or (access.claims or {}).get("sub")
        return Viewer(access.tenant, f"tenant {access.tenant}" + (f" ({named})" if named else ""))

    async def ways_in(self, request: Request) -> Response:
        """How a person signs in here: a token, and OAuth in the browser where the server has it."""
        oauth = await self.sign_in.sign_in() if self.sign_in is not None else None
        return JSONResponse({"token": self.verify is not None, "oauth": None if isinstance(oauth, str) else
                             oauth and oauth.public(), "oauth_unavailable": oauth if isinstance(oauth, str) else ""},
                            headers={"Cache-Control": "no-store"})

    async def token(self, request: Request) -> Response:
        """The page's authorization code (or refresh token), exchanged at the issuer's token endpoint."""
        if self.sign_in is None:
            return JSONResponse({"error": "invalid_request", "error_description": "No OAuth sign-in here."},
                                status_code=404)
        form = {key: str(value) for key, value in (await request.form()).items()}
        status, answer = await self.sign_in.exchange(form)
        return JSONResponse(answer, status_code=status, headers={"Cache-Control": "no-store"})

    @staticmethod
    def _refused() -> Response:
        return JSONResponse({"error": "Sign in with a token this server takes (Authorization: Bearer <token>)."},
                            status_code=401, headers={"WWW-Authenticate": "Bearer"})

    # ----- the live views: a terminal, the commands

    def _same_origin(self, websocket: WebSocket) -> bool:
        origin = websocket.headers.get("origin", "")
        host = websocket.headers.get("host", "")
        return bool(origin) and (origin in (f"http://{host}", f"https://{host}") or origin in self.origins)

    def app_terminal(self, tenant: str, container_id: str) -> dict[str, str]:
        """For the MCP App (tools/app.py): a terminal WebSocket's path with a one-time ticket, and where
        xterm.js is. Its upgrade comes from the host's frame, whatever its origin: the ticket, made by an
        authenticated tool call moments before, is the credential (no cookie rides along)."""
        ticket = self.tickets.issue(tenant, container_id, APP_TERMINAL)
        return {"socket": f"{PREFIX}/api/terminal?ticket={ticket}", "assets": f"{PREFIX}/assets/vendor/"}

    async def _admit(self, websocket: WebSocket, purpose: str) -> tuple[str, str] | None:
        """(tenant, container_id) of a same-origin upgrade with a good ticket (a terminal of the MCP App's
        from any origin); otherwise refused."""
        ticket = websocket.query_params.get("ticket", "")
        if purpose == "terminal" and self.tickets.purpose(ticket) == APP_TERMINAL:
            purpose = APP_TERMINAL
        elif not self._same_origin(websocket):
            await websocket.send_denial_response(Response("Cross-origin upgrade refused", status_code=403))
            return None
        redeemed = self.tickets.redeem(ticket, purpose)
        if redeemed is None:
            await websocket.send_denial_response(Response("Unknown or used ticket", status_code=401))
        return redeemed

    async def commands(self, websocket: WebSocket) -> None:
        """The sandbox's commands as they run: JSON events, one a change (new output, a new status)."""
        admitted = await self._admit(websocket, "commands")
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
        admitted = await self._admit(websocket, "terminal")
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
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the page went away meanwhile
        while data := await terminal.read():
            await websocket.send_bytes(data)
    scope.cancel()  # the shell ended (or the page left): so does the session


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
                    await terminal.resize(_int(cols, 80), _int(rows, 24))


def _int(value: Any, default: int) -> int:
    try:
        return max(2, min(int(value), 1000))
    except (TypeError, ValueError):
        return default


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
