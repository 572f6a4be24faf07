"""MCP container sandbox server: the tools and a few HTTP routes over the ``sandbox`` package.

Run ``python server.py`` for Streamable HTTP on $HOST:$PORT (MCP at ``/`` and ``/mcp``),
or ``fastmcp run server.py`` for stdio (file links are then served on $PORT alongside).
This module validates, translates and formats; it holds no Podman knowledge.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

import anyio
import base64
import binascii
import uvicorn
from fastmcp import Context, FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.dependencies import get_access_token, get_http_request
from mcp.types import ToolAnnotations
from pydantic import Field
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from guards import McpOriginGuard, RequestSizeLimit
from preview import PreviewProxy, PreviewRouter
from results import command_result
from schemas import PortableSchemas
from waits import MAX_WAIT, WaitAdvisor, WaitTracking
from waits import current as current_waits
from sandbox import (
    LIMITS,
    LIMITS_IN_WORDS,
    LOCAL_TENANT,
    TENANT_RE,
    BackgroundTasks,
    FILE_ID_RE,
    CommandState,
    FileLinkNotFound,
    SandboxError,
    SandboxManager,
    PortLink,
    SandboxSettings,
    ServerSettings,
    Snapshot,
    utc_iso,
)

__version__ = "0.1.0"
SERVER_NAME = "mcp-container-sandbox"
MCP_PATH = "/mcp"
MAX_REQUEST_BYTES = 8 * 1024 * 1024
LIST_AT_ONCE = 8  # list_containers asks this many sandboxes at a time (those it must ask)

logger = logging.getLogger("mcp_sandbox.server")

SETTINGS = ServerSettings.from_env()
HOST, PORT = SETTINGS.host, SETTINGS.port


def base_url() -> str:
    """BASE_URL; else the address the client reached over HTTP; else http://$HOST:$PORT."""
    if SETTINGS.base_url:
        return SETTINGS.base_url
    try:
        request = get_http_request()
    except RuntimeError:  # stdio: the file routes listen on HOST:PORT
        request = None
    if request is not None and request.headers.get("host"):
        return f"{request.url.scheme}://{request.headers['host']}"
    host = "127.0.0.1" if HOST in ("0.0.0.0", "::", "") else HOST
    return f"http://{'[' + host + ']' if ':' in host else host}:{PORT}"


sandboxes = SandboxManager(SandboxSettings.from_env())


# --------------------------------------------------------------------------- who is calling

AUTH_TOKENS = list(SETTINGS.auth_tokens)


def tenant_id_for(token: str) -> str:
    """A label-safe tenant id for a token or client id, which it does not reveal (it lands in Podman labels)."""
    return "t-" + hashlib.sha256(token.encode()).hexdigest()[:24]


class BearerTokens(TokenVerifier):
    """AUTH_TOKENS as bearer tokens: each token is a tenant. Compared in constant time."""

    def __init__(self, tokens: list[str]) -> None:
        super().__init__()
        self._tokens = [(token.encode(), tenant_id_for(token)) for token in tokens]

    def tenant_of(self, token: str) -> str | None:
        """The token's tenant, or None for a token that is not ours."""
        offered = token.encode()
        tenant = None
        for known, known_tenant in self._tokens:  # no early exit: timing says nothing
            if hmac.compare_digest(offered, known):
                tenant = known_tenant
        return tenant

    async def verify_token(self, token: str) -> AccessToken | None:
        tenant = self.tenant_of(token)
        if tenant is None:
            return None
        return AccessToken(token=token, client_id=tenant, scopes=[])


TOKENS = BearerTokens(AUTH_TOKENS)


def _authorize_preview(scope: Scope, link: PortLink) -> bool:
    """With PREVIEW_REQUIRE_AUTH, a preview request carries the bearer token of the link's tenant."""
    if not SETTINGS.preview_require_auth:
        return True
    authorization = dict(scope.get("headers") or []).get(b"authorization", b"").decode("latin-1")
    scheme, _, token = authorization.partition(" ")
    return scheme.lower() == "bearer" and bool(token) and TOKENS.tenant_of(token) == link.tenant


preview = PreviewProxy(sandboxes.open_port, lambda token: sandboxes.ports.find(token)[0], _authorize_preview,
                       SETTINGS.preview_domain)


