"""The bench's shared harness: the server under test started in a namespace of its own, raw
podman with the same flags, the table's rows (also kept as records for bench/results/), timing,
percentiles and CPU and memory readings. Each row is a module of bench/rows/."""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
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

from peer_driver import PeerDriver  # noqa: E402
from support.ports import free_port  # noqa: E402  (the rows import it from here)
from support.sweep import image_holders, release_namespace, release_network_namespaces, remove_image_holders  # noqa: E402
from target import Target  # noqa: E402

from mcp_container_sandbox.sandbox import LIMIT_FLAGS, ULIMIT_FLAGS, SandboxSettings  # noqa: E402


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


def _mid_or_none(values: list[float] | float | None) -> float | None:
    if values is None:
        return None
    return round(statistics.median(values) if isinstance(values, list) else values, 3)


def _p99_or_none(values: list[float] | float | None) -> float | None:
    return round(percentile(values, 0.99), 3) if isinstance(values, list) else None


def save_results(bench: Bench, argv: list[str], header: list[str]) -> Path:
    """The run's table as text and its rows as JSON, in bench/results/ (ignored by git), named by
    the run's start; returns the JSON's path."""
    folder = ROOT / "bench" / "results"
    folder.mkdir(exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(bench.started))
    command = "./scripts/bench.sh " + " ".join(argv)
    (folder / f"{stamp}.txt").write_text("\n".join([f"$ {command}", *header, *bench.lines]) + "\n")
    path = folder / f"{stamp}.json"
    path.write_text(json.dumps({"command": command, "started_at": stamp, "image": bench.image,
                                "machine": {"cpus": os.cpu_count(), "kernel": os.uname().release},
                                "rows": bench.records}, indent=1) + "\n")
    return path


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


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
        self.started = time.time()
        self.target = target
        self.namespace = f"bench-{secrets.token_hex(3)}"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.raw_names: list[str] = []
        self.lines: list[str] = []
        self.records: list[dict[str, Any]] = []  # the rows as numbers, for bench/results/
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
            env["SSL_CERT_FILE"] = str(self.target.ca_file)  # the proxy checks the target's certificate
            secrets_file = self.target.folder / "secrets.env"
            secrets_file.write_text(f"BENCH_TOKEN=bench-{secrets.token_hex(8)}\n")
            secrets_file.chmod(0o600)
            env["SANDBOX_SECRETS_FILE"] = str(secrets_file)
        self.server = self.spawn_server(self.namespace, self.port, env)

    def spawn_server(self, namespace: str, port: int, settings: dict[str, str]) -> subprocess.Popen[bytes]:
        """``python server.py`` on ``port`` in ``namespace`` with these settings over the defaults."""
        shaping = ("SANDBOX_POOL_SIZE", "SANDBOX_POOL_MAX", "SANDBOX_POOL_IDLE_SECONDS", "SANDBOX_MAX_CONTAINERS")
        env = {**{k: v for k, v in os.environ.items() if k not in shaping}, "PORT": str(port),
               "SANDBOX_NAMESPACE": namespace, "SANDBOX_IMAGE": self.image, "LOG_LEVEL": "warning", **settings}
        if namespace not in self.namespaces:
            self.namespaces.append(namespace)
        return serve(port, env)

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
        release_network_namespaces()

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
        self.records.append({"figure": label, "unit": unit, "ours_p50": _mid_or_none(ours), "ours_p99": _p99_or_none(ours),
                             "raw_p50": _mid_or_none(raw), "raw_p99": _p99_or_none(raw), "peer_p50": _mid_or_none(peer),
                             "note": note})
        print(line, flush=True)

    @staticmethod
    async def timed(fn: Callable[[], Awaitable[Any]]) -> float:
        started = time.perf_counter()
        await fn()
        return (time.perf_counter() - started) * 1000

    # ----- figures


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



def serve(port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """``python server.py`` with this environment (its PORT ``port``), once it answers /health; its
    output goes to a log named after its namespace in the temporary folder, kept for a run that failed."""
    log = open(Path(tempfile.gettempdir()) / f"mcp-bench-{env.get('SANDBOX_NAMESPACE', port)}.log", "ab")
    server = subprocess.Popen([sys.executable, str(ROOT / "server.py")], env=env, cwd=ROOT, stdout=log, stderr=log)
    log.close()
    for _ in range(300):
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
            return server
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError("server did not start")


async def four_at_a_time(count: int, make: Callable[[int], Awaitable[Any]]) -> None:
    """``make(0)`` ... ``make(count - 1)``, four running at a time (creates and destroys of many sandboxes)."""
    semaphore = anyio.Semaphore(4)

    async def one(n: int) -> None:
        async with semaphore:
            await make(n)

    async with anyio.create_task_group() as group:
        for n in range(count):
            group.start_soon(one, n)


def structured(result: Any) -> dict[str, Any]:
    return result.structured_content
