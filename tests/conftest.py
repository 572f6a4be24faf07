"""Fixtures: real Podman, the server in memory and as real processes, and a sweep of every
sandbox the tests made (each test run has its own namespace label)."""

from __future__ import annotations

import atexit
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_IMAGE = "docker.io/library/alpine:3"
OFFLINE_IMAGE = "localhost/mcp-sandbox-busybox:latest"
RUN_ID = f"test-{os.getpid()}-{secrets.token_hex(3)}"
NAMESPACES: set[str] = {RUN_ID}


def podman(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check, timeout=timeout)


def bridge_of(network: str) -> str:
    """The host's interface of a Podman bridge network (e.g. podman1)."""
    return json.loads(podman("network", "inspect", network).stdout)[0]["network_interface"]


def sandbox_image() -> str:
    """The sandbox image of this run, set in the environment of every server the tests start. Podman
    is asked (and an offline image built) only when the first test that needs a sandbox asks for it,
    and only when SANDBOX_IMAGE is not set (scripts/test.sh sets it): tests/unit never asks."""
    if not os.environ.get("SANDBOX_IMAGE"):
        if shutil.which("podman") is None:
            pytest.exit("Podman is not installed: run the tests with scripts/test.sh, which installs it.", returncode=1)
        if podman("image", "exists", DEFAULT_IMAGE, check=False).returncode == 0:
            os.environ["SANDBOX_IMAGE"] = DEFAULT_IMAGE
        else:
            if podman("image", "exists", OFFLINE_IMAGE, check=False).returncode != 0:
                subprocess.run(["sh", str(ROOT / "scripts" / "make-offline-image.sh"), OFFLINE_IMAGE], check=True)
            os.environ["SANDBOX_IMAGE"] = OFFLINE_IMAGE
    return os.environ["SANDBOX_IMAGE"]


# The in-memory server, and every server process a test starts, use this run's namespace.
os.environ["SANDBOX_NAMESPACE"] = RUN_ID
os.environ.setdefault("SANDBOX_SYNC_WAIT_SECONDS", "3")

from fastmcp import Client  # noqa: E402
from support.ports import free_port  # noqa: E402  (the tests import it from here)
from support.sweep import image_holders, release_namespace, release_network_namespaces, remove_image_holders  # noqa: E402

from mcp_container_sandbox.app import App, create_app  # noqa: E402
from mcp_container_sandbox.settings import Settings  # noqa: E402

_APP: list[App] = []


def in_memory_app() -> App:
    """The server the in-memory client talks to (started by its lifespan), made on first use."""
    if not _APP:
        sandbox_image()
        _APP.append(create_app(Settings.from_env()))
    return _APP[0]


def __getattr__(name: str) -> App:  # `from conftest import APP` makes the server then (PEP 562)
    if name == "APP":
        return in_memory_app()
    raise AttributeError(name)

UNIT_TESTS = Path(__file__).resolve().parent / "unit"


def sandbox_names(namespace: str = RUN_ID) -> list[str]:
    out = podman("ps", "-a", "--format", "{{.Names}}", "--filter", f"label=mcp-sandbox.namespace={namespace}").stdout
    return out.split()


