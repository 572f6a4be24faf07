"""Model round trips for a long command, per client at its defaults.

Starts the server (python server.py), then runs the full flow of tests/e2e/frameworks/flow.py
and tests/e2e/flow.mjs through each framework with a command of --seconds (60 by default),
the scripted stand-in for the model following our messages verbatim, and prints per client: the
calls from starting the command to its result (execute_command plus each check_container), the
waits it was told, the client timeouts it met, and how long until the result.

    ./scripts/bench.sh --clients [--seconds 60]

Needs the clients that ./scripts/test.sh installs (.venv-clients and tests/e2e/node_modules).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # support/: the sweep and the test apps
from support.sweep import image_holders, release_namespace, release_network_namespaces, remove_image_holders  # noqa: E402

from mcp_container_sandbox.settings import SandboxSettings  # noqa: E402

CLIENTS_PYTHON = ROOT / ".venv-clients" / "bin" / "python"
E2E = ROOT / "tests" / "e2e"
CLIENTS = {  # client: (flow command, package whose version is shown)
    "OpenAI Agents SDK": ([str(CLIENTS_PYTHON), "tests/e2e/frameworks/flow.py", "openai-agents"], "openai-agents"),
    "pydantic-ai (MCPToolset)": ([str(CLIENTS_PYTHON), "tests/e2e/frameworks/flow.py", "pydantic-ai"], "pydantic-ai-slim"),
    "LangChain MCP adapters": ([str(CLIENTS_PYTHON), "tests/e2e/frameworks/flow.py", "langchain"], "langchain-mcp-adapters"),
    "google-genai (MCP session)": ([str(CLIENTS_PYTHON), "tests/e2e/frameworks/flow.py", "google-genai"], "google-genai"),
    "TypeScript SDK": (["node", str(E2E / "flow.mjs"), "http"], "@modelcontextprotocol/sdk"),
    "mcp-remote (stdio bridge)": (["node", str(E2E / "flow.mjs"), "mcp-remote"], "mcp-remote"),
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def version(package: str) -> str:
    if package.startswith("@") or package == "mcp-remote":
        return json.loads((E2E / "node_modules" / package / "package.json").read_text())["version"]
    return subprocess.run([str(CLIENTS_PYTHON), "-c", f"import importlib.metadata as m; print(m.version({package!r}))"],
                          capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=int, default=60, help="how long the command runs")
    args = parser.parse_args()
    port, namespace = free_port(), f"bench-clients-{secrets.token_hex(3)}"
    env = {**os.environ, "PORT": str(port), "SANDBOX_NAMESPACE": namespace, "SANDBOX_POOL_SIZE": "0",
           "SANDBOX_PROXY_PORT": str(free_port()), "OPENAI_AGENTS_DISABLE_TRACING": "1"}
    holders_before = image_holders()
    server = subprocess.Popen([sys.executable, "server.py"], cwd=ROOT, env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        print(f"A {args.seconds} s command, followed as the server's messages say (medians do not apply: one run each)\n")
        print("| client | version | calls until the result | waits told (s) | timeouts met | seconds until the result |")
        print("|---|---|---|---|---|---|")
        for client, (argv, package) in CLIENTS.items():
            done = subprocess.run([*argv, f"http://127.0.0.1:{port}/mcp", str(args.seconds)], cwd=ROOT, env=env,
                                  capture_output=True, text=True, timeout=args.seconds * 4 + 120)
            try:
                report = json.loads(done.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                print(f"| {client} | {version(package)} | failed: {done.stderr[-300:]!r} | | | |")
                continue
            ok = "" if all(report["steps"].values()) and not report["errors"] else f" (failed: {report})"
            waits = ", ".join(str(int(w)) for w in report["waits"])
            print(f"| {client} | {version(package)} | {report['long_command_calls']}{ok} | {waits} | "
                  f"{report['timeouts']} | {report['long_command_seconds']} |")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=60)
        left = subprocess.run(["podman", "ps", "-aq", "--filter", f"label=mcp-sandbox.namespace={namespace}"],
                              capture_output=True, text=True).stdout.split()
        if left:
            print(f"{len(left)} sandboxes were left behind; removing them")
            subprocess.run(["podman", "rm", "-f", "-v", "-t", "0", *left], capture_output=True)
        settings = SandboxSettings.from_env()
        release_namespace(settings.disk_dir, namespace)
        shutil.rmtree(Path(settings.state_dir) / namespace, ignore_errors=True)  # removal marks, allow-lists
        remove_image_holders(holders_before)
        release_network_namespaces()


if __name__ == "__main__":
    main()