def current_tenant() -> str:
    """The calling client's tenant: its token's, over authenticated HTTP; otherwise (no auth
    configured, or stdio, where whoever started the process is the only client) the local one."""
    if mcp.auth is None:
        return LOCAL_TENANT
    try:
        get_http_request()
    except RuntimeError:
        return LOCAL_TENANT
    access = get_access_token()
    if access is None:  # cannot happen behind the auth middleware; refuse rather than guess
        raise ToolError("This server requires a bearer token (Authorization: Bearer <token>).")
    client_id = access.client_id or ""
    return client_id if TENANT_RE.match(client_id) else tenant_id_for(client_id)


def _is_stdio_transport() -> bool:
    try:
        from fastmcp.server.context import _current_transport
    except ImportError:  # pragma: no cover - FastMCP moved it
        return False
    return _current_transport.get() == "stdio"


@asynccontextmanager
async def lifespan(server: FastMCP) -> AsyncIterator[dict[str, Any]]:
    await sandboxes.start()
    side_server = BackgroundTasks()
    await side_server.start()
    side_server.start_soon(preview.close_idle_forever)
    if _is_stdio_transport():
        side_server.start_soon(_serve_files_beside_stdio)
    try:
        yield {}
    finally:
        # Sandboxes and the commands in them keep running for the next start.
        await side_server.stop()
        await preview.upstreams.close()
        await sandboxes.stop()


mcp = FastMCP(
    SERVER_NAME,
    version=__version__,
    instructions=(
        "Isolated Linux sandboxes. Call create_container, then execute_command with its container_id. "
        "A command still running after a few seconds returns status 'running' and a command_id: follow it "
        "with check_container(container_id, command_id, wait_seconds=...) as its message says, which returns as "
        "soon as it ends. "
        "Use write_file for file contents (no shell quoting), read_file and list_files to look at files. "
        "Programs that ask for input: execute_command(keep_stdin_open=true, tty=true for a terminal), then "
        "write_stdin; send_signal(INT) interrupts one. To give the user a file, write it in the "
        "sandbox and call get_file_url. "
        "Sandboxes are destroyed automatically two hours after creation; destroy_container frees one sooner. "
        "snapshot_container keeps a sandbox's files (not its processes); create_container(snapshot_id=...) "
        "continues from them, and create_container(snapshot_on_expiry=true) takes one when the sandbox expires."
    ),
    lifespan=lifespan,
    auth=TOKENS if AUTH_TOKENS else None,
)
mcp.add_middleware(PortableSchemas())  # schemas Gemini's, OpenAI's and LangChain's converters take whole
WAITS = WaitAdvisor()  # how long each session is told to wait for a running command
mcp.add_middleware(WaitTracking(WAITS))


@contextmanager
def _tool_errors() -> Iterator[None]:
    """Turn infrastructure failures into MCP tool errors whose text the model acts on."""
    try:
        yield
    except SandboxError as exc:
        raise ToolError(str(exc)) from None


def _progress(ctx: Context | None) -> Any:
    """A progress callback when the client asked for progress (sent a progress token), else None."""
    if ctx is None:
        return None
    try:
        meta = ctx.request_context._srctx.meta  # type: ignore[union-attr]
        if not meta or meta.get("progress_token") is None:
            return None
    except (AttributeError, RuntimeError, LookupError):
        return None

    async def report(done: float, total: float, message: str) -> None:
        await ctx.report_progress(progress=round(done, 1), total=total, message=message)

    return report


ContainerId = Annotated[
    str, Field(description="The container_id returned by create_container.", max_length=200)
]


def _sandbox_times(container_id: str, tenant: str) -> dict[str, Any]:
    sandbox = sandboxes.get(container_id, tenant)
    return {
        "created_at": utc_iso(sandbox.created_at),
        "expires_at": utc_iso(sandbox.expires_at),
        "seconds_remaining": max(0, int(sandbox.expires_at - time.time())),
    }


def _decoded(text: str, encoding: str, name: str) -> bytes:
    """A tool's text argument as bytes: UTF-8, or base64 when encoding says so."""
    if encoding != "base64":
        return text.encode("utf-8", errors="surrogatepass")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ToolError(f"{name} is not valid base64. Encode the bytes with standard base64, or use encoding='text'.") from None


def _command_result(container_id: str, state: CommandState, stdin_open: bool = False) -> dict[str, Any]:
    waits, progress = current_waits()
    return command_result(container_id, state, sandboxes.settings.output_limit_bytes,
                          sandboxes.settings.output_file_max_bytes, stdin_open, waits.suggested(progress))