def sandboxes_left(namespace: str = RUN_ID, seconds: float = 30) -> list[str]:
    """The namespace's containers once every removal under way has had up to ``seconds`` to
    finish (destroy_container answers at once and removes in the background)."""
    deadline = time.monotonic() + seconds
    while (names := sandbox_names(namespace)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return names


async def wait_until(predicate, seconds: float = 30) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await anyio.sleep(0.2)


def inspect(name: str) -> dict[str, Any]:
    return json.loads(podman("inspect", "--type", "container", name).stdout)[0]


@pytest.fixture(scope="session", autouse=True)
def sweep_sandboxes(request: pytest.FixtureRequest) -> Iterator[None]:
    """Remove every sandbox this test run made, whatever the tests did. A run of tests/unit
    alone never asks Podman anything."""
    if all(UNIT_TESTS in Path(str(item.path)).parents for item in request.session.items):
        yield
        return
    if shutil.which("podman") is None:
        pytest.exit("Podman is not installed: run the tests with scripts/test.sh, which installs it.", returncode=1)
    holders_before = image_holders()
    # Once this process (and the server in memory, whose pool refills while the sweep below removes
    # its sandboxes) has ended: the namespaces of the containers removed last.
    atexit.register(release_network_namespaces, 0)
    yield
    for namespace in sorted(NAMESPACES):
        # A removal a stopped server left under way (a fork-bombed gVisor sandbox takes a while to
        # go) holds the container's lock: the first rm can fail, so ask again for a while.
        for attempt in range(6):
            names = sandbox_names(namespace)
            if not names:
                break
            podman("rm", "-f", "-v", "-t", "0", *names, check=False)
            if attempt:
                time.sleep(5)
        release_disks(namespace)
        # What the servers of this run kept on the host: snapshots, allow-lists.
        shutil.rmtree(Path(in_memory_app().sandboxes.settings.state_dir) / namespace, ignore_errors=True)
    remove_image_holders(holders_before)
    release_network_namespaces()


def disk_dir(namespace: str) -> Path:
    """Where a namespace's sandbox disks live (sandbox/disks.py)."""
    return Path(in_memory_app().sandboxes.settings.disk_dir) / namespace


def release_disks(namespace: str) -> None:
    release_namespace(in_memory_app().sandboxes.settings.disk_dir, namespace)


# Skips CI accepts (`.ci/run` sets SANDBOX_TESTS_NO_SKIPS=1): a test id's start -> why it may skip there.
# Any other skip fails the run, so a check that could not run is never counted as passed.
EXPECTED_SKIPS: dict[str, str] = {}
SKIPPED: list[tuple[str, str]] = []


def _note_skip(report: pytest.CollectReport | pytest.TestReport) -> None:
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        SKIPPED.append((report.nodeid, reason))


pytest_runtest_logreport = _note_skip
pytest_collectreport = _note_skip


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    unexpected = [(nodeid, reason) for nodeid, reason in SKIPPED
                  if not any(nodeid.startswith(prefix) for prefix in EXPECTED_SKIPS)]
    if os.environ.get("SANDBOX_TESTS_NO_SKIPS") == "1" and unexpected:
        for nodeid, reason in unexpected:
            print(f"\nCI: {nodeid} skipped ({reason}); a skip here is a failure (conftest.EXPECTED_SKIPS)", file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    """FastMCP's client talking to the server in memory."""
    async with Client(in_memory_app().mcp) as mcp_client:
        yield mcp_client


@pytest.fixture
async def sandbox(client: Client) -> AsyncIterator[str]:
    """A fresh sandbox, destroyed after the test."""
    result = await client.call_tool("create_container", {})
    container_id = result.structured_content["container_id"]
    yield container_id
    await client.call_tool("destroy_container", {"container_id": container_id}, raise_on_error=False)


class ServerProcess:
    """``python server.py`` (or another command) as a real process on a free port."""

    def __init__(
        self, env: dict[str, str], argv: list[str] | None = None, port: int | None = None, cwd: Path | None = None
    ) -> None:
        sandbox_image()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "PORT": str(self.port), "HOST": "127.0.0.1", **env}
        NAMESPACES.add(self.env["SANDBOX_NAMESPACE"])
        self.argv = argv or [sys.executable, str(ROOT / "server.py")]
        self.cwd = cwd or ROOT
        self.log_path = ROOT / ".pytest_cache" / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, wait_for: str = "/") -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.log = open(self.log_path, "ab")
        self.process = subprocess.Popen(self.argv, env=self.env, cwd=self.cwd, stdout=self.log, stderr=self.log,
                                        stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log_text()[-3000:]}")
            try:
                httpx.get(self.url + wait_for, timeout=2)
                return self
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError(f"server did not answer within 60 s: {self.log_text()[-3000:]}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
            raise AssertionError(f"server did not stop within {timeout} s after signal {sig}")
        finally:
            self.log.close()
        return code


@pytest.fixture
def start_server() -> Iterator[Any]:
    """Start real server processes; each is stopped after the test."""
    started: list[ServerProcess] = []

    def start(env: dict[str, str] | None = None, **kwargs: Any) -> ServerProcess:
        env = dict(env or {})
        env.setdefault("SANDBOX_NAMESPACE", f"{RUN_ID}-{len(NAMESPACES)}")
        # Pooled sandboxes would blur the counts that prove nothing leaks; pool tests ask for one.
        env.setdefault("SANDBOX_POOL_SIZE", "0")
        # One egress proxy per port on the sandbox bridge: the in-memory server holds the default one.
        env.setdefault("SANDBOX_PROXY_PORT", str(free_port()))
        proc = ServerProcess(env, **kwargs)
        started.append(proc)
        return proc.start()

    yield start
    for proc in started:
        if proc.process is not None and proc.process.poll() is None:
            proc.stop(signal.SIGKILL)


@pytest.fixture
def http_server(start_server: Any) -> ServerProcess:
    return start_server()


def structured(result: Any) -> dict[str, Any]:
    """The structured content of a tool result from FastMCP's client."""
    return result.structured_content


async def wait_for_command(client: Client, container_id: str, command_id: str, seconds: float = 30) -> dict[str, Any]:
    """Follow an async command with check_container until it is no longer running."""
    import anyio

    deadline = time.monotonic() + seconds
    while True:
        result = await client.call_tool("check_container", {"container_id": container_id, "command_id": command_id})
        command = structured(result)["command"]
        if command["status"] != "running" or time.monotonic() > deadline:
            return command
        await anyio.sleep(0.5)
