"""``mcp-container-sandbox`` (and ``python server.py``): serve MCP over Streamable HTTP on $HOST:$PORT.
Configuration is read from the environment; ``--help`` lists it."""

from __future__ import annotations

import argparse
import json
import logging
import secrets
import signal
import sys
import time
from collections.abc import Sequence

import uvicorn

from . import __version__
from .app import create_app
from .sandbox.backend.kubernetes import egress_label, sandbox_pod
from .sandbox.containers import sandbox_labels, sandbox_spec
from .sandbox.model import Sandbox
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
    commands = parser.add_subparsers(dest="command", metavar="")
    kube = commands.add_parser("kube", help="what a sandbox is on Kubernetes (docs/kubernetes.md)")
    kube_commands = kube.add_subparsers(dest="kube_command", metavar="", required=True)
    pod = kube_commands.add_parser("pod-manifest", help="the Pod of a new sandbox under the settings in force, as JSON "
                                   "(kubectl apply -f and podman kube play take it)")
    pod.add_argument("--pooled", action="store_true", help="as the warm pool starts one: no tenant, no deadline yet")
    return parser.parse_args(argv)


def pod_manifest(settings: Settings, pooled: bool = False) -> str:
    """The Pod a new sandbox would be, made as the server makes a container (containers.py)."""
    sandbox_settings = settings.sandbox
    kubernetes = sandbox_settings.kubernetes
    now = time.time()
    sandbox = Sandbox(secrets.token_hex(16), sandbox_settings.image, now, now + sandbox_settings.ttl_seconds,
                      network=sandbox_settings.network)
    labels = sandbox_labels(sandbox, sandbox_settings.namespace, {"image": sandbox.image} if pooled else None)
    spec = sandbox_spec(sandbox, labels)
    pod = sandbox_pod(spec, kubernetes.namespace, sandbox_settings.disk_limit_bytes,
                      None if pooled else sandbox_settings.ttl_seconds, kubernetes.runtime_class,
                      kubernetes.node_selector, kubernetes.tolerations, egress_label(spec, sandbox_settings.egress))
    return json.dumps(pod, indent=2)


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
    args = parse_args(argv)
    try:
        settings = Settings.from_env()
    except ValueError as exc:
        sys.exit(f"mcp-container-sandbox: {exc}")
    if args.command == "kube":
        print(pod_manifest(settings, args.pooled))
        return
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