@mcp.tool(
    annotations=ToolAnnotations(title="Create sandbox", read_only_hint=False, destructive_hint=False, open_world_hint=False),
    description=f"""Create an isolated Linux sandbox ({LIMITS_IN_WORDS}).

Returns its container_id for execute_command, check_container, get_file_url and destroy_container.
It is destroyed automatically at expires_at (two hours after creation by default). With snapshot_id
it starts with the files of that snapshot (a fork; the snapshot and its source stay as they are);
with snapshot_on_expiry=true its files are kept in a snapshot when its lifetime ends.""",
)
async def create_container(
    image: Annotated[
        str | None,
        Field(description="Container image; only images on the server's allow-list. Omit for the default (Alpine Linux).", max_length=300),
    ] = None,
    ttl_seconds: Annotated[
        int | None,
        Field(description="Lifetime in seconds, up to the server's maximum (2 hours by default); omit for the maximum.", ge=1),
    ] = None,
    network: Annotated[
        bool | None,
        Field(description="false: no network at all inside the sandbox. Omit for the server's default "
                          "(the internet, but nothing of the host or the networks around it)."),
    ] = None,
    allow_domains: Annotated[
        list[Annotated[str, Field(max_length=253)]] | None,
        Field(description="Only these hosts may be reached, over HTTP(S) through the server's proxy (set in the "
                          "sandbox's http_proxy/https_proxy): exact names like 'api.github.com', or '*.example.org' "
                          "for its subdomains. Omit for the server's default."),
    ] = None,
    snapshot_id: Annotated[
        str | None,
        Field(description="Start from this snapshot's files (from snapshot_container or list_snapshots), on its "
                          "image. Omit for a fresh sandbox.", max_length=100),
    ] = None,
    snapshot_on_expiry: Annotated[
        bool,
        Field(description="true: when the sandbox's lifetime ends, its files are kept in a snapshot (reason "
                          "'expired') before it is destroyed; check_container then names it."),
    ] = False,
) -> dict[str, Any]:
    # The description is in the decorator: it names the limits from sandbox/config.py.
    with _tool_errors():
        sandbox = await sandboxes.create(image, current_tenant(), ttl_seconds, network, allow_domains,
                                         snapshot_id, snapshot_on_expiry)
    return {
        "container_id": sandbox.container_id,
        "image": sandbox.image,
        "status": "running",
        "created_at": utc_iso(sandbox.created_at),
        "expires_at": utc_iso(sandbox.expires_at),
        "limits": LIMITS,
        "egress": sandboxes.egress.of(sandbox.network, sandbox.container_id),
        "snapshot_on_expiry": snapshot_on_expiry,
        **({"snapshot_id": snapshot_id} if snapshot_id is not None else {}),
    }


@mcp.tool(annotations=ToolAnnotations(title="Run a shell command", read_only_hint=False, destructive_hint=True, open_world_hint=True))
async def execute_command(
    container_id: ContainerId,
    command: Annotated[
        str,
        Field(description="Shell command line, run with /bin/sh -c in the sandbox."),
    ],
    timeout_seconds: Annotated[
        int,
        Field(description="Stop the command (and its child processes) after this many seconds.", ge=1, le=86400),
    ] = 600,
    stdin: Annotated[
        str | None,
        Field(description="Text given to the command's standard input, then end-of-file. Omit for empty input."),
    ] = None,
    keep_stdin_open: Annotated[
        bool,
        Field(description="true: stdin stays open after the stdin text, for write_stdin (REPLs, programs that "
                          "ask questions); the result comes as soon as the command's output settles."),
    ] = False,
    tty: Annotated[
        bool,
        Field(description="true: run on a pseudo-terminal (programs that need one, python -i); stdout and stderr "
                          "are then one stream, and write_stdin types into it."),
    ] = False,
    ctx: Context | None = None,
) -> dict[str, Any]:
    """Run a shell command in a sandbox and return its exit_code, stdout and stderr.

    A non-zero exit_code is a normal result. If the command is still running after a few seconds,
    the result has status 'running' and a command_id: call check_container(container_id, command_id,
    wait_seconds) as its message says to get its result as soon as it ends. Use write_file to create
    files, read_file and list_files to look at them.
    """
    with _tool_errors(), WAITS.waiting(current_waits()[0]):
        data = None if stdin is None else stdin.encode("utf-8", errors="surrogatepass")
        state = await sandboxes.execute(container_id, command, timeout_seconds, current_tenant(), _progress(ctx),
                                        data, keep_stdin_open, tty)
    result = _command_result(container_id, state, stdin_open=keep_stdin_open)
    if tty:
        result["tty"] = True
    return result


