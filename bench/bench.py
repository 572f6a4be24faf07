"""The server against the raw ``podman`` CLI, measured in one run (run it with scripts/bench.sh).

Starts ``python server.py`` on a free port in a namespace of its own, measures each figure
below for the server (over MCP Streamable HTTP, FastMCP's client) and for raw podman with the
same flags and image, prints one table, and removes every container it made. The rows create,
life, burst, unpooled, exec and parallel also measure the peer, llm-sandbox 0.3.46 driving
Podman's REST API (bench/peer.py, in a venv of its own, on a ``podman system service`` the bench
starts), interleaved with ours and raw podman; ``--no-peer`` leaves it out. Columns: ours and raw
p50 and p99, ours/raw, the peer's p50, ours/peer (for calls/s, higher is better for ours).

  create     create_container, one every 0.5 s          vs  podman run -d;
             then destroy_container of each                 vs  podman rm -f -t 0
  life       a whole life: create_container + execute_command "echo hi" + destroy_container
                                                            vs  podman run -d + podman exec + podman rm -f -t 0
  burst      16 create_container at once on a server at the default settings (pool of 2, up to 16), twice:
             first with the pool at its floor, then once it has grown   vs  16 podman run -d at once;
             and 16 podman start at once of containers already created  vs  16 podman run -d at once
  unpooled   create_container on a server without a pool, one every 0.5 s  vs  podman run -d; and the
             first command in each new sandbox                               vs  podman exec echo hi
  exec       execute_command "echo hi", sequential       vs  podman exec NAME echo hi
  parallel   16 clients, each on its own sandbox, 10 s, once the pool refilled  vs  16 loops of podman exec;
             with the CPU a call costs the server and the clients
  floor      execute_command, sequential and from 16 clients, next to a tool that does nothing on a bare
             FastMCP server (bench/floor_server.py) called the same way: what any MCP call costs here
             (also with httpx alone as the client, no MCP library: the servers' share of a call);
             and destroy_container next to that tool at the create row's pace (one call every 0.5 s)
  live300    exec p50 with 300 live sandboxes / with 1; server RSS with 300 live
  scale      10, 100, 300 ... --live sandboxes alive: at each, exec p50, create p50, list_containers p50,
             how long an expired sandbox takes to go (reap), the server's CPU while idle, its RSS, and the
             host's memory in use (MemTotal less MemAvailable, as free counts it) per live sandbox
  output     a command printing 300 MB: server RSS growth
  download   a 100 MB file by its URL, with curl          vs  podman exec NAME cat FILE > /dev/null
  proxy      from inside a sandbox, to an HTTP server in a network namespace the bench makes:
             1 KB requests and a 50 MB download through the allow_domains proxy  vs  directly
             (SANDBOX_EGRESS_ALLOW_CIDRS opens the target); create with allow_domains vs a pooled create.
             The target's name is put in /etc/hosts while the bench runs (the proxy resolves names).
  snapshot   snapshot_container of a sandbox holding 100 MB of new files  vs  tar of the same files on the host;
             a fork, create_container(snapshot_id=, network=false), of a snapshot of 1 MB  vs  an unpooled
             create_container(network=false) from the image, and podman run -d
  preview    1 KB GETs and a 50 MB GET through a preview URL (expose_port; keep-alive, httpx)  vs  the same
             requests from inside the sandbox to its own port (tests/support/apps/preview-app.c, client and server)
  signin     list_containers with an authorization server's JWT  vs  with a static token, on one server with
             OAUTH_ISSUER and AUTH_TOKENS (oidc-provider on loopback), keys cached; and the two token checks
             alone, in the bench's process
  console    the web console's list with 100 live sandboxes / with 1; a line a command prints until an open
             console page (Debian's Chromium, Playwright) shows it; a keystroke in its terminal until the echo;
             a sandbox an MCP client creates until the open console lists it
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import anyio
from fastmcp import Client
from harness import Bench, save_results, structured
from peer_driver import PEER, PEER_ROWS, PEER_VENV, PeerDriver
from rows import (
    burst,
    console,
    create,
    download,
    execute,
    floor,
    interactive,
    life,
    live300,
    output,
    parallel,
    preview,
    proxy,
    scale,
    secrets,
    signin,
    snapshot,
    unpooled,
    volume,
)
from target import Target

from mcp_container_sandbox.sandbox import SandboxSettings


@dataclass
class Shared:
    """What rows share: the client, one sandbox and one raw container (for the rows that need them)."""

    client: Client
    container_id: str | None
    raw_name: str | None
    creates: int
    execs: int
    live: int


# Each row, in the order a run takes them: its name, and how it is run.
ROWS: dict[str, Callable[[Bench, Shared], Awaitable[None]]] = {
    "create": lambda bench, s: create.create(bench, s.client, s.creates),
    "life": lambda bench, s: life.life(bench, s.client, s.creates),
    "burst": lambda bench, s: burst.burst(bench),
    "unpooled": lambda bench, s: unpooled.unpooled(bench, s.creates),
    "exec": lambda bench, s: execute.execute(bench, s.client, s.container_id, s.raw_name, s.execs),
    "parallel": lambda bench, s: parallel.parallel(bench),
    "floor": lambda bench, s: floor.floor(bench, s.client, s.container_id, s.execs, s.creates),
    "live300": lambda bench, s: live300.live300(bench, s.client, s.live),
    "scale": lambda bench, s: scale.scale(bench, s.client, s.live),
    "output": lambda bench, s: output.output(bench, s.client, s.container_id),
    "download": lambda bench, s: download.download(bench, s.client, s.container_id, s.raw_name),
    "proxy": lambda bench, s: proxy.proxy(bench, s.client),
    "secrets": lambda bench, s: secrets.secrets(bench, s.client),
    "snapshot": lambda bench, s: snapshot.snapshot(bench, s.client),
    "volume": lambda bench, s: volume.volume(bench, s.client),
    "preview": lambda bench, s: preview.preview(bench, s.client),
    "interactive": lambda bench, s: interactive.interactive(bench, s.client),
    "signin": lambda bench, s: signin.signin(bench, s.execs),
    "console": lambda bench, s: console.console(bench, s.client, min(s.live, 100)),
}
NEEDS_A_SANDBOX = {"exec", "floor", "output", "download"}


async def run(rows: list[str], creates: int, execs: int, live: int, image: str, peer: bool,
              header: list[str]) -> Bench:
    bench = Bench(image, Target() if {"proxy", "secrets"} & set(rows) else None)
    bench.live = live
    bench.start_server()

    def say(line: str) -> None:
        header.append(line)
        print(line, flush=True)

    try:
        if peer and set(rows) & PEER_ROWS:
            bench.namespaces.append(f"{bench.namespace}-peer")
            bench.peer = PeerDriver(image, f"{bench.namespace}-peer")
            say(f"peer: llm-sandbox {bench.peer.version} over podman system service (bench/peer.py)")
        say(f"image {image}; namespace {bench.namespace}; times in ms unless marked")
        say(f"{'figure':44} {'unit':6} {'ours p50':>9} {'ours p99':>9} {'raw p50':>9} {'raw p99':>9} {'ratio':>8} "
            f"{'peer p50':>9} {'vs peer':>8}")
        async with Client(bench.url + "/mcp") as client:
            shared = Shared(client, None, None, creates, execs, live)
            if NEEDS_A_SANDBOX & set(rows):
                shared.container_id = structured(await client.call_tool("create_container", {}))["container_id"]
                shared.raw_name = await bench.raw_create()
            for name in ROWS:
                if name in rows:
                    await ROWS[name](bench, shared)
    finally:
        if bench.peer is not None:
            bench.peer.close()
        bench.cleanup()
        if bench.target is not None:
            bench.target.close()
    return bench


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated subset of {','.join(ROWS)}")
    parser.add_argument("--creates", type=int, default=20)
    parser.add_argument("--execs", type=int, default=200)
    parser.add_argument("--live", type=int, default=300)
    parser.add_argument("--no-peer", action="store_true",
                        help=f"leave out the peer ({PEER}; installed into {PEER_VENV.name} on first use)")
    args = parser.parse_args()
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = set(rows) - set(ROWS)
    if unknown:
        parser.error(f"unknown rows: {', '.join(sorted(unknown))}")
    image = SandboxSettings.from_env().image
    header: list[str] = []
    bench = anyio.run(run, rows, args.creates, args.execs, args.live, image, not args.no_peer, header)
    print(f"results: {save_results(bench, sys.argv[1:], header)} (and .txt)")


if __name__ == "__main__":
    main()
