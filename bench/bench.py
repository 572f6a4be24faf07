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
             how long an expired sandbox takes to go (reap), the server's CPU while idle, its RSS
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
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import resource
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import httpx
from fastmcp import Client

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # support/: the sweep and the test apps

from support.sweep import (  # noqa: E402
    build_static,
    image_holders,
    release_namespace,
    remove_image_holders,
)

from mcp_container_sandbox.sandbox import LIMIT_FLAGS, ULIMIT_FLAGS, SandboxSettings  # noqa: E402
from mcp_container_sandbox.sandbox.backend.podman import PodmanBackend  # noqa: E402
from mcp_container_sandbox.sandbox.backend.podman_cli import Podman  # noqa: E402
from mcp_container_sandbox.sandbox.paths import AGENT_PATH  # noqa: E402
from mcp_container_sandbox.sandbox.runtime.channel import AgentChannel  # noqa: E402

ROWS = ["create", "life", "burst", "unpooled", "exec", "parallel", "floor", "live300", "scale", "output", "download", "proxy", "snapshot", "preview", "interactive"]
TARGET_NAME = "mcp-sandbox-bench.test"  # .test: a name for testing that never resolves elsewhere
TARGET_SERVER = """
import http.server, sys
chunk = b"x" * (1 << 20)
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        size = int(self.path.strip("/").split("?")[0] or 0)
        self.send_response(200)
        self.send_header("Content-Length", str(size))
        self.end_headers()
        while size > 0:
            self.wfile.write(chunk[:size]); size -= len(chunk)
    def log_message(self, *args): pass
http.server.ThreadingHTTPServer((sys.argv[1], 80), Handler).serve_forever()
"""