CommandId = Annotated[str, Field(description="The command_id from execute_command.", max_length=200)]


@mcp.tool(annotations=ToolAnnotations(title="Type into a running command", read_only_hint=False, destructive_hint=True, open_world_hint=False))
async def write_stdin(
    container_id: ContainerId,
    command_id: CommandId,
    data: Annotated[str, Field(description="What to write: text (end a line with \\n to send it), or base64 "
                                           "when encoding is 'base64'. May be empty with close=true.")],
    encoding: Annotated[
        str, Field(description="'text' (UTF-8) or 'base64' (binary input).", pattern="^(text|base64)$")
    ] = "text",
    close: Annotated[bool, Field(description="true: end-of-file after the data (on a terminal: Ctrl-D).")] = False,
) -> dict[str, Any]:
    """Write to the stdin of a command started with keep_stdin_open=true (or tty=true) and return
    the output it printed in answer (once its output settles), its status and bytes_written."""
    raw = _decoded(data, encoding, "data")
    with _tool_errors():
        state, written = await sandboxes.write_stdin(container_id, command_id, raw, close, current_tenant())
    result = _command_result(container_id, state, stdin_open=not close and written == len(raw))
    result["bytes_written"] = written
    if written < len(raw):
        result["message"] = (f"The command took {written:,} of {len(raw):,} bytes within 2 s: it is not reading "
                             "its input now. Its stdin stays open; send the rest later with write_stdin. "
                             + result.get("message", ""))
    return result


@mcp.tool(annotations=ToolAnnotations(title="Signal a running command", read_only_hint=False, destructive_hint=True, open_world_hint=False))
async def send_signal(
    container_id: ContainerId,
    command_id: CommandId,
    signal: Annotated[str, Field(description="INT (Ctrl-C), TERM, KILL, HUP, QUIT, USR1, USR2, STOP or CONT; "
                                             "with or without SIG.", max_length=20)],
) -> dict[str, Any]:
    """Send a signal to a running command and its child processes (its process group), then
    return its status: once it ended (up to 3 s), or as it is now."""
    with _tool_errors():
        state, name = await sandboxes.send_signal(container_id, command_id, signal, current_tenant())
    result = _command_result(container_id, state)
    result["signal_sent"] = name
    return result


@mcp.tool(annotations=ToolAnnotations(title="Read a file", read_only_hint=True, open_world_hint=False))
async def read_file(
    container_id: ContainerId,
    path: Annotated[str, Field(description="Absolute path of a file in the sandbox.", max_length=4096)],
    offset: Annotated[int, Field(description="Byte offset to start at (to page through a large file).", ge=0)] = 0,
    length: Annotated[
        int | None, Field(description="Bytes to read; omit for as much as one call returns (1 MiB by default).", ge=0)
    ] = None,
    encoding: Annotated[
        str, Field(description="'text' (UTF-8) or 'base64' (binary files).", pattern="^(text|base64)$")
    ] = "text",
) -> dict[str, Any]:
    """Read a file in a sandbox (up to 1 MiB per call; page with offset): content, size_bytes, eof."""
    with _tool_errors():
        piece = await sandboxes.read_file(container_id, path, offset, length, current_tenant())
    data, end = piece.data, piece.offset + len(piece.data)
    if encoding == "text":
        content, kept = _utf8_text(data, eof=end >= piece.size_bytes, path=path)
        data = data[:kept]  # a character cut at the end waits for the next call
        end = piece.offset + kept
    else:
        content = base64.b64encode(data).decode("ascii")
    result = {"path": path, "content": content, "encoding": encoding, "size_bytes": piece.size_bytes,
              "offset": piece.offset, "length": len(data), "eof": end >= piece.size_bytes}
    if not result["eof"]:
        result["message"] = (f"Bytes {piece.offset:,} to {end:,} of {piece.size_bytes:,}; call read_file again with "
                             f"offset={end} for the next part.")
    return result


def _utf8_text(data: bytes, eof: bool, path: str) -> tuple[str, int]:
    """The bytes as UTF-8 text, and how many of them it holds: a character cut by the end of the
    slice is left for the next call."""
    for cut in range(0, 4 if not eof else 1):
        try:
            return data[: len(data) - cut].decode("utf-8"), len(data) - cut
        except UnicodeDecodeError:
            continue
    raise ToolError(f"{path[:200]!r} is not UTF-8 text at these bytes. Read it with encoding='base64'.")


