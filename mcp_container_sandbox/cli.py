"""``mcp-container-sandbox`` (and ``python server.py``): serve MCP over Streamable HTTP on $HOST:$PORT.
Configuration is read from the environment; ``--help`` lists it."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Sequence

import uvicorn

from . import __version__
from .app import create_app
from .settings import VARIABLES, Settings

logger = logging.getLogger("mcp_sandbox.server")

USAGE = """Serves isolated Linux sandboxes (Podman containers) to AI clients over MCP: Streamable HTTP at
http://$HOST:$PORT/mcp (and /). For stdio, run `fastmcp run server.py` in the project's folder.
Set up Podman and the sandbox image first with scripts/setup.sh (scripts/serve.sh does both).
"""


def settings_help() -> str:
    width = max(len(name) for name, _, _ in VARIABLES)
    lines = ["settings (environment variables; docs/configuration.md has each in full):"]
    lines += [f"  {name:<{width}}  {meaning} [default: {default}]" for name, default, meaning in VARIABLES]
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mcp-container-sandbox", description=USAGE, epilog=settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser.parse_args(argv)


def warn_if_exposed(settings: Settings) -> None:
    server = settings.server
    if server.preview_require_auth and not server.authenticated:
        logger.warning("PREVIEW_REQUIRE_AUTH is set but neither AUTH_TOKENS nor OAuth is: every preview request will "
                       "be refused (401)")
    loopback = server.host in ("127.0.0.1", "localhost", "::1") or server.host.startswith("127.")
    if not loopback and not server.authenticated:
        banner = "!" * 78
        logger.warning(
            "\n%s\nWARNING: listening on %s without authentication: anyone who can reach this port can run\n"
            "code in sandboxes on this machine. Set AUTH_TOKENS (comma-separated bearer tokens) or\n"
            "OAUTH_ISSUER (sign-in: docs/signin.md).\n%s",
            banner, server.host, banner,
        )


def main(argv: Sequence[str] | None = None) -> None:
    parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        sys.exit(f"mcp-container-sandbox: {exc}")
    # uvicorn shuts down gracefully on SIGTERM, then raises the signal again; that second
    # delivery lands here and ends the process with status 0.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))
    level = settings.server.log_level
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    warn_if_exposed(settings)
    try:
        app = create_app(settings)
    except ValueError as exc:  # a setting that could be read but not used (an identity provider that is not there)
        sys.exit(f"mcp-container-sandbox: {exc}")
    # asyncio's loop, not uvloop even when installed: see sandbox/backend/podman_cli.check_event_loop.
    uvicorn.run(app.http_app(), host=settings.server.host, port=settings.server.port, log_level=level,
                timeout_graceful_shutdown=3, loop="asyncio")