class Target:
    """An HTTP server in a network namespace of the bench's own, joined to the host by a veth
    pair, and named TARGET_NAME in /etc/hosts while the bench runs."""

    def __init__(self) -> None:
        tag = secrets.token_hex(2)
        self.netns, self.host_if, self.ns_if = f"mcpsb-bench-{tag}", f"mcpsbbh{tag}", f"mcpsbbn{tag}"
        third = int(tag, 16) % 250
        self.ip = f"10.251.{third}.2"
        inside = ["ip", "netns", "exec", self.netns]
        for argv in (["ip", "netns", "add", self.netns],
                     ["ip", "link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if],
                     ["ip", "link", "set", self.ns_if, "netns", self.netns],
                     ["ip", "addr", "add", f"10.251.{third}.1/30", "dev", self.host_if],
                     ["ip", "link", "set", self.host_if, "up"],
                     [*inside, "ip", "addr", "add", f"{self.ip}/30", "dev", self.ns_if],
                     [*inside, "ip", "link", "set", self.ns_if, "up"],
                     [*inside, "ip", "link", "set", "lo", "up"],
                     [*inside, "ip", "route", "add", "default", "via", f"10.251.{third}.1"]):
            subprocess.run(argv, check=True, capture_output=True)
        self.process = subprocess.Popen([*inside, sys.executable, "-c", TARGET_SERVER, self.ip])
        self.hosts_line = f"{self.ip} {TARGET_NAME}  # mcp-sandbox bench {tag}\n"
        with open("/etc/hosts", "a") as hosts:
            hosts.write(self.hosts_line)

    def close(self) -> None:
        self.process.kill()
        self.process.wait()
        hosts = Path("/etc/hosts")
        hosts.write_text(hosts.read_text().replace(self.hosts_line, ""))
        subprocess.run(["ip", "link", "del", self.host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.netns], capture_output=True)


PEER = "llm-sandbox[podman]==0.3.46"
PEER_ROWS = {"create", "life", "burst", "unpooled", "exec", "parallel"}  # the rows that measure the peer too
PEER_VENV = ROOT / ".venv-peer"


class PeerDriver:
    """The peer (bench/peer.py) in a venv of its own, on ``podman system service`` at a socket of
    the bench's own; one request at a time, answered in JSON."""

    def __init__(self, image: str, namespace: str) -> None:
        python = PEER_VENV / "bin" / "python"
        if not python.exists() or subprocess.run([str(python), "-c", "import llm_sandbox.podman"]).returncode != 0:
            print(f"installing the peer, {PEER}, into {PEER_VENV}", flush=True)
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEER_VENV)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "-q", PEER], check=True)
        self.version = subprocess.run([str(python), "-c", "import importlib.metadata as m; print(m.version('llm-sandbox'))"],
                                      capture_output=True, text=True, check=True).stdout.strip()
        self.folder = Path(subprocess.run(["mktemp", "-d", "/tmp/mcp-sandbox-bench-peer-XXXXXX"], capture_output=True,
                                          text=True, check=True).stdout.strip())
        self.socket = self.folder / "podman.sock"
        self.service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{self.socket}"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            if self.socket.exists():
                break
            time.sleep(0.1)
        self.worker = subprocess.Popen([str(python), str(ROOT / "bench" / "peer.py"), str(self.socket), image, namespace],
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.ask_now()  # {"ready": true}, once the library is imported

    def ask_now(self, **request: Any) -> dict[str, Any]:
        assert self.worker.stdin is not None and self.worker.stdout is not None
        if request:
            self.worker.stdin.write(json.dumps(request) + "\n")
            self.worker.stdin.flush()
        answer = json.loads(self.worker.stdout.readline() or '{"error": "the peer exited"}')
        if "error" in answer:
            raise RuntimeError(f"the peer ({PEER}) failed at {request}: {answer['error']}")
        return answer

    async def ask(self, **request: Any) -> dict[str, Any]:
        return await anyio.to_thread.run_sync(lambda: self.ask_now(**request))

    async def ms(self, **request: Any) -> float:
        """The peer's own time for one request (taken in the peer, around the library's call)."""
        return (await self.ask(**request))["ms"]

    def close(self) -> None:
        made: list[str] = []
        if self.worker.stdin is not None and self.worker.stdout is not None:
            self.worker.stdin.close()  # the worker closes the sessions it still has, then lists what it made
            made = json.loads(self.worker.stdout.readline() or '{"made": []}').get("made", [])
        try:
            self.worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.worker.kill()
        self.service.terminate()
        self.service.wait(timeout=30)
        shutil.rmtree(self.folder, ignore_errors=True)
        # Podman 4.3's REST API leaves a conmon pair behind for many exec sessions, alive after their
        # container is removed (~370 after one run, 2.6 MB each): the peer's are swept here.
        left = kill_conmons_of(set(made))
        if left:
            print(f"removed {left} conmon processes the peer's exec sessions left behind (Podman's REST API)", flush=True)


def kill_conmons_of(container_ids: set[str]) -> int:
    """Kill the conmon processes that watch these containers (or exec sessions in them)."""
    killed = 0
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().split(b"\0")
            if argv[0].endswith(b"conmon") and b"-c" in argv and argv[argv.index(b"-c") + 1].decode() in container_ids:
                os.kill(int(cmdline.parent.name), 9)
                killed += 1
        except (OSError, IndexError, ValueError):
            continue
    return killed


class PlainMcp:
    """MCP over Streamable HTTP with nothing but httpx (one keep-alive connection): a call's time
    without an MCP client library's own CPU, i.e. the server's share and the transport's."""

    HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}

    def __init__(self, url: str) -> None:
        self.http = httpx.AsyncClient(timeout=60)
        self.url, self.headers, self.ids = url, dict(self.HEADERS), 0

    async def __aenter__(self) -> PlainMcp:
        answer = await self._post("initialize", {"protocolVersion": "2025-06-18", "capabilities": {},
                                                 "clientInfo": {"name": "bench-plain", "version": "0"}})
        self.headers["mcp-protocol-version"] = answer["result"]["protocolVersion"]
        await self.http.post(self.url, headers=self.headers, json={"jsonrpc": "2.0", "method": "notifications/initialized"})
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.http.aclose()

    async def _post(self, method: str, params: dict[str, Any]) -> dict[str, Any]:
        self.ids += 1
        response = await self.http.post(self.url, headers=self.headers,
                                        json={"jsonrpc": "2.0", "id": self.ids, "method": method, "params": params})
        if "mcp-session-id" in response.headers:
            self.headers["mcp-session-id"] = response.headers["mcp-session-id"]
        text = response.text
        data = [line[5:] for line in text.splitlines() if line.startswith("data:")]
        return json.loads(data[-1] if data else text)

    async def call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        answer = await self._post("tools/call", {"name": name, "arguments": arguments})
        assert "result" in answer and not answer["result"].get("isError"), answer
        return answer["result"]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_seconds(pid: int) -> float:
    """User and system CPU a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_cpu() -> tuple[dict[str, float], float, float]:
    """CPU seconds used so far by the processes alive now, summed by name (with the children each
    reaped: a command's ``sh`` counts for the agent that ran it), the CPUs' busy and total seconds."""
    by_name: dict[str, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            name = (entry / "comm").read_text().strip()
        except OSError:
            continue
        name = "kernel workers" if name.startswith(("kworker", "jbd2", "ext4")) else name
        by_name[name] = by_name.get(name, 0.0) + sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    total = sum(ticks) / os.sysconf("SC_CLK_TCK")
    return by_name, total - (ticks[3] + ticks[4]) / os.sysconf("SC_CLK_TCK"), total


def cpu_by_name(before: tuple[dict[str, float], float, float], after: tuple[dict[str, float], float, float],
                calls: int, top: int = 5) -> str:
    """Where the machine's CPU went between two machine_cpu() readings, in ms a call."""
    spent = {name: (after[0][name] - before[0].get(name, 0.0)) * 1000 / max(calls, 1) for name in after[0]}
    busy = (after[1] - before[1]) / max(after[2] - before[2], 1e-9) * (os.cpu_count() or 1)
    parts = ", ".join(f"{name} {ms:.2f}" for name, ms in sorted(spent.items(), key=lambda kv: -kv[1])[:top] if ms >= 0.01)
    return f"machine {busy:.2f} of {os.cpu_count()} CPUs busy; ms a call: {parts}"


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid: int, field: str = "VmRSS") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Bench:
    def __init__(self, image: str, target: Target | None = None) -> None:
        self.image = image
        self.target = target
        self.namespace = f"bench-{secrets.token_hex(3)}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.raw_names: list[str] = []
        self.lines: list[str] = []
        self.server: subprocess.Popen[bytes] | None = None
        self.live = 0  # the most live sandboxes a row asks for (--live)
        self.namespaces = [self.namespace]  # the main server's, and those of the rows' own servers
        self.holders_before = image_holders()
        self.peer: PeerDriver | None = None  # llm-sandbox, when the run compares with it

    # ----- plumbing

    def start_server(self) -> None:
        env = {"SANDBOX_MAX_CONTAINERS": str(max(400, self.live + 100)),
               "SANDBOX_POOL_SIZE": os.environ.get("SANDBOX_POOL_SIZE", "4")}
        if self.target is not None:
            env["SANDBOX_EGRESS_ALLOW_CIDRS"] = f"{self.target.ip}/32"
        self.server = self.spawn_server(self.namespace, self.port, env)

    def spawn_server(self, namespace: str, port: int, settings: dict[str, str]) -> subprocess.Popen[bytes]:
        """``python server.py`` on ``port`` in ``namespace`` with these settings over the defaults."""
        shaping = ("SANDBOX_POOL_SIZE", "SANDBOX_POOL_MAX", "SANDBOX_POOL_IDLE_SECONDS", "SANDBOX_MAX_CONTAINERS")
        env = {**{k: v for k, v in os.environ.items() if k not in shaping}, "PORT": str(port),
               "SANDBOX_NAMESPACE": namespace, "SANDBOX_IMAGE": self.image, "LOG_LEVEL": "warning", **settings}
        if namespace not in self.namespaces:
            self.namespaces.append(namespace)
        log = open(Path(tempfile.gettempdir()) / f"mcp-bench-{namespace}.log", "ab")  # kept: for a row that failed
        server = subprocess.Popen([sys.executable, str(ROOT / "server.py")], env=env, cwd=ROOT, stdout=log, stderr=log)
        log.close()
        for _ in range(300):
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
                return server
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("server did not start")

    def cleanup(self) -> None:
        if self.server is not None:
            self.server.terminate()
            self.server.wait(timeout=60)
        settings = SandboxSettings.from_env()
        for namespace in self.namespaces:
            names = subprocess.run(["podman", "ps", "-aq", "--filter", f"label=mcp-sandbox.namespace={namespace}"],
                                   capture_output=True, text=True).stdout.split()
            for start in range(0, len(names), 50):
                subprocess.run(["podman", "rm", "-f", "-v", "-t", "0", *names[start:start + 50]], capture_output=True)
            release_namespace(settings.disk_dir, namespace)
            shutil.rmtree(Path(settings.state_dir) / namespace, ignore_errors=True)  # snapshots, allow-lists
        remove_image_holders(self.holders_before)

    async def raw_create(self, verb: tuple[str, ...] = ("run", "-d")) -> str:
        """``podman run -d`` (or ``podman create``) of the image with the server's flags; its name."""
        name = f"bench-raw-{secrets.token_hex(6)}"
        self.raw_names.append(name)
        await anyio.run_process([
            "podman", *verb, "--name", name, "--init", *LIMIT_FLAGS, *ULIMIT_FLAGS,
            "--label", f"mcp-sandbox.namespace={self.namespace}", "--entrypoint", "sleep", self.image, "2147483647",
        ])
        return name

    def row(self, label: str, ours: list[float] | float, raw: list[float] | float | None, unit: str = "ms",
            note: str = "", peer: list[float] | float | None = None) -> None:
        """One line of the table: ours, raw podman, ours/raw; the peer's p50 and ours/peer where measured."""
        def cells(values: list[float] | float | None) -> tuple[str, str]:
            if values is None:
                return "-", "-"
            if isinstance(values, list):
                return f"{statistics.median(values):.1f}", f"{percentile(values, 0.99):.1f}"
            return f"{values:.1f}", "-"

        def mid(values: list[float] | float) -> float:
            return statistics.median(values) if isinstance(values, list) else values

        ours_p50, ours_p99 = cells(ours)
        raw_p50, raw_p99 = cells(raw)
        peer_p50, _ = cells(peer)
        ratio = "-" if raw is None else f"{mid(ours) / mid(raw):.3f}"
        peer_ratio = "-" if peer is None else f"{mid(ours) / mid(peer):.3f}"
        line = (f"{label:44} {unit:6} {ours_p50:>9} {ours_p99:>9} {raw_p50:>9} {raw_p99:>9} {ratio:>8} "
                f"{peer_p50:>9} {peer_ratio:>8}  {note}")
        self.lines.append(line)
        print(line, flush=True)

    @staticmethod
    async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
        started = time.perf_counter()
        await fn()
        return (time.perf_counter() - started) * 1000

    # ----- figures

    async def create(self, client: Client, count: int) -> None:
        await anyio.sleep(5)  # let the pool fill
        ids: list[str] = []

        async def create_one() -> None:
            ids.append(structured(await client.call_tool("create_container", {}))["container_id"])

        raw_names: list[str] = []

        async def raw_create_one() -> None:
            raw_names.append(await self.raw_create())

        peer_ids: list[str] = []
        ours, raw, peer = await self.interleaved(create_one, raw_create_one, count, lambda: self.peer_create_into(peer_ids))
        self.row("create_container / podman run -d", ours, raw, peer=peer)
        # destroy_container answers once the sandbox is unusable; its container goes in the background.
        ours, raw, peer = [], [], []
        for index, (container_id, name) in enumerate(zip(ids, raw_names)):
            raw.append(await self.timed(lambda name=name: anyio.run_process(["podman", "rm", "-f", "-t", "0", name])))
            await anyio.sleep(0.5)
            ours.append(await self.timed(lambda cid=container_id: client.call_tool("destroy_container", {"container_id": cid})))
            await anyio.sleep(0.5)
            if self.peer is not None:
                peer.append(await self.peer.ms(op="destroy", id=peer_ids[index]))
                await anyio.sleep(0.5)
        self.row("destroy_container / podman rm -f -t 0", ours, raw, peer=peer or None)

    async def interleaved(self, ours_one: Callable[[], Awaitable[Any]], raw_one: Callable[[], Awaitable[Any]],
                          count: int, peer_one: Callable[[], Awaitable[float]] | None = None,
                          ) -> tuple[list[float], list[float], list[float] | None]:
        """Times of ours, raw and the peer (when the bench has one), taken in turns, 0.5 s apart (for the
        pool to refill); ``peer_one`` returns the peer's own time."""
        ours, raw, peer = [], [], []
        for _ in range(count):
            raw.append(await self.timed(raw_one))
            await anyio.sleep(0.5)
            ours.append(await self.timed(ours_one))
            await anyio.sleep(0.5)
            if self.peer is not None and peer_one is not None:
                peer.append(await peer_one())
                await anyio.sleep(0.5)
        return ours, raw, peer or None

    async def whole_life(self, client: Client, count: int) -> None:
        """A sandbox's whole life: create, one command, destroy; next to the same through the CLI and the peer."""

        async def ours_one() -> None:
            container_id = structured(await client.call_tool("create_container", {}))["container_id"]
            result = await client.call_tool("execute_command", {"container_id": container_id, "command": "echo hi"})
            assert structured(result)["stdout"] == "hi\n"
            await client.call_tool("destroy_container", {"container_id": container_id})

        async def raw_one() -> None:
            name = await self.raw_create()
            await anyio.run_process(["podman", "exec", name, "echo", "hi"])
            await anyio.run_process(["podman", "rm", "-f", "-t", "0", name])

        async def peer_one() -> float:
            assert self.peer is not None
            return await self.peer.ms(op="life")

        await anyio.sleep(5)  # let the pool fill
        ours, raw, peer = await self.interleaved(ours_one, raw_one, count, peer_one)
        self.row("whole life: create+echo+destroy / CLI", ours, raw, peer=peer)

    async def burst(self, size: int = 16) -> None:
        """``size`` creates at once on a server at the default settings, twice: first with its pool at
        the floor, then once the pool has followed the first burst; 16 raw podman run at once before each."""
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        server = self.spawn_server(f"{self.namespace}-burst", port, {})

        async def at_once(one: Callable[[], Awaitable[Any]]) -> list[float]:
            times: list[float] = []

            async def timed_one() -> None:
                times.append(await self.timed(one))

            async with anyio.create_task_group() as group:
                for _ in range(size):
                    group.start_soon(timed_one)
            return times

        try:
            # What a burst beyond any started pool costs at least: containers already created (image,
            # storage, config done) and only started, all at once, against 16 raw runs at once.
            await self.pool_settled(url)
            raw_names: list[str] = []
            runs = await at_once(lambda: self.raw_create_into(raw_names))
            await anyio.run_process(["podman", "rm", "-f", "-t", "0", *raw_names])
            created = [await self.raw_create(("create",)) for _ in range(size)]
            await anyio.sleep(2)
            queue = iter(created)
            starts = await at_once(lambda: anyio.run_process(["podman", "start", next(queue)]))
            await anyio.run_process(["podman", "rm", "-f", "-t", "0", *created])
            self.row(f"{size} podman start at once (created) / {size} runs", starts, runs,
                     note=f"p99 ratio {percentile(starts, 0.99) / percentile(runs, 0.99):.3f}: the floor of a "
                          "burst that finds no started sandbox")
            await anyio.sleep(2)
            async with Client(url + "/mcp") as client:
                for label in ("pool at its floor", "pool grown"):
                    await self.pool_settled(url)
                    raw_names: list[str] = []
                    raw = await at_once(lambda: self.raw_create_into(raw_names))
                    await anyio.run_process(["podman", "rm", "-f", "-t", "0", *raw_names])
                    await anyio.sleep(2)
                    state = await self.pool_settled(url)
                    ids: list[str] = []
                    ours = await at_once(lambda: self.create_into(client, ids))
                    peer = None
                    if self.peer is not None:  # the peer has no pool: each of its opens starts a container
                        await anyio.sleep(2)
                        peer = (await self.peer.ask(op="burst", n=size))["times"]
                    self.row(f"{size} creates at once, {label} / {size} runs", ours, raw, peer=peer,
                             note=f"pool ready {state['ready']} before; p99 ratio "
                                  f"{percentile(ours, 0.99) / percentile(raw, 0.99):.3f}"
                                  + ("" if peer is None else f"; peer p99 {percentile(peer, 0.99):.1f}"))
                    for container_id in ids:
                        await client.call_tool("destroy_container", {"container_id": container_id})
        finally:
            server.terminate()
            server.wait(timeout=60)

    async def unpooled(self, count: int) -> None:
        """Creates on a server without a pool, and the first command in each new sandbox."""
        port = free_port()
        server = self.spawn_server(f"{self.namespace}-unpooled", port, {"SANDBOX_POOL_SIZE": "0"})
        try:
            async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                ids: list[str] = []
                names: list[str] = []
                peer_ids: list[str] = []
                ours, raw, peer = await self.interleaved(lambda: self.create_into(client, ids),
                                                         lambda: self.raw_create_into(names), count,
                                                         lambda: self.peer_create_into(peer_ids))
                self.row("create_container, no pool / podman run -d", ours, raw, peer=peer)
                first, raw_first, peer_first = [], [], []
                for index, (container_id, name) in enumerate(zip(ids, names)):
                    raw_first.append(await self.timed(lambda name=name: anyio.run_process(["podman", "exec", name, "echo", "hi"])))
                    first.append(await self.timed(lambda cid=container_id: client.call_tool(
                        "execute_command", {"container_id": cid, "command": "echo hi"})))
                    if self.peer is not None:
                        peer_first.append(await self.peer.ms(op="exec", id=peer_ids[index], command="echo hi"))
                self.row("first command in a new sandbox, no pool / exec", first, raw_first, peer=peer_first or None)
                for container_id in ids:
                    await client.call_tool("destroy_container", {"container_id": container_id})
                for peer_id in peer_ids:
                    await self.peer.ask(op="destroy", id=peer_id)
                await anyio.run_process(["podman", "rm", "-f", "-t", "0", *names])
        finally:
            server.terminate()
            server.wait(timeout=60)

    @staticmethod
    async def pool_settled(url: str, seconds: float = 180) -> dict[str, int]:
        """Once the server's pool holds what it aims at and starts no more."""
        deadline = time.monotonic() + seconds
        while True:
            try:  # /health asks Podman: behind creates under way it can take a while
                state = (await anyio.to_thread.run_sync(lambda: httpx.get(url + "/health", timeout=30))).json()["pool"]
            except httpx.TimeoutException:
                if time.monotonic() > deadline:
                    raise
                continue
            if state["ready"] >= state["target"] and not state["starting"]:
                return state
            if time.monotonic() > deadline:
                raise RuntimeError(f"the pool did not settle: {state} (the server's log: "
                                   f"{tempfile.gettempdir()}/mcp-bench-<namespace>.log)")
            await anyio.sleep(0.5)

    async def create_into(self, client: Client, ids: list[str]) -> None:
        ids.append(structured(await client.call_tool("create_container", {}))["container_id"])

    async def raw_create_into(self, names: list[str]) -> None:
        names.append(await self.raw_create())

    async def peer_create_into(self, ids: list[str]) -> float:
        """A session opened by the peer; its own time."""
        assert self.peer is not None
        made = await self.peer.ask(op="create")
        ids.append(made["id"])
        return made["ms"]

    async def exec_sequential(self, client: Client, container_id: str, raw_name: str, count: int) -> list[float]:
        ours, raw = [], []

        async def ours_one() -> None:
            result = await client.call_tool("execute_command", {"container_id": container_id, "command": "echo hi"})
            assert structured(result)["stdout"] == "hi\n"

        async def raw_one() -> None:
            await anyio.run_process(["podman", "exec", raw_name, "echo", "hi"])

        await ours_one()  # the channel opens on the first call
        peer: list[float] = []
        peer_id = None if self.peer is None else (await self.peer.ask(op="create"))["id"]
        for _ in range(count):
            raw.append(await self.timed(raw_one))
            ours.append(await self.timed(ours_one))
            if self.peer is not None:
                peer.append(await self.peer.ms(op="exec", id=peer_id, command="echo hi"))
        if self.peer is not None:
            await self.peer.ask(op="destroy", id=peer_id)
        self.row("execute_command echo / podman exec echo", ours, raw, peer=peer or None)
        return ours

    @staticmethod
    async def calls_from_clients(url: str, container_ids: list[str], seconds: float, server_pid: int) -> dict[str, Any]:
        """One MCP client per sandbox calling ``execute_command`` "echo hi" in a loop for ``seconds``:
        calls, errors, latencies, and the CPU each call cost the server and the clients (this process)."""
        calls, errors, latency = [0], [0], []

        async def worker(container_id: str, deadline: float) -> None:
            async with Client(url + "/mcp") as client:
                while time.monotonic() < deadline:
                    started = time.perf_counter()
                    result = await client.call_tool("execute_command", {"container_id": container_id, "command": "echo hi"},
                                                    raise_on_error=False)
                    latency.append((time.perf_counter() - started) * 1000)
                    if result.is_error or structured(result)["stdout"] != "hi\n":
                        errors[0] += 1
                    calls[0] += 1

        server_before, clients_before, machine_before = cpu_seconds(server_pid), own_cpu_seconds(), machine_cpu()
        deadline = time.monotonic() + seconds
        async with anyio.create_task_group() as group:
            for container_id in container_ids:
                group.start_soon(worker, container_id, deadline)
        per_call = 1000 / max(calls[0], 1)
        return {"calls": calls[0], "errors": errors[0], "latency": latency,
                "server_cpu": (cpu_seconds(server_pid) - server_before) * per_call,
                "clients_cpu": (own_cpu_seconds() - clients_before) * per_call,
                "machine": cpu_by_name(machine_before, machine_cpu(), calls[0])}

    async def parallel(self, seconds: float = 10, clients: int = 16) -> None:
        assert self.server is not None
        raw_names = [await self.raw_create() for _ in range(clients)]
        raw_calls = [0]

        async def raw_worker(name: str, deadline: float) -> None:
            while time.monotonic() < deadline:
                await anyio.run_process(["podman", "exec", name, "echo", "hi"])
                raw_calls[0] += 1

        async with Client(self.url + "/mcp") as client:
            ids = [structured(await client.call_tool("create_container", {}))["container_id"] for _ in range(clients)]
            for container_id in ids:  # open every channel first
                await client.call_tool("execute_command", {"container_id": container_id, "command": "true"})
            await self.pool_settled(self.url)  # steady state: the pool has refilled after these creates
            ours = await self.calls_from_clients(self.url, ids, seconds, self.server.pid)
            deadline = time.monotonic() + seconds
            async with anyio.create_task_group() as tg:
                for name in raw_names:
                    tg.start_soon(raw_worker, name, deadline)
            for container_id in ids:
                await client.call_tool("destroy_container", {"container_id": container_id})
        await anyio.run_process(["podman", "rm", "-f", "-t", "0", *raw_names])
        peer, peer_note = None, ""
        if self.peer is not None:  # the same: its own sandbox for each of 16 threads, for as long
            done = await self.peer.ask(op="parallel", n=clients, seconds=seconds)
            peer = done["calls"] / seconds
            peer_note = f"; peer errors {done['errors']}, latency p50 {statistics.median(done['latency']):.1f} ms"
        self.row(f"{clients} clients, calls/s (higher is better)", ours["calls"] / seconds, raw_calls[0] / seconds,
                 unit="call/s", peer=peer,
                 note=f"errors {ours['errors']}; ours latency p50 {statistics.median(ours['latency']):.1f} ms "
                      f"p99 {percentile(ours['latency'], 0.99):.1f} ms; CPU a call: server {ours['server_cpu']:.1f} ms, "
                      f"clients {ours['clients_cpu']:.1f} ms; {ours['machine']}{peer_note}")

    async def floor(self, client: Client, container_id: str, count: int, paced: int, seconds: float = 10,
                    clients: int = 16) -> None:
        """What any tool call costs here: a tool that does nothing, on a bare FastMCP server over the same
        transport with the same client (bench/floor_server.py), next to our execute_command "echo hi"
        in a tight loop, and next to destroy_container at the create row's pace (``paced`` of each)."""
        assert self.server is not None
        port = free_port()
        bare = subprocess.Popen([sys.executable, str(ROOT / "bench" / "floor_server.py"), str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            for _ in range(300):
                try:
                    httpx.post(url + "/mcp", timeout=2)
                    break
                except httpx.HTTPError:
                    await anyio.sleep(0.1)
            async with Client(url + "/mcp") as floor_client:
                async def ours_one() -> None:
                    await client.call_tool("execute_command", {"container_id": container_id, "command": "echo hi"})

                async def floor_one() -> None:
                    await floor_client.call_tool("execute_command", {"container_id": container_id, "command": "echo hi"})

                await ours_one()
                await floor_one()
                ours, floor = [], []
                for _ in range(count):
                    floor.append(await self.timed(floor_one))
                    ours.append(await self.timed(ours_one))
                self.row("execute_command / a no-op tool, bare FastMCP", ours, floor)
                async with PlainMcp(self.url + "/mcp") as plain_ours, PlainMcp(url + "/mcp") as plain_floor:
                    arguments = {"container_id": container_id, "command": "echo hi"}
                    await plain_ours.call("execute_command", arguments)
                    await plain_floor.call("execute_command", arguments)
                    ours, floor = [], []
                    for _ in range(count):
                        floor.append(await self.timed(lambda: plain_floor.call("execute_command", arguments)))
                        ours.append(await self.timed(lambda: plain_ours.call("execute_command", arguments)))
                self.row("the same, httpx alone as the client", ours, floor,
                         note="no MCP client library: the servers' share of a call")
                # The create and destroy rows send one call every 0.5 s, and a call after a pause costs
                # more than one of a tight loop (caches, idle CPUs): the floor at that pace, beside destroy.
                ours, floor = [], []
                for _ in range(paced):
                    made = structured(await client.call_tool("create_container", {}))["container_id"]
                    await anyio.sleep(0.5)
                    floor.append(await self.timed(floor_one))
                    await anyio.sleep(0.5)
                    ours.append(await self.timed(
                        lambda made=made: client.call_tool("destroy_container", {"container_id": made})))
                    await anyio.sleep(0.5)
                self.row("destroy_container / no-op tool, 1 per 0.5 s", ours, floor)
                ids = [structured(await client.call_tool("create_container", {}))["container_id"] for _ in range(clients)]
                for made in ids:
                    await client.call_tool("execute_command", {"container_id": made, "command": "true"})
                await self.pool_settled(self.url)
                ours_many = await self.calls_from_clients(self.url, ids, seconds, self.server.pid)
                floor_many = await self.calls_from_clients(url, ids, seconds, bare.pid)
                for made in ids:
                    await client.call_tool("destroy_container", {"container_id": made})

            def cpu(done: dict[str, Any]) -> str:
                return f"server {done['server_cpu']:.1f} ms, clients {done['clients_cpu']:.1f} ms"

            self.row(f"{clients} clients, calls/s / no-op tool, bare FastMCP", ours_many["calls"] / seconds,
                     floor_many["calls"] / seconds, unit="call/s",
                     note=f"CPU a call: ours {cpu(ours_many)}; bare {cpu(floor_many)}; ours: {ours_many['machine']}")
        finally:
            bare.terminate()
            bare.wait(timeout=30)

    async def live300(self, client: Client, count: int = 300) -> None:
        assert self.server is not None
        first = structured(await client.call_tool("create_container", {}))["container_id"]

        async def exec_samples(n: int = 100) -> list[float]:
            samples = []
            for _ in range(n):
                samples.append(await self.timed(lambda: client.call_tool(
                    "execute_command", {"container_id": first, "command": "echo hi"})))
            return samples

        await exec_samples(5)
        with_one = await exec_samples()
        ids = [first]
        semaphore = anyio.Semaphore(4)

        async def create_one() -> None:
            async with semaphore:
                ids.append(structured(await client.call_tool("create_container", {}))["container_id"])

        started = time.monotonic()
        async with anyio.create_task_group() as tg:
            for _ in range(count - 1):
                tg.start_soon(create_one)
        made_in = time.monotonic() - started
        with_many = await exec_samples()
        self.row(f"exec echo with {count} live / with 1", with_many, with_one,
                 note=f"{count} sandboxes made in {made_in:.0f} s")
        self.row(f"server RSS with {count} live sandboxes", rss_mb(self.server.pid), None, unit="MB",
                 note=f"peak {rss_mb(self.server.pid, 'VmHWM'):.0f} MB")
        async def destroy_one(container_id: str) -> None:
            async with semaphore:
                await client.call_tool("destroy_container", {"container_id": container_id})

        async with anyio.create_task_group() as tg:
            for container_id in ids:
                tg.start_soon(destroy_one, container_id)

    async def scale(self, client: Client, most: int) -> None:
        """What grows with the number of live sandboxes, measured at 10, 100, 300, 1000 ... most."""
        assert self.server is not None
        pid = self.server.pid
        checkpoints = [n for n in (1, 10, 100, 300, 1000, 3000) if n < most] + [most]
        semaphore = anyio.Semaphore(4)
        ids: list[str] = []

        async def create_one(arguments: dict[str, Any] | None = None) -> str:
            async with semaphore:
                return structured(await client.call_tool("create_container", arguments or {}))["container_id"]

        async def add_one() -> None:
            ids.append(await create_one())

        async def listed() -> set[str]:
            return {c["container_id"] for c in structured(await client.call_tool("list_containers", {}))["containers"]}

        raw_name = await self.raw_create()  # podman exec in it at each count: how the host itself slows
        header = (f"{'live':>6} {'made in s':>9} {'exec p50':>9} {'raw exec':>9} {'create p50':>10} {'list p50':>9} "
                  f"{'reap s':>7} {'idle CPU %':>10} {'RSS MB':>7}")
        self.lines.append(header)
        print(header, flush=True)
        first_exec = 0.0
        for count in checkpoints:
            started = time.monotonic()
            async with anyio.create_task_group() as group:
                for _ in range(count - len(ids)):
                    group.start_soon(add_one)
            made_in = time.monotonic() - started
            # Steady state: the pool has followed these creates (it grows after a burst; measured while
            # it starts its sandboxes, an exec waited for the CPU: 42.8 ms at 100 live, 12-16 once it was full).
            await self.pool_settled(self.url)
            await anyio.sleep(2)
            execs = [await self.timed(lambda: client.call_tool(
                "execute_command", {"container_id": ids[0], "command": "echo hi"})) for _ in range(40)]
            first_exec = first_exec or statistics.median(execs)
            raw_execs = [await self.timed(lambda: anyio.run_process(["podman", "exec", raw_name, "echo", "hi"]))
                         for _ in range(10)]
            creates = []
            for _ in range(5):  # each destroyed at once: the count stays
                started = time.perf_counter()
                made = await create_one()
                creates.append((time.perf_counter() - started) * 1000)
                await client.call_tool("destroy_container", {"container_id": made})
                await anyio.sleep(0.5)
            lists = [await self.timed(lambda: client.call_tool("list_containers", {})) for _ in range(10)]
            # Reap: three sandboxes with a lifetime of one second; how long until all three are gone.
            short = [await create_one({"ttl_seconds": 1}) for _ in range(3)]
            expired_at = time.monotonic() + 1
            while set(short) & await listed():
                await anyio.sleep(0.1)
            reap = time.monotonic() - expired_at
            cpu_before, idle_started = cpu_seconds(pid), time.monotonic()
            await anyio.sleep(10)
            idle_cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - idle_started) * 100
            line = (f"{count:>6} {made_in:>9.0f} {statistics.median(execs):>9.1f} {statistics.median(raw_execs):>9.1f} "
                    f"{statistics.median(creates):>10.1f} "
                    f"{statistics.median(lists):>9.1f} {reap:>7.1f} {idle_cpu:>10.1f} {rss_mb(pid):>7.0f}")
            self.lines.append(line)
            print(line, flush=True)
        self.row(f"exec echo with {most} live / with {checkpoints[0]}", statistics.median(execs), first_exec,
                 note=f"server RSS {rss_mb(pid):.0f} MB, peak {rss_mb(pid, 'VmHWM'):.0f} MB")
        started = time.monotonic()
        async with anyio.create_task_group() as group:
            for container_id in ids:
                group.start_soon(lambda cid=container_id: client.call_tool("destroy_container", {"container_id": cid}))
        answered = time.monotonic() - started
        ours = {f"mcp-sandbox-{container_id}" for container_id in ids}
        while ours & set(subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}", "--filter",
                                         f"label=mcp-sandbox.namespace={self.namespace}"],
                                        capture_output=True, text=True).stdout.split()):
            await anyio.sleep(1)
        self.row(f"destroy {len(ids)} at once: answered / all removed", answered, time.monotonic() - started, unit="s")

    async def output(self, client: Client, container_id: str) -> None:
        assert self.server is not None
        before = rss_mb(self.server.pid)
        peak_before = rss_mb(self.server.pid, "VmHWM")
        result = structured(await client.call_tool("execute_command", {
            "container_id": container_id, "command": "yes 0123456789abcdef | head -c 300000000; echo end", "timeout_seconds": 600,
        }))
        while result["status"] == "running":
            await anyio.sleep(1)
            result = structured(await client.call_tool(
                "check_container", {"container_id": container_id, "command_id": result["command_id"]}))["command"]
        after = rss_mb(self.server.pid)
        peak = rss_mb(self.server.pid, "VmHWM")
        assert result["stdout_bytes"] >= 300_000_000, result
        self.row("300 MB of output: server RSS growth", after - before, None, unit="MB",
                 note=f"peak grew {peak - peak_before:.0f} MB; {result['stdout_bytes']:,} bytes printed")
        await client.call_tool("execute_command", {"container_id": container_id, "command": f"rm -f {result['stdout_path']}"})

    async def download(self, client: Client, container_id: str, raw_name: str, size_mb: int = 100) -> None:
        assert self.server is not None
        make = f"head -c {size_mb * 1024 * 1024} /dev/urandom > /tmp/big.bin"
        await client.call_tool("execute_command", {"container_id": container_id, "command": make, "timeout_seconds": 300})
        await anyio.run_process(["podman", "exec", raw_name, "sh", "-c", make])
        link = structured(await client.call_tool("get_file_url", {"container_id": container_id, "path": "/tmp/big.bin"}))
        ours, raw = [], []
        peak_growth = 0.0
        for _ in range(5):
            before = rss_mb(self.server.pid)
            started = time.perf_counter()
            # curl, as a user would download it, so the client's own cost stays small
            fetched = await anyio.run_process(["curl", "-sS", "-o", os.devnull, "-w", "%{size_download}", link["url"]])
            got = int(fetched.stdout)
            elapsed = time.perf_counter() - started
            peak_growth = max(peak_growth, rss_mb(self.server.pid) - before)
            assert got == size_mb * 1024 * 1024
            ours.append(got / elapsed / 1e6)
            started = time.perf_counter()
            with open(os.devnull, "wb") as devnull:
                subprocess.run(["podman", "exec", raw_name, "cat", "/tmp/big.bin"], stdout=devnull, check=True)
            raw.append(got / (time.perf_counter() - started) / 1e6)
        self.row(f"download {size_mb} MB, MB/s (higher is better)", ours, raw, unit="MB/s",
                 note=f"server RSS change during a download {peak_growth:+.0f} MB")


    async def snapshot(self, client: Client, rounds: int = 7, size_mb: int = 100) -> None:
        source = structured(await client.call_tool("create_container", {}))["container_id"]
        await client.call_tool("execute_command", {"container_id": source, "timeout_seconds": 600, "command":
                               f"mkdir /root/data; for i in $(seq {size_mb}); do head -c 1048576 /dev/urandom "
                               "> /root/data/$i; done"})
        upper = snapshot_upper(SandboxSettings.from_env().disk_dir, self.namespace, source)
        ours, raw, sizes = [], [], []
        archive = Path(f"/tmp/bench-snapshot-{self.namespace}.tar")
        try:
            for _ in range(rounds):
                started = time.perf_counter()
                await anyio.run_process(["tar", "--create", "--file", str(archive), "--directory", str(upper), "."])
                raw.append((time.perf_counter() - started) * 1000)
                archive.unlink()
                started = time.perf_counter()
                taken = structured(await client.call_tool("snapshot_container", {"container_id": source}))
                ours.append((time.perf_counter() - started) * 1000)
                sizes.append(taken["size_bytes"])
                await client.call_tool("delete_snapshot", {"snapshot_id": taken["snapshot_id"]})
        finally:
            archive.unlink(missing_ok=True)
        self.row(f"snapshot_container {size_mb} MB / tar of the same", ours, raw,
                 note=f"snapshot {statistics.median(sizes) / 1e6:.0f} MB; the sandbox is frozen meanwhile")

        await client.call_tool("execute_command", {"container_id": source, "command": "rm -rf /root/data; "
                               "head -c 1048576 /dev/urandom > /root/one.bin; mkdir -p /root/src; echo hi > /root/src/a"})
        small = structured(await client.call_tool("snapshot_container", {"container_id": source}))["snapshot_id"]
        forks, fresh, raw_runs, ids = [], [], [], []

        async def create_one(arguments: dict[str, Any]) -> None:
            ids.append(structured(await client.call_tool("create_container", arguments))["container_id"])

        for _ in range(rounds):
            raw_runs.append(await self.timed(self.raw_create))
            forks.append(await self.timed(lambda: create_one({"snapshot_id": small, "network": False})))
            fresh.append(await self.timed(lambda: create_one({"network": False})))
            for container_id in ids:
                await client.call_tool("destroy_container", {"container_id": container_id})
            ids.clear()
        self.row("fork (snapshot 1 MB) / unpooled create", forks, fresh, note="both network=false, not from the pool")
        self.row("fork (snapshot 1 MB) / podman run -d", forks, raw_runs)
        await client.call_tool("delete_snapshot", {"snapshot_id": small})
        await client.call_tool("destroy_container", {"container_id": source})

    async def preview(self, client: Client, requests: int = 200, rounds: int = 5, size_mb: int = 50) -> None:
        app = build_static(ROOT / "tests" / "support" / "apps" / "preview-app.c", ROOT / "build" / "preview-app")
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        await client.call_tool("write_file", {"container_id": container_id, "path": "/root/preview-app", "mode": "755",
                                              "content": base64.b64encode(app).decode(), "encoding": "base64"})
        await client.call_tool("execute_command", {"container_id": container_id,
                                                   "command": "/root/preview-app 8000 >/dev/null 2>&1 & sleep 0.3"})
        url = structured(await client.call_tool("expose_port", {"container_id": container_id, "port": 8000}))["url"]
        size = size_mb * 1024 * 1024

        async def inside(path: str, count: int) -> list[float]:
            ran = structured(await client.call_tool("execute_command", {
                "container_id": container_id, "command": f"/root/preview-app fetch 8000 {path} {count}",
                "timeout_seconds": 300}))
            return [int(line.split()[0]) / 1000 for line in ran["stdout"].splitlines()]

        ours, ours_rates, inside_rates, wget_rates = [], [], [], []
        async with httpx.AsyncClient(timeout=120) as http:
            await http.get(url + "big/1024")  # the connection and the sandbox's network namespace, once
            for _ in range(requests):
                started = time.perf_counter()
                got = await http.get(url + "big/1024")
                ours.append((time.perf_counter() - started) * 1000)
                assert len(got.content) == 1024
            raw = await inside("/big/1024", requests)
            for _ in range(rounds):
                started = time.perf_counter()
                # curl, as a user would download it, so the client's own cost stays small
                fetched = await anyio.run_process(["curl", "-sS", "-o", os.devnull, "-w", "%{size_download}",
                                                   url + f"big/{size}"])
                assert int(fetched.stdout) == size
                ours_rates.append(size / (time.perf_counter() - started) / 1e6)
                inside_rates.append(size / ((await inside(f"/big/{size}", 1))[0] / 1000) / 1e6)
                fetched_inside = structured(await client.call_tool("execute_command", {
                    "container_id": container_id, "command": f"wget -q -O /dev/null http://127.0.0.1:8000/big/{size}"}))
                assert fetched_inside["exit_code"] == 0, fetched_inside
                wget_rates.append(size / (fetched_inside["duration_ms"] / 1000) / 1e6)
        added = statistics.median(ours) - statistics.median(raw)
        self.row("preview 1 KB GET / in-sandbox GET", ours, raw, note=f"added {added:.1f} ms at p50")
        self.row(f"preview {size_mb} MB GET, MB/s / in-sandbox", ours_rates, inside_rates, unit="MB/s",
                 note="curl through the URL vs the C client inside")
        self.row(f"preview {size_mb} MB GET, MB/s / in-sandbox wget", ours_rates, wget_rates, unit="MB/s",
                 note="vs busybox wget inside (a client as an agent would run it)")
        # The two ways into a sandbox, for a new connection: from the host into its network
        # namespace (what runc sandboxes get) and the agent's relay over podman exec (gVisor's).
        backend = PodmanBackend(Podman())
        name = f"mcp-sandbox-{container_id}"
        request = b"GET /big/1024 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

        async def one_connection(relay: bool) -> None:
            stream = await (backend._relay(name, 8000) if relay else backend.connect(name, 8000))
            await stream.send(request)
            got = b""
            try:
                while True:
                    got += await stream.receive()
            except anyio.EndOfStream:
                pass
            await stream.aclose()
            assert got.startswith(b"HTTP/1.1 200 OK") and len(got) > 1024, got[:200]

        direct = [await self.timed(lambda: one_connection(False)) for _ in range(20)]
        relayed = [await self.timed(lambda: one_connection(True)) for _ in range(20)]
        self.row("new connection + 1 KB GET: netns / agent relay", direct, relayed,
                 note="into the sandbox from the host vs podman exec sandbox-agent relay")
        await client.call_tool("destroy_container", {"container_id": container_id})

    async def interactive(self, client: Client, rounds: int = 50) -> None:
        """read_file of 1 MB next to podman exec cat of the same file; a write_stdin round trip (a line
        written to cat, its echo back) next to a podman exec -i write of a line into the same FIFO."""
        container_id = structured(await client.call_tool("create_container", {}))["container_id"]
        name = f"mcp-sandbox-{container_id}"
        await client.call_tool("execute_command", {"container_id": container_id,
                                                   "command": "head -c 1048576 /dev/urandom > /root/one.bin"})
        ours, raw = [], []

        async def read_ours() -> None:
            got = structured(await client.call_tool("read_file", {"container_id": container_id, "path": "/root/one.bin",
                                                                  "encoding": "base64"}))
            assert got["length"] == 1048576 and got["eof"]

        async def read_raw() -> None:
            got = await anyio.run_process(["podman", "exec", name, "cat", "/root/one.bin"])
            assert len(got.stdout) == 1048576

        for _ in range(rounds):
            raw.append(await self.timed(read_raw))
            ours.append(await self.timed(read_ours))
        self.row("read_file 1 MB / podman exec cat", ours, raw, note="base64 through MCP vs raw bytes")
        # Where that time goes: the same read in the server (the agent's channel, no MCP), and the
        # same result (1.4 MB of base64) from a tool that reads nothing: FastMCP's own cost.
        in_server = []
        async with anyio.create_task_group() as tasks:
            channel = AgentChannel(PodmanBackend(Podman()).exec_argv(name, AGENT_PATH, interactive=True))
            await channel.open(tasks.start_soon)
            for _ in range(rounds):
                in_server.append(await self.timed(lambda: channel.read_file("/root/one.bin", 0, 1048576)))
            await channel.close()
        self.row("  the read in the server / podman exec cat", in_server, raw, note="the agent's read request")
        floor = await self.mcp_floor(rounds)
        self.row("  FastMCP alone, same result / podman exec cat", floor, raw,
                 note="a tool returning 1.4 MB of text: the floor")
        await client.call_tool("write_file", {"container_id": container_id, "path": "/root/small.txt", "content": "k" * 1024})
        small, raw_small = [], []

        async def read_small() -> None:
            got = structured(await client.call_tool("read_file", {"container_id": container_id, "path": "/root/small.txt"}))
            assert got["length"] == 1024

        for _ in range(rounds):
            raw_small.append(await self.timed(lambda: anyio.run_process(["podman", "exec", name, "cat", "/root/small.txt"])))
            small.append(await self.timed(read_small))
        self.row("read_file 1 KB / podman exec cat", small, raw_small)
        cat = structured(await client.call_tool("execute_command", {
            "container_id": container_id, "command": "cat", "keep_stdin_open": True}))["command_id"]
        sink = structured(await client.call_tool("execute_command", {  # the raw writes go to a FIFO of its own
            "container_id": container_id, "command": "cat > /dev/null", "keep_stdin_open": True}))["command_id"]
        fifo = f"/run/mcp-sandbox/commands/{sink}/stdin"
        ours, raw = [], []

        async def write_ours() -> None:
            got = structured(await client.call_tool("write_stdin", {"container_id": container_id, "command_id": cat,
                                                                    "data": "ping\n"}))
            assert got["stdout"] == "ping\n", got

        async def write_raw() -> None:
            await anyio.run_process(["podman", "exec", "-i", name, "sh", "-c", f"cat > {fifo}"], input=b"ping\n")

        for _ in range(rounds):
            raw.append(await self.timed(write_raw))
            ours.append(await self.timed(write_ours))
        self.row("write_stdin + echo back / podman exec -i write", ours, raw,
                 note="ours waits for cat's answer; raw only writes")
        await client.call_tool("destroy_container", {"container_id": container_id})

    async def mcp_floor(self, rounds: int) -> list[float]:
        """A FastMCP server of one tool that returns read_file's result for 1 MB without reading
        anything, over the same transport: what MCP itself costs for such a result here."""
        port = free_port()
        script = (
            "import sys\nfrom fastmcp import FastMCP\nmcp = FastMCP('floor')\nBLOB = 'A' * 1398104\n"
            "@mcp.tool\ndef big() -> dict:\n    return {'path': '/root/one.bin', 'content': BLOB, 'encoding': "
            "'base64', 'size_bytes': 1048576, 'offset': 0, 'length': 1048576, 'eof': True}\n"
            f"mcp.run(transport='http', host='127.0.0.1', port={port}, log_level='warning', show_banner=False)\n")
        floor = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(100):
                try:
                    httpx.get(f"http://127.0.0.1:{port}/mcp", timeout=1)
                    break
                except httpx.HTTPError:
                    await anyio.sleep(0.1)
            async with Client(f"http://127.0.0.1:{port}/mcp") as floor_client:
                await floor_client.call_tool("big", {})
                return [await self.timed(lambda: floor_client.call_tool("big", {})) for _ in range(rounds)]
        finally:
            floor.terminate()
            floor.wait(timeout=10)

    async def proxy(self, client: Client, requests: int = 20, rounds: int = 5, size_mb: int = 50) -> None:
        assert self.target is not None
        name, direct_ip = TARGET_NAME, self.target.ip
        pooled, listed = [], []
        ids = []
        for _ in range(rounds * 2):
            await anyio.sleep(1)  # the pool refills
            started = time.perf_counter()
            ids.append(structured(await client.call_tool("create_container", {}))["container_id"])
            pooled.append((time.perf_counter() - started) * 1000)
            await anyio.sleep(1)
            started = time.perf_counter()
            created = structured(await client.call_tool("create_container", {"allow_domains": [name]}))
            listed.append((time.perf_counter() - started) * 1000)
            ids.append(created["container_id"])
        self.row("create with allow_domains / pooled create", listed, pooled)
        direct_id, proxied_id = ids[0], ids[1]
        proxy = created["egress"]["proxy"].removeprefix("http://").split(":")

        def loop(line: str, where: str, n: int) -> str:
            return (f"for i in $(seq {n}); do printf '{line} HTTP/1.0\\r\\nHost: {name}\\r\\n\\r\\n' | nc {where} "
                    "> /dev/null; done")

        async def per_request(container_id: str, command: str) -> float:
            result = structured(await client.call_tool("execute_command", {
                "container_id": container_id, "command": command, "timeout_seconds": 300}))
            assert result["exit_code"] == 0, result
            return result["duration_ms"] / requests

        async def download(container_id: str, command: str) -> float:
            result = structured(await client.call_tool("execute_command", {
                "container_id": container_id, "command": command + " | wc -c", "timeout_seconds": 300}))
            assert int(result["stdout"]) >= size_mb * 1024 * 1024, result
            return size_mb * 1024 * 1024 / (result["duration_ms"] / 1000) / 1e6

        through, direct = [], []
        fetch_through = loop(f"GET http://{name}/1024", f"{proxy[0]} {proxy[1]}", requests)
        fetch_direct = loop("GET /1024", f"{direct_ip} 80", requests)
        for _ in range(rounds):
            through.append(await per_request(proxied_id, fetch_through))
            direct.append(await per_request(direct_id, fetch_direct))
        self.row("1 KB request via proxy / direct", through, direct,
                 note=f"added {statistics.median(through) - statistics.median(direct):+.1f} ms a request")
        big = size_mb * 1024 * 1024
        through, direct = [], []
        for _ in range(rounds):
            through.append(await download(proxied_id, f"printf 'GET http://{name}/{big} HTTP/1.0\\r\\n\\r\\n' | "
                                                       f"nc {proxy[0]} {proxy[1]}"))
            direct.append(await download(direct_id, f"printf 'GET /{big} HTTP/1.0\\r\\n\\r\\n' | nc {direct_ip} 80"))
        self.row(f"{size_mb} MB download via proxy / direct, MB/s", through, direct, unit="MB/s")
        for container_id in ids:
            await client.call_tool("destroy_container", {"container_id": container_id})