@mcp.tool(annotations=ToolAnnotations(title="List a folder", read_only_hint=True, open_world_hint=False))
async def list_files(
    container_id: ContainerId,
    path: Annotated[str, Field(description="Absolute path of a folder in the sandbox, e.g. /root.", max_length=4096)],
    depth: Annotated[int, Field(description="1: the folder's own entries; more: that many levels deep.", ge=1, le=10)] = 1,
) -> dict[str, Any]:
    """List a folder in a sandbox: each entry's name, path, type (file, dir, symlink, other), size_bytes,
    mode (octal) and modified_at; at most 1,000 entries (truncated says when more were left out)."""
    with _tool_errors():
        entries, truncated = await sandboxes.list_files(container_id, path, depth, current_tenant())
    result: dict[str, Any] = {"path": path, "entries": [vars(entry) for entry in entries], "truncated": truncated}
    if truncated:
        result["message"] = (f"Only the first {len(entries):,} entries are listed. List a smaller depth or a "
                             "subfolder, or use execute_command (find) with a filter.")
    return result


@mcp.tool(annotations=ToolAnnotations(title="Check sandbox or command", read_only_hint=True, open_world_hint=False))
async def check_container(
    container_id: ContainerId,
    command_id: Annotated[
        str | None,
        Field(description="A command_id from execute_command; omit to list the sandbox's commands.", max_length=200),
    ] = None,
    wait_seconds: Annotated[
        float,
        Field(description="With command_id: wait up to this many seconds for the command to finish, "
                          "returning as soon as it does (instead of polling in a loop).", ge=0, le=MAX_WAIT),
    ] = 0,
    stdout_offset: Annotated[
        int | None, Field(description="With command_id: stdout bytes already seen; exactly what follows is "
                                      "returned (pass the last result's stdout_bytes to follow a long build).", ge=0)
    ] = None,
    stderr_offset: Annotated[
        int | None, Field(description="With command_id: stderr bytes already seen, as stdout_offset.", ge=0)
    ] = None,
    ctx: Context | None = None,
) -> dict[str, Any]:
    """Show a sandbox's status, lifetime and commands; with command_id, that command's status, exit code and output so far.

    To follow a command that went on in the background, call this with its command_id and
    wait_seconds (up to 50; the running command's message says how long): it returns as soon as the
    command ends.
    """
    with _tool_errors():
        tenant = current_tenant()
        if command_id is not None:
            waits, progress = current_waits()
            with WAITS.waiting(waits):
                state = await sandboxes.wait_for_command(container_id, command_id, waits.allowed(wait_seconds, progress),
                                                         tenant, _progress(ctx), stdout_offset, stderr_offset)
            if state.reason == "sandbox_gone" and container_id not in {s.container_id for s in sandboxes.list(tenant)}:
                return {"container_id": container_id, "status": "gone", "command": _command_result(container_id, state)}
        times = _sandbox_times(container_id, tenant)
        status = await sandboxes.container_status(container_id, tenant)
        result: dict[str, Any] = {"container_id": container_id, "status": status, **times,
                                  "egress": sandboxes.egress_of(container_id, tenant),
                                  "snapshot_on_expiry": sandboxes.snapshots.marked(container_id),
                                  "ports": [_port_link(link) for link in sandboxes.port_links(container_id, tenant)]}
        if command_id is not None:
            result["command"] = _command_result(container_id, state)
        else:
            result["commands"] = [
                {
                    "command_id": summary.command_id,
                    "command": summary.command,
                    "status": summary.status,
                    "exit_code": summary.exit_code,
                    "started_at": utc_iso(summary.started_at) if summary.started_at else None,
                }
                for summary in await sandboxes.list_commands(container_id, tenant)
            ]
    return result


@mcp.tool(annotations=ToolAnnotations(title="Destroy sandbox", read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False))
async def destroy_container(container_id: ContainerId) -> dict[str, Any]:
    """Destroy a sandbox now, with everything in it; its file URLs stop working."""
    with _tool_errors():
        await sandboxes.destroy(container_id, current_tenant())
    return {"container_id": container_id, "destroyed": True}


@mcp.tool(annotations=ToolAnnotations(title="Share a file as a URL", read_only_hint=True, open_world_hint=False))
async def get_file_url(
    container_id: ContainerId,
    path: Annotated[str, Field(description="Absolute path of a regular file inside the sandbox, e.g. /tmp/report.txt.", max_length=4096)],
) -> dict[str, Any]:
    """Make a download URL for a file in a sandbox, to give to the user (reports, archives, images, any output file).

    The URL serves the file as it is when downloaded, and stops working when the sandbox is destroyed.
    """
    with _tool_errors():
        if _stdio_file_server_error:
            raise SandboxError(_stdio_file_server_error)
        tenant = current_tenant()
        link = await sandboxes.create_file_link(container_id, path, tenant)
        expires_at = utc_iso(sandboxes.get(container_id, tenant).expires_at)
    return {
        "url": f"{base_url()}/files/{link.file_id}",
        "path": link.path,
        "size_bytes": link.size_bytes,
        "content_type": link.content_type,
        "expires_at": expires_at,
    }


@mcp.tool(annotations=ToolAnnotations(title="List my sandboxes", read_only_hint=True, open_world_hint=False))
async def list_containers() -> dict[str, Any]:
    """List your sandboxes: image, status, creation and expiry times, and their running commands."""
    with _tool_errors():
        tenant = current_tenant()
        mine = sandboxes.list(tenant)
        running: dict[str, list[str] | None] = {}
        limit = anyio.Semaphore(LIST_AT_ONCE)

        async def look(container_id: str) -> None:
            async with limit:
                try:
                    running[container_id] = await sandboxes.running_commands(container_id, tenant)
                except SandboxError:
                    running[container_id] = None

        async with anyio.create_task_group() as group:
            for sandbox in mine:
                group.start_soon(look, sandbox.container_id)
        listed = [{
            "container_id": sandbox.container_id,
            "image": sandbox.image,
            "status": "unavailable" if running.get(sandbox.container_id) is None else "running",
            "created_at": utc_iso(sandbox.created_at),
            "expires_at": utc_iso(sandbox.expires_at),
            "seconds_remaining": max(0, int(sandbox.expires_at - time.time())),
            "running_commands": running.get(sandbox.container_id) or [],
        } for sandbox in mine]
    return {"containers": listed}


@mcp.tool(annotations=ToolAnnotations(title="Write a file", read_only_hint=False, destructive_hint=True, open_world_hint=False))
async def write_file(
    container_id: ContainerId,
    path: Annotated[str, Field(description="Absolute path in the sandbox; missing parent folders are created.", max_length=4096)],
    content: Annotated[str, Field(description="The file's content: text, or base64 when encoding is 'base64'.")],
    encoding: Annotated[
        str, Field(description="'text' (UTF-8) or 'base64' (for binary content).", pattern="^(text|base64)$")
    ] = "text",
    mode: Annotated[
        str | None, Field(description="Permission bits in octal, e.g. '755' for a script; default '644'.", pattern="^[0-7]{3,4}$")
    ] = None,
) -> dict[str, Any]:
    """Write a file into a sandbox without shell quoting (source code, data, scripts); replaces an existing file."""
    data = _decoded(content, encoding, "content")
    with _tool_errors():
        size = await sandboxes.write_file(container_id, path, data, int(mode, 8) if mode else None, current_tenant())
    return {"container_id": container_id, "path": path, "size_bytes": size, "mode": mode or "644"}


SnapshotId = Annotated[
    str, Field(description="A snapshot_id from snapshot_container or list_snapshots.", max_length=100)
]


def _snapshot(snapshot: Snapshot) -> dict[str, Any]:
    return {
        "snapshot_id": snapshot.snapshot_id,
        "name": snapshot.name,
        "size_bytes": snapshot.size_bytes,
        "created_at": utc_iso(snapshot.created_at),
        "expires_at": utc_iso(snapshot.expires_at),
        "source_container_id": snapshot.source_container_id,
        "reason": snapshot.reason,
        "image": snapshot.image,
    }


@mcp.tool(annotations=ToolAnnotations(title="Snapshot a sandbox's files", read_only_hint=False, destructive_hint=False, open_world_hint=False))
async def snapshot_container(
    container_id: ContainerId,
    name: Annotated[str | None, Field(description="A name of your own for it, to find it in list_snapshots.", max_length=128)] = None,
) -> dict[str, Any]:
    """Keep a sandbox's files as they are now: everything written, changed or deleted since it was made.

    Running processes and memory are not kept. The sandbox is paused for the moment it takes and
    then carries on. create_container(snapshot_id=...) starts new sandboxes from it (forks);
    snapshots outlive their sandbox and expire after a few days (expires_at).
    """
    with _tool_errors():
        snapshot = await sandboxes.snapshot(container_id, name, current_tenant())
    return _snapshot(snapshot)