def structured(result: Any) -> dict[str, Any]:
    return result.structured_content


def snapshot_upper(disk_base: str, namespace: str, container_id: str) -> Path:
    """A sandbox's writable layer on the host: on its own disk, or in Podman's overlay storage."""
    on_disk = Path(disk_base) / namespace / f"mcp-sandbox-{container_id}" / "fs" / "upper"
    if on_disk.is_dir():
        return on_disk
    found = subprocess.run(["podman", "inspect", "--format", "{{.GraphDriver.Data.UpperDir}}",
                            f"mcp-sandbox-{container_id}"], capture_output=True, text=True).stdout.strip()
    return Path(found)


async def run(rows: list[str], creates: int, execs: int, live: int, image: str, peer: bool) -> Bench:
    bench = Bench(image, Target() if "proxy" in rows else None)
    bench.live = live
    bench.start_server()
    try:
        if peer and set(rows) & PEER_ROWS:
            bench.namespaces.append(f"{bench.namespace}-peer")
            bench.peer = PeerDriver(image, f"{bench.namespace}-peer")
            print(f"peer: llm-sandbox {bench.peer.version} over podman system service (bench/peer.py)")
        print(f"image {image}; namespace {bench.namespace}; times in ms unless marked")
        print(f"{'figure':44} {'unit':6} {'ours p50':>9} {'ours p99':>9} {'raw p50':>9} {'raw p99':>9} {'ratio':>8} "
              f"{'peer p50':>9} {'vs peer':>8}")
        async with Client(bench.url + "/mcp") as client:
            container_id = None
            raw_name = None
            if {"exec", "floor", "output", "download"} & set(rows):
                container_id = structured(await client.call_tool("create_container", {}))["container_id"]
                raw_name = await bench.raw_create()
            if "create" in rows:
                await bench.create(client, creates)
            if "life" in rows:
                await bench.whole_life(client, creates)
            if "burst" in rows:
                await bench.burst()
            if "unpooled" in rows:
                await bench.unpooled(creates)
            if "exec" in rows:
                await bench.exec_sequential(client, container_id, raw_name, execs)
            if "parallel" in rows:
                await bench.parallel()
            if "floor" in rows:
                await bench.floor(client, container_id, execs, creates)
            if "live300" in rows:
                await bench.live300(client, live)
            if "scale" in rows:
                await bench.scale(client, live)
            if "output" in rows:
                await bench.output(client, container_id)
            if "download" in rows:
                await bench.download(client, container_id, raw_name)
            if "proxy" in rows:
                await bench.proxy(client)
            if "snapshot" in rows:
                await bench.snapshot(client)
            if "preview" in rows:
                await bench.preview(client)
            if "interactive" in rows:
                await bench.interactive(client)
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
    anyio.run(run, rows, args.creates, args.execs, args.live, image, not args.no_peer)


if __name__ == "__main__":
    main()