@mcp.tool(annotations=ToolAnnotations(title="List my snapshots", read_only_hint=True, open_world_hint=False))
async def list_snapshots() -> dict[str, Any]:
    """List your snapshots: id, name, size, when taken and when they expire, the sandbox they came from,
    and why they were taken ('requested' by snapshot_container, or 'expired': at the end of a sandbox's life)."""
    with _tool_errors():
        return {"snapshots": [_snapshot(snapshot) for snapshot in sandboxes.list_snapshots(current_tenant())]}


@mcp.tool(annotations=ToolAnnotations(title="Delete a snapshot", read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False))
async def delete_snapshot(snapshot_id: SnapshotId) -> dict[str, Any]:
    """Delete a snapshot for good; sandboxes already made from it are not affected."""
    with _tool_errors():
        sandboxes.delete_snapshot(snapshot_id, current_tenant())
    return {"snapshot_id": snapshot_id, "deleted": True}


def _port_link(link: PortLink) -> dict[str, Any]:
    shown: dict[str, Any] = {"port": link.port, "url": f"{base_url()}/ports/{link.token}/"}
    if SETTINGS.preview_domain:
        shown["host_url"] = f"{urlsplit(base_url()).scheme}://{link.token}.{SETTINGS.preview_domain}/"
    return shown


@mcp.tool(annotations=ToolAnnotations(title="Share a port as a URL", read_only_hint=False, destructive_hint=False, open_world_hint=False))
async def expose_port(
    container_id: ContainerId,
    port: Annotated[int, Field(description="The TCP port a server in the sandbox listens on (on 0.0.0.0 or 127.0.0.1).", ge=1, le=65535)],
) -> dict[str, Any]:
    """Make a URL for a web server, API or notebook running in a sandbox, to open in a browser or call from outside.

    Requests to the URL (any method, WebSockets too) reach the port inside the sandbox; start the
    server first (in the background, e.g. 'python3 -m http.server 8000 &'). The URL works until the
    sandbox is destroyed; asking again for the same port returns the same URL. Apps that build
    absolute links work best at host_url, when the server offers one.
    """
    with _tool_errors():
        tenant = current_tenant()
        if _stdio_file_server_error:
            raise SandboxError(_stdio_file_server_error.replace("File URLs", "Preview URLs"))
        link = sandboxes.expose_port(container_id, port, tenant)
        expires_at = utc_iso(sandboxes.get(container_id, tenant).expires_at)
    return {**_port_link(link), "expires_at": expires_at}


TOOL_NAMES = [
    "create_container", "execute_command", "check_container", "destroy_container", "get_file_url",
    "list_containers", "write_file", "snapshot_container", "list_snapshots", "delete_snapshot", "expose_port",
    "write_stdin", "send_signal", "read_file", "list_files",
]


# --------------------------------------------------------------------------- HTTP routes


def server_info() -> dict[str, Any]:
    return {
        "name": SERVER_NAME,
        "version": __version__,
        "mcp_endpoint": "/",
        "mcp_endpoints": ["/", MCP_PATH],
        "transport": "streamable-http",
        "tools": TOOL_NAMES,
        "health": "/health",
    }


class RootEndpoint:
    """``/``: server info for a plain GET, otherwise the MCP endpoint (as in the seed)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope)
        if request.method == "GET" and "text/event-stream" not in request.headers.get("accept", ""):
            await JSONResponse(server_info())(scope, receive, send)
            return
        app = scope.get("app")
        mcp_path = getattr(getattr(app, "state", None), "path", None)
        if app is None or not mcp_path or mcp_path == "/":
            await JSONResponse({"error": "The MCP endpoint is not mounted here."}, status_code=404)(scope, receive, send)
            return
        await app.router(dict(scope, path=mcp_path, raw_path=mcp_path.encode()), receive, send)


mcp.custom_route("/", methods=["GET", "POST", "DELETE"])(RootEndpoint())


@mcp.custom_route("/health", methods=["GET"])
async def health(request: Request) -> Response:
    try:
        with anyio.fail_after(15):
            details = await sandboxes.health()
    except (SandboxError, TimeoutError) as exc:
        return JSONResponse({"status": "unavailable", "error": str(exc) or "Podman did not answer in 15 s"}, status_code=503)
    return JSONResponse({"status": "ok", **details})


def _content_disposition(filename: str) -> str:
    fallback = re.sub(r'[^A-Za-z0-9._-]', "_", filename) or "download"
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"


@mcp.custom_route("/files/{file_id}", methods=["GET", "HEAD"])
async def download_file(request: Request) -> Response:
    file_id = request.path_params["file_id"]
    if not FILE_ID_RE.match(file_id):
        return JSONResponse({"error": "Unknown file link. File links come from the get_file_url tool."}, status_code=404)
    try:
        download = await sandboxes.open_file(file_id)
    except FileLinkNotFound as exc:
        return JSONResponse({"error": f"{exc} File links stop working when their sandbox is destroyed."}, status_code=404)
    except SandboxError as exc:
        return JSONResponse({"error": str(exc)}, status_code=503)
    headers = {
        "Content-Length": str(download.size),
        "Content-Disposition": _content_disposition(download.filename),
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-store",
    }
    if request.method == "HEAD":
        await download.aclose()
        return Response(status_code=200, headers=headers, media_type=download.link.content_type)
    return StreamingResponse(download.chunks(), headers=headers, media_type=download.link.content_type)


def allowed_hosts() -> list[str]:
    """Host headers the MCP endpoint accepts: loopback names, BASE_URL's host, ALLOWED_HOSTS."""
    hosts = ["127.0.0.1", "localhost", "::1", *SETTINGS.allowed_hosts]
    if SETTINGS.base_url:
        hosts.append(urlsplit(SETTINGS.base_url).hostname or "")
    if HOST not in ("0.0.0.0", "::", ""):
        hosts.append(HOST)
    return [h for h in hosts if h]


def allowed_origins() -> list[str]:
    origins = list(SETTINGS.allowed_origins)
    if SETTINGS.base_url:
        origins.append(SETTINGS.base_url)
    return origins


def http_app() -> Starlette:
    return mcp.http_app(path=MCP_PATH, middleware=[
        Middleware(PreviewRouter, proxy=preview),  # the apps sandboxes serve: before the MCP endpoint's guards
        Middleware(McpOriginGuard, mcp_path=MCP_PATH, hosts=allowed_hosts(), origins=allowed_origins()),
        Middleware(RequestSizeLimit, limit=MAX_REQUEST_BYTES),
    ])


def warn_if_exposed() -> None:
    if SETTINGS.preview_require_auth and not AUTH_TOKENS:
        logger.warning("PREVIEW_REQUIRE_AUTH is set but AUTH_TOKENS is not: every preview request will be refused (401)")
    loopback = HOST in ("127.0.0.1", "localhost", "::1") or HOST.startswith("127.")
    if not loopback and not AUTH_TOKENS:
        banner = "!" * 78
        logger.warning(
            "\n%s\nWARNING: listening on %s without AUTH_TOKENS: anyone who can reach this port can run\n"
            "code in sandboxes on this machine. Set AUTH_TOKENS (comma-separated bearer tokens).\n%s",
            banner, HOST, banner,
        )


# --------------------------------------------------------------------------- stdio side server

_stdio_file_server_error = ""


async def _serve_files_beside_stdio() -> None:
    """In stdio mode, serve /files, /ports and /health on $HOST:$PORT so file and preview URLs still work."""
    global _stdio_file_server_error
    app = Starlette(routes=[
        Route("/health", health, methods=["GET"]),
        Route("/files/{file_id}", download_file, methods=["GET", "HEAD"]),
    ])
    config = uvicorn.Config(PreviewRouter(app, preview), host=HOST, port=PORT, log_level="warning", lifespan="off")
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    try:
        await server.serve()
    except (OSError, SystemExit):  # uvicorn exits when it cannot bind
        pass
    if not server.started:
        _stdio_file_server_error = (
            f"File URLs are unavailable: this stdio server could not listen on {HOST}:{PORT} for downloads "
            "(the port is probably taken by another server). Set PORT to a free port in the client's "
            "server configuration and restart it."
        )
        logger.warning(_stdio_file_server_error)


def main() -> None:
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again; that second
    # delivery lands here and ends the process with status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    logging.basicConfig(level=SETTINGS.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warn_if_exposed()
    # asyncio's loop, not uvloop even when installed: see sandbox.podman.check_event_loop.
    uvicorn.run(http_app(), host=HOST, port=PORT, log_level=SETTINGS.log_level, timeout_graceful_shutdown=3,
                loop="asyncio")


if __name__ == "__main__":
    main()
