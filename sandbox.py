"""Sandboxes as Podman containers: the only module that knows Podman.

Every sandbox is a container started with the exact limits of the product contract and
labelled so that a restarted server can find it again. What a restart must find lives
where a restart finds it: lifetimes in Podman labels; commands, their output and exit
codes, and file links inside the sandbox (see records.py). The server's memory only
caches what it can read back.
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import math
import mimetypes
import os
import posixpath
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from records import (
    CLAIM_PATH,
    COMMAND_ID_RE,
    DATA_DIR,
    INSTALL_HELPERS,
    LIB_MISSING,
    RECORDS_UNWRITABLE,
    LIB_PATH,
    OUTPUT_DIR,
    BOOTSTRAP,
    STATE_DIR,
    STATE_TMPFS,
    CommandState,
    CommandSummary,
    last_line,
    helpers_digest,
    helpers_tar,
    parse_command_list,
    parse_report,
)
from disks import DiskUnavailable, SandboxDisks
from channel import (
    AGENT_PATH_IN_SANDBOX,
    AgentChannel,
    ChannelClosed,
    ChannelRequestFailed,
    find_agent_binary,
    kill_process,
)

logger = logging.getLogger("mcp_sandbox.sandbox")

# The exact limits of the product contract (SPEC section 5).
LIMIT_FLAGS: tuple[str, ...] = (
    "--memory=256m",
    "--cpus=0.5",
    "--pids-limit=100",
    "--cap-drop=ALL",
    "--security-opt=no-new-privileges",
)
LIMITS: dict[str, Any] = {
    "memory": "256m",
    "cpus": 0.5,
    "pids": 100,
    "capabilities": "none (--cap-drop=ALL)",
    "no_new_privileges": True,
}
# Bounded ulimits. Podman's defaults (about a million) cannot be set by a process
# without CAP_SYS_RESOURCE; nproc counts per user across the host, so it stays high and
# --pids-limit does the real limiting.
ULIMIT_FLAGS: tuple[str, ...] = ("--ulimit", "nofile=1024:1024", "--ulimit", "nproc=32768:32768")
# Beyond the exact flags: swap may not double the memory limit, and the main process (which
# prints nothing) keeps no log that could grow on the host.
HARDENING_FLAGS: tuple[str, ...] = ("--memory-swap=256m", "--log-driver=none")
# What Podman prints when it starts a container without the limits it was given.
LIMITS_IGNORED_WARNING = "resource limits are not supported and ignored"

LABEL_MANAGED = "mcp-sandbox.managed"
LABEL_NAMESPACE = "mcp-sandbox.namespace"
LABEL_CREATED = "mcp-sandbox.created-at"
LABEL_EXPIRES = "mcp-sandbox.expires-at"
LABEL_TENANT = "mcp-sandbox.tenant"
LABEL_IMAGE = "mcp-sandbox.image"  # a sandbox on its own disk runs from a rootfs: Podman knows no image
LABEL_POOLED = "mcp-sandbox.pooled"  # started ahead of demand; its lifetime is in CLAIM_PATH once handed out
# What shaped the sandbox (image id, runtime, network, limits, disk, helpers): a pooled sandbox
# is handed out only while this matches the server's configuration (see made_under).
LABEL_MADE_UNDER = "mcp-sandbox.made-under"
NAME_PREFIX = "mcp-sandbox-"
LOCAL_TENANT = "local"  # everyone, when the server has no tokens
TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

DEFAULT_IMAGE = "docker.io/library/alpine:3"

CONTAINER_ID_RE = re.compile(r"^[0-9a-f]{32}$")
FILE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")



# --------------------------------------------------------------------------- settings


def _env_int(environ: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return value


def _disk_limit(environ: Mapping[str, str]) -> int:
    value = _env_int(environ, "SANDBOX_DISK_LIMIT_BYTES", 2 * 1024 * 1024 * 1024, minimum=0)
    if 0 < value < 16 * 1024 * 1024:
        raise ValueError(f"SANDBOX_DISK_LIMIT_BYTES must be 0 (no disk of its own) or at least 16777216, got {value}")
    return value


def _env_float(environ: Mapping[str, str], name: str, default: float, minimum: float = 0) -> float:
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name} must be a number, got {raw!r}") from None
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name} must be a number of at least {minimum}, got {raw!r}")
    return value


@dataclass(frozen=True)
class SandboxSettings:
    """How sandboxes are made and kept; read from the environment by ``from_env``."""

    image: str = DEFAULT_IMAGE
    allowed_images: tuple[str, ...] = ()
    ttl_seconds: int = 7200
    sync_wait_seconds: float = 3.0
    max_containers: int = 20
    max_per_tenant: int = 0  # 0: the same as max_containers
    output_limit_bytes: int = 64 * 1024
    output_file_max_bytes: int = 64 * 1024 * 1024
    max_command_bytes: int = 1024 * 1024
    file_max_bytes: int = 1024 * 1024 * 1024
    write_max_bytes: int = 4 * 1024 * 1024
    namespace: str = "default"
    podman: str = "podman"
    runtime: str = ""
    network: str = ""
    reap_interval_seconds: float = 1.0
    agent_path: str = ""
    max_channels: int = 32
    channel_idle_seconds: float = 120.0
    pool_size: int = 2
    disk_limit_bytes: int = 2 * 1024 * 1024 * 1024  # 0: no disk of its own per sandbox
    disk_dir: str = "/var/lib/mcp-sandbox/disks"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> SandboxSettings:
        env = os.environ if environ is None else environ
        image = env.get("SANDBOX_IMAGE", "").strip() or DEFAULT_IMAGE
        allowed = tuple(i.strip() for i in env.get("SANDBOX_ALLOWED_IMAGES", "").split(",") if i.strip())
        namespace = env.get("SANDBOX_NAMESPACE", "").strip() or "default"
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,63}", namespace):
            raise ValueError(f"SANDBOX_NAMESPACE may hold letters, digits, '.', '_' and '-' only, got {namespace!r}")
        output_limit = _env_int(env, "SANDBOX_OUTPUT_LIMIT_BYTES", 64 * 1024, minimum=1024)
        return cls(
            image=image,
            allowed_images=allowed,
            ttl_seconds=_env_int(env, "SANDBOX_TTL_SECONDS", 7200, minimum=1),
            sync_wait_seconds=_env_float(env, "SANDBOX_SYNC_WAIT_SECONDS", 3.0),
            max_containers=_env_int(env, "SANDBOX_MAX_CONTAINERS", 20, minimum=1),
            max_per_tenant=_env_int(env, "SANDBOX_MAX_PER_TENANT", 0, minimum=0),
            output_limit_bytes=output_limit,
            # A stream file keeps its first and last half of this; never less than one result's worth.
            output_file_max_bytes=max(
                output_limit, _env_int(env, "SANDBOX_OUTPUT_FILE_MAX_BYTES", 64 * 1024 * 1024, minimum=65536)
            ),
            max_command_bytes=_env_int(env, "SANDBOX_MAX_COMMAND_BYTES", 1024 * 1024, minimum=1024),
            file_max_bytes=_env_int(env, "SANDBOX_FILE_MAX_BYTES", 1024 * 1024 * 1024, minimum=1),
            write_max_bytes=_env_int(env, "SANDBOX_WRITE_MAX_BYTES", 4 * 1024 * 1024, minimum=1),
            namespace=namespace,
            podman=env.get("PODMAN", "").strip() or "podman",
            runtime=env.get("SANDBOX_RUNTIME", "").strip(),
            network=env.get("SANDBOX_NETWORK", "").strip(),
            agent_path=env.get("SANDBOX_AGENT", "").strip(),
            max_channels=_env_int(env, "SANDBOX_MAX_CHANNELS", 32, minimum=1),
            channel_idle_seconds=_env_float(env, "SANDBOX_CHANNEL_IDLE_SECONDS", 120.0, minimum=1),
            pool_size=_env_int(env, "SANDBOX_POOL_SIZE", 2, minimum=0),
            disk_limit_bytes=_disk_limit(env),
            disk_dir=env.get("SANDBOX_DISK_DIR", "").strip() or "/var/lib/mcp-sandbox/disks",
        )

    @property
    def images(self) -> tuple[str, ...]:
        """Images a client may ask for: the default one first."""
        return (self.image, *(i for i in self.allowed_images if i != self.image))


# --------------------------------------------------------------------------- errors


class SandboxError(Exception):
    """A failure the client must hear about; the message says what to do next."""


class PodmanError(SandboxError):
    """``podman`` itself failed: carries its argv, exit code and stderr."""

    def __init__(self, argv: Sequence[str], exit_code: int | None, stderr: str, hint: str = "") -> None:
        self.argv = list(argv)
        self.exit_code = exit_code
        self.stderr = stderr.strip()
        what = f"'podman {argv[1] if len(argv) > 1 else ''}' failed"
        if exit_code is not None:
            what += f" with exit code {exit_code}"
        detail = self.stderr.splitlines()[-1] if self.stderr else "no error output"
        super().__init__(f"{what}: {detail[:500]}." + (f" {hint}" if hint else ""))


class PodmanUnavailable(PodmanError):
    """The ``podman`` program is missing or does not answer."""


class SandboxNotFound(SandboxError):
    def __init__(self, container_id: str, why: str = "") -> None:
        shown = container_id if len(container_id) <= 80 else container_id[:77] + "..."
        super().__init__(
            f"No sandbox with container_id {shown!r}{why or ''}. Sandboxes are destroyed "
            "by destroy_container or when their lifetime ends; call create_container for a new one."
        )


class SandboxStopped(SandboxError):
    """The sandbox's container exists but has stopped: nothing runs in it any more."""


class SandboxLimitReached(SandboxError):
    pass


class MachineryFailed(SandboxError):
    """The server's own files or processes in a sandbox failed: the user's command did not run."""


# The agent's reason when fork() fails with EAGAIN: the sandbox is at its process limit.
FORK_AT_PROCESS_LIMIT = f"fork-{errno.EAGAIN}"
FORK_RETRY_SECONDS = 5.0


def machinery_failure(reason: str) -> SandboxError:
    """The tool error for a command the server could not start, from the agent's or library's reason."""
    if reason == FORK_AT_PROCESS_LIMIT:
        return SandboxError(
            "The sandbox is at its limit of 100 processes, so the command could not start (it did not run). "
            "Wait for some of its processes to end, or end them (for example kill the background jobs you "
            "started), then run the command again; if nothing helps, destroy the sandbox and create a new one."
        )
    parts = reason.split(":")
    if parts[0] == "output-unwritable" and len(parts) == 3:
        errno_text = parts[2].removeprefix("errno-")
        why = os.strerror(int(errno_text)) if errno_text.isdigit() else parts[2]
        cause = f"could not create the command's output files in {parts[1]} inside the sandbox ({why})"
    else:
        cause = f"could not start the command in the sandbox ({reason[:300] or 'no reason given'})"
    return MachineryFailed(
        f"The server {cause}, so the command did not run. This is the server's machinery failing, not your "
        f"command. If a command changed the permissions of {DATA_DIR} or {STATE_DIR}, restore them "
        f"(chmod -R u+rwX {DATA_DIR}); otherwise destroy this sandbox with destroy_container and create a new one."
    )


class LimitsNotEnforced(SandboxError):
    """Podman on this host would start sandboxes without their memory, CPU or process limits."""


class ImageNotAllowed(SandboxError):
    pass


class InvalidCommand(SandboxError):
    pass


class CommandNotFound(SandboxError):
    pass


class FileNotShareable(SandboxError):
    pass


class FileLinkNotFound(SandboxError):
    pass


# --------------------------------------------------------------------------- what the host can give


MEMORY_LIMIT_BYTES = 256 * 1024 * 1024  # --memory=256m
# A sandbox's own memory limit as its cgroup shows it: cgroup v1, then v2.
CGROUP_MEMORY_LIMIT_FILES = ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory.max")
LIMITS_WAY_OUT = (
    " Sandboxes without their memory, CPU and process limits are refused. Run the server as root "
    "(rootful Podman), or use a host with cgroup v2 whose memory, cpu and pids controllers are "
    "delegated to this user (systemd: Delegate=yes), then restart the server."
)


def why_limits_fail(info: Mapping[str, Any]) -> str:
    """Why Podman, by its own ``podman info``, cannot give sandboxes their limits; "" if it can."""
    host = info.get("host") or {}
    rootless = bool((host.get("security") or {}).get("rootless"))
    version = host.get("cgroupVersion") or ""
    controllers = set(host.get("cgroupControllers") or [])
    if rootless and version == "v1":
        return ("Podman runs rootless on a cgroup v1 host, where it ignores every resource limit "
                "(\"Resource limits are not supported and ignored on cgroups V1 rootless systems\")." + LIMITS_WAY_OUT)
    missing = sorted({"memory", "pids", "cpu"} - controllers)
    if rootless and version == "v2" and missing:
        return (f"Podman runs rootless and the cgroup controllers {', '.join(missing)} are not delegated "
                "to this user, so those limits would be ignored." + LIMITS_WAY_OUT)
    return ""


def changed_settings(recorded: str, now: Mapping[str, str]) -> str:
    """What differs between the configuration a sandbox recorded (JSON) and the one in force;
    "" when nothing does."""
    try:
        then = json.loads(recorded) if recorded else None
    except ValueError:
        then = None
    if not isinstance(then, dict):
        return "it carries no record of the configuration it was made under"
    return "; ".join(
        f"{key}: {str(then.get(key))[:80]!r} -> {str(value)[:80]!r}"
        for key, value in now.items() if then.get(key) != value
    )


# --------------------------------------------------------------------------- records


def utc_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Sandbox:
    container_id: str
    image: str
    created_at: float
    expires_at: float
    destroying: bool = False
    tenant: str = LOCAL_TENANT
    # Set when the server starts destroying it: what a command that was running is told.
    gone_why: str = ""

    @property
    def name(self) -> str:
        return NAME_PREFIX + self.container_id


@dataclass(frozen=True)
class FileLink:
    file_id: str
    container_id: str
    path: str
    size_bytes: int
    content_type: str


# How long, and for how many sandboxes, the server remembers the commands that were running
# when a sandbox went away, to answer check_container about them with reason sandbox_gone.
TOMBSTONE_SECONDS = 3600
MAX_TOMBSTONES = 200
# Per sandbox, the running commands remembered and how much of each stream's end (memory stays small).
MAX_SEEN_RUNNING = 32
SEEN_OUTPUT_CHARS = 2048
GONE_DESTROYED = "was destroyed by destroy_container"
GONE_EXPIRED = "reached the end of its lifetime and was destroyed"
GONE_REMOVED = "was removed outside this server (Podman no longer has its container)"
GONE_STOPPED = "stopped (Podman reports its container as exited: it was stopped or killed outside this server)"


@dataclass
class _Tombstone:
    """A sandbox that went away, and the commands the server last saw running in it."""

    tenant: str
    why: str
    at: float
    running: dict[str, CommandState]


@dataclass
class _RunningCommand:
    """What the server knows of a command while its ``podman exec`` is still open."""

    done: anyio.Event = field(default_factory=anyio.Event)
    state: CommandState | None = None
    error: SandboxError | None = None


# --------------------------------------------------------------------------- podman helper


@dataclass(frozen=True)
class PodmanResult:
    argv: list[str]
    exit_code: int
    stdout: bytes
    stderr: str


async def _read_capped(stream: anyio.abc.ByteReceiveStream | None, limit: int) -> tuple[bytes, int]:
    """Read a stream to its end, keeping at most ``limit`` bytes; returns them and the total seen."""
    if stream is None:
        return b"", 0
    kept = bytearray()
    total = 0
    async for chunk in stream:
        total += len(chunk)
        if len(kept) < limit:
            kept += chunk[: limit - len(kept)]
    return bytes(kept), total


_MISSING_CONTAINER = ("no such container", "no container with name or id", "does not exist in database")
_NOT_RUNNING = ("is not running", "container state improper", "can only create exec sessions on running containers")


# Where system tools live. Desktop clients start stdio servers with a short PATH
# (/usr/local/bin:/usr/bin:/bin): Podman's netavark then cannot run iptables from /usr/sbin, nor
# the server find mkfs.ext4. Every subprocess of the server gets these folders after the caller's.
SYSTEM_PATH_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def system_env(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the server's subprocesses: the caller's, with the system folders on PATH."""
    env = dict(os.environ if environ is None else environ)
    have = [folder for folder in env.get("PATH", "").split(":") if folder]
    env["PATH"] = ":".join(have + [folder for folder in SYSTEM_PATH_DIRS if folder not in have])
    return env


class Podman:
    """Runs the ``podman`` CLI with argv lists, never through a shell.

    Its processes run in a working directory of the server's own (``workdir``): conmon, which
    Podman starts beside each ``podman exec``, writes a file named ``oom`` into its working
    directory whenever the sandbox's memory limit kills something, and that must not land in
    whatever folder the server was started from.
    """

    def __init__(self, program: str = "podman", runtime: str = "", workdir: str | None = None) -> None:
        self.program = program
        self.runtime = runtime
        self.env = system_env()
        self.workdir = workdir

    @property
    def spawn_options(self) -> dict[str, Any]:
        """Keyword arguments for anyio.open_process, for every podman process the server starts."""
        if self.workdir is None or not os.path.isdir(self.workdir):
            self.workdir = tempfile.mkdtemp(prefix="mcp-sandbox-podman-")
        return {"env": self.env, "cwd": self.workdir}

    def close(self) -> None:
        workdir, self.workdir = self.workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)

    def argv(self, *args: str) -> list[str]:
        base = [self.program]
        if self.runtime:
            base += ["--runtime", self.runtime]
        return [*base, *args]

    async def run(
        self,
        *args: str,
        stdin: bytes | None = None,
        stdout_limit: int = 16 * 1024 * 1024,
        timeout: float = 120,
        check: bool = True,
    ) -> PodmanResult:
        argv = self.argv(*args)
        logger.debug("run %s", shlex.join(argv))
        try:
            with anyio.fail_after(timeout):
                async with await anyio.open_process(
                    argv,
                    stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    **self.spawn_options,
                ) as process:
                    if stdin is not None and process.stdin is not None:
                        try:
                            await process.stdin.send(stdin)
                        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                            pass
                        await process.stdin.aclose()
                    results: dict[str, tuple[bytes, int]] = {}

                    async def collect(key: str, stream: anyio.abc.ByteReceiveStream | None, limit: int) -> None:
                        results[key] = await _read_capped(stream, limit)

                    async with anyio.create_task_group() as tg:
                        tg.start_soon(collect, "out", process.stdout, stdout_limit)
                        tg.start_soon(collect, "err", process.stderr, 64 * 1024)
                    exit_code = await process.wait()
        except FileNotFoundError:
            raise PodmanUnavailable(
                argv, None, f"the program {self.program!r} was not found",
                "Install Podman (scripts/setup.sh does) or set PODMAN to its path.",
            ) from None
        except TimeoutError:
            raise PodmanError(argv, None, f"no answer within {timeout:g} s", "Podman may be overloaded; try again.") from None
        stderr = results["err"][0].decode("utf-8", errors="replace")
        result = PodmanResult(argv, exit_code, results["out"][0], stderr)
        if check and exit_code != 0:
            raise PodmanError(argv, exit_code, stderr)
        return result


def _is_missing_container(stderr: str) -> bool:
    lowered = stderr.lower()
    return any(marker in lowered for marker in _MISSING_CONTAINER)


def _is_not_running(stderr: str) -> bool:
    lowered = stderr.lower()
    return any(marker in lowered for marker in _NOT_RUNNING)


# --------------------------------------------------------------------------- background tasks


class BackgroundTasks:
    """A task group living in a task of its own.

    FastMCP may enter a lifespan in one task and leave it in another, where an anyio task
    group opened in the lifespan cannot be closed; this one is stopped by ``stop``.
    """

    def __init__(self) -> None:
        self._send: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        send, receive = anyio.create_memory_object_stream[tuple[Any, tuple[Any, ...]]](math.inf)
        self._send = send
        started = anyio.Event()
        self._task = asyncio.get_running_loop().create_task(self._run(receive, started))
        await started.wait()

    async def _run(self, receive: Any, started: anyio.Event) -> None:
        async with anyio.create_task_group() as task_group:
            started.set()
            async with receive:
                async for function, args in receive:
                    task_group.start_soon(function, *args)

    def start_soon(self, function: Any, *args: Any) -> None:
        if self._send is None:
            raise SandboxError("The server's background tasks are not running; this is a server bug.")
        self._send.send_nowait((function, args))

    async def stop(self) -> None:
        task, self._task, self._send = self._task, None, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)


# --------------------------------------------------------------------------- the manager


class SandboxManager:
    """Creates, tracks, reaps and destroys sandboxes; runs commands; serves files."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.podman = Podman(settings.podman, settings.runtime)
        self.disks = SandboxDisks(
            settings.disk_dir, settings.namespace, settings.disk_limit_bytes, self.podman.run, self.podman.env
        )
        # Why sandboxes cannot be given their limits here ("" while they can): decided at start
        # from Podman's own account, and again from the first sandbox's cgroup.
        self.limits_problem = ""
        self._limits_verified = False
        self._made_under: dict[str, str] | None = None
        self._sandboxes: dict[str, Sandbox] = {}
        self._links: dict[str, FileLink] = {}
        self._running: dict[tuple[str, str], _RunningCommand] = {}
        # Per sandbox, the commands last seen running (with their output so far); kept in a
        # tombstone when the sandbox goes, so their end can be told as reason sandbox_gone.
        self._seen_running: dict[str, dict[str, CommandState]] = {}
        self._tombstones: OrderedDict[str, _Tombstone] = OrderedDict()
        self._creating = 0
        self._creating_by_tenant: dict[str, int] = {}
        self._lock = anyio.Lock()
        self._background = BackgroundTasks()
        self._agent = find_agent_binary(settings.agent_path)
        if self._agent is None:
            logger.warning(
                "no sandbox agent binary (build it with scripts/setup.sh or set SANDBOX_AGENT); "
                "every command will cost a podman exec"
            )
        self._helpers = helpers_tar(self._agent)
        self._helpers_digest = helpers_digest(self._agent)
        self._channels: dict[str, AgentChannel] = {}
        self._channel_locks: dict[str, anyio.Lock] = {}
        self._pool: list[Sandbox] = []
        self._pool_filling = 0
        self._pool_wanted = anyio.Event()

    # ----- lifecycle

    async def start(self) -> None:
        """Adopt this namespace's sandboxes, destroy expired ones, start the reaper."""
        await self._background.start()
        self._pool = []  # rebuilt from Podman by adopt()
        await self.disks.probe()
        if self.disks.enabled:
            logger.info("each sandbox gets a disk of its own: %d bytes", self.disks.limit_bytes)
        else:
            logger.warning("sandbox disk use is NOT bounded (%s): a sandbox can fill the disk under Podman's "
                           "storage", self.disks.why_not)
        await self._check_limits()
        try:
            await self.adopt()
        except SandboxError as exc:
            logger.warning("could not adopt existing sandboxes: %s", exc)
        self._background.start_soon(self._reap_forever)
        if self.settings.pool_size > 0:
            self._pool_wanted = anyio.Event()
            self._background.start_soon(self._fill_pool_forever)

    async def stop(self) -> None:
        """Stop following commands; sandboxes and their commands go on for the next start."""
        for container_id in list(self._channels):
            await self._close_channel(container_id)
        await self._background.stop()
        self.podman.close()

    async def adopt(self) -> list[str]:
        result = await self.podman.run(
            "ps", "-a", "--format", "json",
            "--filter", f"label={LABEL_MANAGED}=true",
            "--filter", f"label={LABEL_NAMESPACE}={self.settings.namespace}",
        )
        entries = json.loads(result.stdout or b"[]") or []
        adopted: list[str] = []
        now = time.time()
        for entry in entries:
            names = entry.get("Names") or []
            name = names[0] if names else ""
            labels = entry.get("Labels") or {}
            container_id = name[len(NAME_PREFIX):] if name.startswith(NAME_PREFIX) else ""
            try:
                created = float(labels.get(LABEL_CREATED, "nan"))
                expires = float(labels.get(LABEL_EXPIRES, "nan"))
            except ValueError:
                created = expires = float("nan")
            if not CONTAINER_ID_RE.match(container_id) or not math.isfinite(expires) or expires <= now:
                logger.info("destroying expired or unreadable sandbox %s", name or entry.get("Id"))
                await self._remove_container(name or entry.get("Id", ""))
                continue
            tenant = labels.get(LABEL_TENANT, LOCAL_TENANT)
            sandbox = Sandbox(container_id, labels.get(LABEL_IMAGE) or entry.get("Image", ""), created, expires,
                              tenant=tenant if TENANT_RE.match(tenant) else LOCAL_TENANT)
            pooled = labels.get(LABEL_POOLED) == "true"
            if entry.get("State") != "running":
                try:
                    if self.disks.exists(sandbox.name):  # mounts do not survive a reboot of the host
                        await self.disks.remount(sandbox.name, sandbox.image)
                    await self.podman.run("start", sandbox.name, timeout=60)
                except (PodmanError, DiskUnavailable) as exc:
                    logger.warning("sandbox %s could not be restarted, destroying it: %s", name, exc)
                    await self._remove_container(sandbox.name)
                    continue
            if pooled and not await self._adopt_pooled(sandbox, labels.get(LABEL_MADE_UNDER, "")):
                continue
            self._sandboxes[container_id] = sandbox
            adopted.append(container_id)
        listed = {name for entry in entries for name in (entry.get("Names") or [])[:1]}
        for name in self.disks.names() - listed:
            logger.info("removing the disk of sandbox %s, whose container is gone", name)
            await self.disks.release(name)
        async with anyio.create_task_group() as tg:
            for container_id in adopted:
                tg.start_soon(self._adopt_links, self._sandboxes[container_id])
        if adopted:
            logger.info("adopted %d sandbox(es)", len(adopted))
        return adopted

    async def _adopt_pooled(self, sandbox: Sandbox, made_under: str) -> bool:
        """A pooled sandbox was handed out if it holds a claim: then it is adopted with the
        claim's lifetime (True), whatever changed since. Unclaimed, it rejoins the pool if it was
        made under the configuration in force now, else it is destroyed (False)."""
        result = await self.podman.run(
            "exec", sandbox.name, "cat", CLAIM_PATH, check=False, timeout=30, stdout_limit=1024
        )
        fields = result.stdout.decode(errors="replace").split()
        if result.exit_code == 0 and len(fields) in (2, 3):
            try:
                sandbox.created_at, sandbox.expires_at = float(fields[0]), float(fields[1])
            except ValueError:
                pass
            else:
                sandbox.tenant = fields[2] if len(fields) == 3 and TENANT_RE.match(fields[2]) else LOCAL_TENANT
                if sandbox.expires_at > time.time():
                    return True
            # A claim that cannot be read was still a claim: never hand the sandbox out again.
            await self._remove_container(sandbox.name)
            return False
        changed = changed_settings(made_under, await self.made_under())
        if changed:
            logger.info("destroying pooled sandbox %s: it was made under another configuration (%s)",
                        sandbox.container_id, changed)
        if (
            result.exit_code != 0 and not _is_missing_container(result.stderr) and not changed
            and not self.limits_problem and len(self._pool) < self.settings.pool_size
        ):
            self._pool.append(sandbox)
        else:
            await self._remove_container(sandbox.name)
        return False

    async def made_under(self) -> dict[str, str]:
        """Everything that shapes a sandbox of the default kind, as a pooled one records it."""
        if self._made_under is None or not self._made_under["image_id"]:
            inspected = await self.podman.run(
                "image", "inspect", "--format", "{{.Id}}", "--", self.settings.image, check=False, timeout=60
            )
            self._made_under = {
                "image": self.settings.image,
                "image_id": inspected.stdout.decode(errors="replace").strip() if inspected.exit_code == 0 else "",
                "runtime": self.settings.runtime,
                "network": self.settings.network,
                "flags": " ".join((*LIMIT_FLAGS, *ULIMIT_FLAGS, *HARDENING_FLAGS, STATE_TMPFS)),
                "disk_bytes": str(self.disks.limit_bytes if self.disks.enabled else 0),
                "helpers": self._helpers_digest,
            }
        return self._made_under

    async def _check_limits(self) -> None:
        """Whether Podman here can give sandboxes their limits, from its own account of the host."""
        try:
            result = await self.podman.run("info", "--format", "json", check=False, timeout=60)
            info = json.loads(result.stdout or b"{}") if result.exit_code == 0 else {}
        except (SandboxError, ValueError) as exc:  # Podman is missing or hangs: /health says so
            logger.warning("could not ask Podman about resource limits: %s", exc)
            info = {}
        self.limits_problem = why_limits_fail(info)
        if self.limits_problem:
            logger.error("sandboxes will NOT be created: %s", self.limits_problem)

    async def _verify_limits(self, sandbox: Sandbox, podman_said: str) -> None:
        """Refuse a sandbox whose limits Podman ignored: by its warning, and once, by the first
        sandbox's own cgroup (a memory limit the sandbox cannot see is not proven absent)."""
        if LIMITS_IGNORED_WARNING in podman_said.lower():
            self.limits_problem = podman_said.strip().splitlines()[-1][:300] + LIMITS_WAY_OUT
        elif not self._limits_verified:
            result = await self.podman.run(
                "exec", sandbox.name, "cat", *CGROUP_MEMORY_LIMIT_FILES, check=False, timeout=30, stdout_limit=1024
            )
            words = result.stdout.decode(errors="replace").split()
            if words and (words[0] == "max" or (words[0].isdigit() and int(words[0]) > MEMORY_LIMIT_BYTES)):
                self.limits_problem = (f"the first sandbox's memory cgroup says its limit is {words[0]}, not "
                                       f"{MEMORY_LIMIT_BYTES}: Podman did not apply the limits." + LIMITS_WAY_OUT)
            self._limits_verified = True
        if self.limits_problem:
            logger.error("sandboxes will NOT be created: %s", self.limits_problem)
            raise LimitsNotEnforced(self.limits_problem)

    async def _adopt_links(self, sandbox: Sandbox) -> None:
        try:
            result = await self._call(sandbox, "list_links", stdout_limit=16 * 1024 * 1024)
        except SandboxError as exc:
            logger.warning("could not read file links of sandbox %s: %s", sandbox.container_id, exc)
            return
        fields = result.stdout.split(b"\0")
        for file_id_raw, path_raw in zip(fields[0::2], fields[1::2]):
            file_id = file_id_raw.decode("ascii", errors="replace")
            path = path_raw.decode("utf-8", errors="replace")
            if FILE_ID_RE.match(file_id) and path.startswith("/"):
                self._links[file_id] = FileLink(file_id, sandbox.container_id, path, 0, _content_type(path))

    async def _reap_forever(self) -> None:
        last_sync = time.monotonic()
        while True:
            await anyio.sleep(self.settings.reap_interval_seconds)
            await self.reap_expired()
            await self._close_idle_channels()
            if time.monotonic() - last_sync > 30:
                last_sync = time.monotonic()
                await self._forget_vanished()

    async def reap_expired(self) -> list[str]:
        now = time.time()
        for member in [m for m in self._pool if m.expires_at <= now]:
            self._pool.remove(member)
            await self._remove_container(member.name)
            self._pool_wanted.set()
        expired = [s for s in list(self._sandboxes.values()) if s.expires_at <= now]
        for sandbox in expired:
            container_id = sandbox.container_id
            logger.info("sandbox %s reached the end of its lifetime; destroying it", container_id)
            try:
                await self.destroy(container_id, sandbox.tenant, GONE_EXPIRED)
            except SandboxError as exc:
                logger.warning("could not destroy expired sandbox %s: %s", container_id, exc)
        return [s.container_id for s in expired]

    async def _forget_vanished(self) -> None:
        """Drop sandboxes that were removed behind the server's back."""
        try:
            result = await self.podman.run(
                "ps", "-a", "--format", "{{.Names}}", "--filter", f"label={LABEL_NAMESPACE}={self.settings.namespace}"
            )
        except PodmanError as exc:
            logger.warning("could not list sandboxes: %s", exc)
            return
        alive = set(result.stdout.decode(errors="replace").split())
        for container_id, sandbox in list(self._sandboxes.items()):
            if sandbox.name not in alive and sandbox.created_at < time.time() - 5:
                self._forget(container_id, GONE_REMOVED)

    def _forget(self, container_id: str, why: str) -> None:
        sandbox = self._sandboxes.pop(container_id, None)
        running = self._seen_running.pop(container_id, {})
        if sandbox is not None:
            if why == GONE_REMOVED:  # its container is gone: so may its disk be
                self._background.start_soon(self.disks.release, sandbox.name)
            self._tombstones[container_id] = _Tombstone(sandbox.tenant, why, time.time(), running)
            while len(self._tombstones) > MAX_TOMBSTONES or (
                self._tombstones and next(iter(self._tombstones.values())).at < time.time() - TOMBSTONE_SECONDS
            ):
                self._tombstones.popitem(last=False)
        channel = self._channels.pop(container_id, None)
        if channel is not None:
            self._background.start_soon(channel.close)
        self._channel_locks.pop(container_id, None)
        for file_id in [f for f, link in self._links.items() if link.container_id == container_id]:
            del self._links[file_id]

    # ----- sandboxes

    def get(self, container_id: str, tenant: str = LOCAL_TENANT) -> Sandbox:
        """The tenant's sandbox; another tenant's is answered exactly as one that does not exist."""
        sandbox = self._sandboxes.get(container_id) if isinstance(container_id, str) else None
        if sandbox is None or sandbox.tenant != tenant:
            raise SandboxNotFound(str(container_id))
        if sandbox.expires_at <= time.time() or sandbox.destroying:
            raise SandboxNotFound(container_id, " (it is being destroyed)")
        return sandbox

    def list(self, tenant: str = LOCAL_TENANT) -> list[Sandbox]:
        return sorted((s for s in self._sandboxes.values() if s.tenant == tenant), key=lambda s: s.created_at)

    async def create(
        self, image: str | None = None, tenant: str = LOCAL_TENANT, ttl_seconds: int | None = None,
        network: bool | None = None,
    ) -> Sandbox:
        """A sandbox for the tenant; ttl_seconds (up to SANDBOX_TTL_SECONDS) shortens its lifetime,
        network=False cuts it off from every network (None: the server's SANDBOX_NETWORK)."""
        if ttl_seconds is not None and not 1 <= ttl_seconds <= self.settings.ttl_seconds:
            raise SandboxError(
                f"ttl_seconds must be between 1 and {self.settings.ttl_seconds} (SANDBOX_TTL_SECONDS, the server's "
                "maximum). Omit it for the maximum."
            )
        ttl = ttl_seconds or self.settings.ttl_seconds
        image = (image or "").strip() or self.settings.image
        if image not in self.settings.images:
            allowed = ", ".join(self.settings.images)
            raise ImageNotAllowed(
                f"Image {image[:200]!r} is not allowed here. Allowed images: {allowed}. "
                "Omit the image argument to get the default one."
            )
        if self.limits_problem:
            raise LimitsNotEnforced(self.limits_problem)
        async with self._lock:
            if len(self._sandboxes) + self._creating >= self.settings.max_containers:
                raise SandboxLimitReached(
                    f"The server already runs its maximum of {self.settings.max_containers} sandboxes "
                    "(SANDBOX_MAX_CONTAINERS). Destroy one you no longer need with destroy_container, "
                    "or wait until one expires."
                )
            per_tenant = self.settings.max_per_tenant or self.settings.max_containers
            creating = self._creating_by_tenant.get(tenant, 0)
            if len(self.list(tenant)) + creating >= per_tenant:
                raise SandboxLimitReached(
                    f"You already have {per_tenant} sandboxes, the most one client may hold "
                    "(SANDBOX_MAX_PER_TENANT). Destroy one you no longer need with destroy_container, "
                    "or wait until one expires."
                )
            self._creating += 1
            self._creating_by_tenant[tenant] = creating + 1
        try:
            # The pool holds sandboxes of the default image on the server's network only.
            offline = network is False and self.settings.network != "none"
            pooled = image == self.settings.image and not offline
            sandbox = await self._take_from_pool(tenant, ttl) if pooled else None
            if sandbox is None:
                sandbox = await self._start_container(
                    image, pooled=False, tenant=tenant, ttl=ttl, network="none" if offline else None
                )
            self._sandboxes[sandbox.container_id] = sandbox
            logger.info("created sandbox %s from %s for tenant %s", sandbox.container_id, image, tenant)
            return sandbox
        finally:
            self._creating -= 1
            self._creating_by_tenant[tenant] -= 1

    async def _take_from_pool(self, tenant: str, ttl: int) -> Sandbox | None:
        """Hand out a pre-started sandbox, once only; its lifetime starts now."""
        while self._pool:
            sandbox = self._pool.pop(0)
            self._pool_wanted.set()
            sandbox.created_at = time.time()
            sandbox.expires_at = sandbox.created_at + ttl
            sandbox.tenant = tenant
            claim = f"{sandbox.created_at:.3f} {sandbox.expires_at:.3f} {tenant}\n".encode()
            try:
                channel = await self._channel_for(sandbox)
                if channel is not None:
                    await channel.put(CLAIM_PATH, claim)
                else:
                    await self.podman.run(
                        "exec", "-i", sandbox.name, "/bin/sh", "-c", f"mkdir -p {DATA_DIR} && cat > {CLAIM_PATH}",
                        stdin=claim, timeout=30,
                    )
                return sandbox
            except (SandboxError, ChannelClosed, ChannelRequestFailed) as exc:
                logger.warning("pooled sandbox %s unusable (%s); destroying it", sandbox.container_id, exc)
                await self._close_channel(sandbox.container_id)
                await self._remove_container(sandbox.name)
        return None

    async def _fill_pool_forever(self) -> None:
        while True:
            missing = self.settings.pool_size - len(self._pool) - self._pool_filling
            if missing <= 0:
                await self._pool_wanted.wait()
                self._pool_wanted = anyio.Event()
                continue
            if self.limits_problem:
                return  # no sandbox can be made here; the error is told to whoever asks for one
            self._pool_filling += 1
            try:
                sandbox = await self._start_container(self.settings.image, pooled=True)
                await self._channel_for(sandbox)  # a pooled sandbox answers its first command at once
                self._pool.append(sandbox)
            except SandboxError as exc:
                logger.warning("could not add a sandbox to the pool: %s", exc)
                await anyio.sleep(10)
            finally:
                self._pool_filling -= 1

    async def _start_container(
        self, image: str, pooled: bool, tenant: str = LOCAL_TENANT, ttl: int | None = None, network: str | None = None
    ) -> Sandbox:
        container_id = secrets.token_hex(16)
        created = time.time()
        sandbox = Sandbox(container_id, image, created, created + (ttl or self.settings.ttl_seconds), tenant=tenant)
        args = [
            "run", "-d", "--name", sandbox.name, "--hostname", "sandbox", "--init",
            *LIMIT_FLAGS, *ULIMIT_FLAGS, *HARDENING_FLAGS, "--tmpfs", STATE_TMPFS,
            "--label", f"{LABEL_MANAGED}=true",
            "--label", f"{LABEL_NAMESPACE}={self.settings.namespace}",
            "--label", f"{LABEL_CREATED}={created:.3f}",
            "--label", f"{LABEL_EXPIRES}={sandbox.expires_at:.3f}",
            "--label", f"{LABEL_IMAGE}={image}",
        ]
        if pooled:
            made_under = json.dumps(await self.made_under(), sort_keys=True, separators=(",", ":"))
            args += ["--label", f"{LABEL_POOLED}=true", "--label", f"{LABEL_MADE_UNDER}={made_under}"]
        else:
            args += ["--label", f"{LABEL_TENANT}={tenant}"]
        if network or self.settings.network:
            args += ["--network", network or self.settings.network]
        try:
            # The server's own files (DATA_DIR) live on a mount of their own, never in the image's
            # tree, which may be read-only to the sandbox's root: on the sandbox's disk, or on an
            # anonymous volume that goes with the container (podman rm -v).
            if self.disks.enabled:
                args += [*await self.disks.create(sandbox.name, image, DATA_DIR), "sleep", "2147483647"]
            else:
                args += ["--volume", DATA_DIR, "--entrypoint", "sleep", image, "2147483647"]
            started = await self.podman.run(*args, timeout=300)
        except DiskUnavailable as exc:
            raise SandboxError(f"Could not prepare the sandbox's disk: {exc}. Try again; if it persists, an "
                               "operator can set SANDBOX_DISK_LIMIT_BYTES=0 to run sandboxes without one.") from None
        except PodmanError as exc:
            await self._remove_container(sandbox.name)
            if "image not known" in exc.stderr or "pull" in exc.stderr.lower() or "manifest" in exc.stderr.lower():
                raise PodmanError(
                    exc.argv, exc.exit_code, exc.stderr,
                    f"The image {image!r} is not available on this host and could not be pulled. "
                    "An operator can load it (scripts/setup.sh builds an offline image).",
                ) from None
            raise
        try:
            await self._verify_limits(sandbox, started.stderr)
            await self._install_helpers(sandbox)
        except SandboxError:
            await self._remove_container(sandbox.name)
            raise
        return sandbox

    async def destroy(self, container_id: str, tenant: str = LOCAL_TENANT, why: str = GONE_DESTROYED) -> None:
        sandbox = self._sandboxes.get(container_id) if isinstance(container_id, str) else None
        if sandbox is None or sandbox.tenant != tenant:
            raise SandboxNotFound(str(container_id))
        sandbox.destroying, sandbox.gone_why = True, why
        await self._close_channel(container_id)
        try:
            await self._remove_container(sandbox.name, check=True)
        except SandboxError:
            sandbox.destroying = False
            raise
        self._forget(container_id, why)
        logger.info("destroyed sandbox %s", container_id)

    async def _remove_container(self, name: str, check: bool = False) -> None:
        if not name:
            return
        result = await self.podman.run("rm", "-f", "-v", "-t", "0", "--", name, check=False, timeout=120)
        if result.exit_code != 0 and not _is_missing_container(result.stderr):
            if check:
                raise PodmanError(result.argv, result.exit_code, result.stderr, "Try destroy_container again.")
            return
        await self.disks.release(name)

    async def _call(
        self, sandbox: Sandbox, function: str, *args: str, stdin: bytes | None = None,
        stdout_limit: int, timeout: float = 60,
    ) -> PodmanResult:
        """Run a function of the in-sandbox library; a vanished sandbox becomes SandboxNotFound."""
        exec_args = ["exec", *(["-i"] if stdin is not None else []), sandbox.name, "/bin/sh", "-c", BOOTSTRAP, "mcp-sandbox", function, *args]
        for attempt in range(2):
            result = await self.podman.run(*exec_args, stdin=stdin, stdout_limit=stdout_limit, check=False, timeout=timeout)
            if result.exit_code == LIB_MISSING and attempt == 0:
                await self._install_helpers(sandbox)
                continue
            if result.exit_code == RECORDS_UNWRITABLE and not _is_missing_container(result.stderr):
                raise machinery_failure(result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "")
            if result.exit_code != 0:
                self._raise_exec_failure(sandbox, result)
            return result
        raise SandboxError(f"The sandbox's helper library at {LIB_PATH} could not be installed.")  # pragma: no cover

    async def _install_helpers(self, sandbox: Sandbox) -> None:
        """Put the shell library and the agent into the sandbox's STATE_DIR."""
        result = await self.podman.run(
            "exec", "-i", sandbox.name, "/bin/sh", "-c", INSTALL_HELPERS, stdin=self._helpers, check=False, timeout=60
        )
        if result.exit_code != 0:
            self._raise_exec_failure(sandbox, result)

    # ----- channels

    async def _channel_for(self, sandbox: Sandbox) -> AgentChannel | None:
        """The sandbox's open command channel, opened on demand; None when there is no agent."""
        if self._agent is None:
            return None
        channel = self._channels.get(sandbox.container_id)
        if channel is not None and not channel.closed:
            return channel
        lock = self._channel_locks.setdefault(sandbox.container_id, anyio.Lock())
        async with lock:
            channel = self._channels.get(sandbox.container_id)
            if channel is not None and not channel.closed:
                return channel
            for attempt in range(2):
                channel = AgentChannel(self.podman.argv(
                    "exec", "-i", sandbox.name, AGENT_PATH_IN_SANDBOX, str(self.settings.output_file_max_bytes)
                ), self.podman.spawn_options)
                try:
                    await channel.open(self._background.start_soon)
                    break
                except ChannelClosed as exc:
                    reason = str(exc)
                    result = PodmanResult(channel.argv, 1, b"", reason)
                    if _is_missing_container(reason) or _is_not_running(reason):
                        self._raise_exec_failure(sandbox, result)
                    if attempt == 0 and ("no such file" in reason.lower() or "not found" in reason.lower()):
                        await self._install_helpers(sandbox)
                        continue
                    logger.warning("no command channel to sandbox %s (%s); using podman exec", sandbox.container_id, reason)
                    return None
            self._channels[sandbox.container_id] = channel
        await self._limit_channels()
        return channel

    async def _limit_channels(self) -> None:
        """Each channel is a podman process of its own (about 35 MB): keep the most recent few."""
        excess = len(self._channels) - self.settings.max_channels
        if excess > 0:
            oldest = sorted(self._channels.items(), key=lambda item: item[1].last_used)[:excess]
            for container_id, _ in oldest:
                await self._close_channel(container_id)

    async def _close_idle_channels(self) -> None:
        idle_before = time.monotonic() - self.settings.channel_idle_seconds
        for container_id, channel in list(self._channels.items()):
            if channel.closed or channel.last_used < idle_before:
                await self._close_channel(container_id)

    async def _close_channel(self, container_id: str) -> None:
        channel = self._channels.pop(container_id, None)
        if channel is not None:
            await channel.close()

    def _raise_exec_failure(self, sandbox: Sandbox, result: PodmanResult) -> None:
        if _is_missing_container(result.stderr):
            self._forget(sandbox.container_id, GONE_REMOVED)
            raise SandboxNotFound(sandbox.container_id, " (it was removed outside this server)")
        if _is_not_running(result.stderr):
            raise SandboxStopped(
                f"Sandbox {sandbox.container_id} has stopped (its main process exited), so it cannot run "
                "commands. Destroy it with destroy_container and create a new one."
            )
        raise PodmanError(result.argv, result.exit_code, result.stderr)

    # ----- commands

    def _validate_command(self, command: str) -> bytes:
        if not isinstance(command, str) or not command.strip():
            raise InvalidCommand("The command is empty. Pass a shell command line, for example 'ls -la /'.")
        if "\0" in command:
            raise InvalidCommand("The command contains a NUL character, which a shell cannot run. Remove it.")
        encoded = command.encode("utf-8", errors="surrogatepass")
        if len(encoded) > self.settings.max_command_bytes:
            raise InvalidCommand(
                f"The command is {len(encoded):,} bytes; the limit is {self.settings.max_command_bytes:,} "
                "(SANDBOX_MAX_COMMAND_BYTES). Split the work into smaller commands."
            )
        return encoded

    async def execute(
        self, container_id: str, command: str, timeout_seconds: int, tenant: str = LOCAL_TENANT,
        on_progress: ProgressCallback | None = None,
    ) -> CommandState:
        """Start a command and wait up to the sync wait for it; then it goes on in the background."""
        sandbox = self.get(container_id, tenant)
        encoded = self._validate_command(command)
        command_id = "cmd_" + secrets.token_hex(8)
        started_ms = int(time.time() * 1000)
        try:
            state = await self._start_and_wait(sandbox, command_id, encoded, timeout_seconds, started_ms, on_progress)
            return self._seen(container_id, await self._head_and_tail(sandbox, state))
        except (SandboxNotFound, SandboxStopped) as exc:
            return self._gone_or_raise(exc, container_id, command_id, tenant)

    def _started(self, container_id: str, command_id: str) -> None:
        """A command began (or may have): if its sandbox goes, it ends with reason sandbox_gone."""
        self._seen(container_id, CommandState(
            command_id, "running", None, "", "", 0, 0, False, None,
            f"{OUTPUT_DIR}/{command_id}.stdout", f"{OUTPUT_DIR}/{command_id}.stderr",
        ))

    def _never_started(self, container_id: str, command_id: str) -> None:
        self._seen_running.get(container_id, {}).pop(command_id, None)
        tombstone = self._tombstones.get(container_id)
        if tombstone is not None:
            tombstone.running.pop(command_id, None)

    def _seen(self, container_id: str, state: CommandState) -> CommandState:
        """Remember which commands were last seen running, with their output so far."""
        if state.status == "running":
            if container_id in self._sandboxes:
                seen = self._seen_running.setdefault(container_id, {})
                seen.pop(state.command_id, None)
                seen[state.command_id] = replace(
                    state, stdout=state.stdout[-SEEN_OUTPUT_CHARS:], stderr=state.stderr[-SEEN_OUTPUT_CHARS:],
                    truncated=state.truncated or max(len(state.stdout), len(state.stderr)) > SEEN_OUTPUT_CHARS,
                )
                while len(seen) > MAX_SEEN_RUNNING:
                    seen.pop(next(iter(seen)))
        else:
            self._seen_running.get(container_id, {}).pop(state.command_id, None)
        return state

    def gone_command(
        self, container_id: str, command_id: str, tenant: str = LOCAL_TENANT, stopped: bool = False
    ) -> CommandState | None:
        """A command that was running when its sandbox went away (destroyed, expired, removed or
        stopped, as Podman or this server saw it): its last seen state, ended with reason sandbox_gone.
        None when this tenant had no such command running there."""
        tombstone = self._tombstones.get(container_id) if isinstance(container_id, str) else None
        sandbox = self._sandboxes.get(container_id) if isinstance(container_id, str) else None
        if tombstone is not None and tombstone.tenant == tenant:
            last, why = tombstone.running.get(command_id), tombstone.why
        elif sandbox is not None and sandbox.tenant == tenant and (stopped or sandbox.destroying):
            last = self._seen_running.get(container_id, {}).get(command_id)
            why = GONE_STOPPED if stopped else sandbox.gone_why
        else:
            return None
        if last is None:
            return None
        return replace(last, status="killed", exit_code=None, reason="sandbox_gone", detail=why)

    def _gone_or_raise(self, exc: SandboxError, container_id: str, command_id: str, tenant: str) -> CommandState:
        """A command's sandbox_gone ending, when the sandbox went while it ran; else the error as it was."""
        gone = self.gone_command(container_id, command_id, tenant, isinstance(exc, SandboxStopped))
        if gone is None:
            raise exc
        return gone

    async def _start_and_wait(
        self, sandbox: Sandbox, command_id: str, encoded: bytes, timeout_seconds: int, started_ms: int,
        on_progress: ProgressCallback | None,
    ) -> CommandState:
        channel = await self._channel_for(sandbox)
        if channel is not None:
            try:
                return await self._execute_on_channel(
                    channel, sandbox, command_id, encoded, timeout_seconds, started_ms, on_progress
                )
            except ChannelClosed as exc:
                if sandbox.destroying:
                    raise SandboxNotFound(sandbox.container_id, " (it was destroyed while the command ran)") from None
                logger.warning("command channel to %s closed (%s); going on without it", sandbox.container_id, exc)
                # The command may have started before the channel closed: never run it twice.
                try:
                    return await self._read_command_by_exec(sandbox, command_id)
                except CommandNotFound:
                    pass
        return await self._execute_by_exec(sandbox, command_id, encoded, timeout_seconds, started_ms)

    async def _execute_on_channel(
        self, channel: AgentChannel, sandbox: Sandbox, command_id: str, command: bytes, timeout_seconds: int,
        started_ms: int, on_progress: ProgressCallback | None,
    ) -> CommandState:
        cap = self.settings.output_limit_bytes
        exit_reply = channel.expect_exit(command_id)
        # A sandbox at its process limit (a fork bomb dying out) cannot fork the command yet; it
        # did not start, so trying again a little later is safe.
        deadline = time.monotonic() + FORK_RETRY_SECONDS
        while True:
            try:
                await channel.run(command_id, int(timeout_seconds), started_ms, cap, command)
                self._started(sandbox.container_id, command_id)
                break
            except ChannelRequestFailed as exc:
                if str(exc) == FORK_AT_PROCESS_LIMIT and time.monotonic() < deadline:
                    await anyio.sleep(0.2)
                    continue
                channel.forget_exit(command_id)
                raise machinery_failure(str(exc)) from None
        return await self._follow_on_channel(
            channel, command_id, exit_reply, self.settings.sync_wait_seconds, on_progress
        )

    async def _follow_on_channel(
        self, channel: AgentChannel, command_id: str, exit_reply: Any, wait_seconds: float,
        on_progress: ProgressCallback | None,
    ) -> CommandState:
        """Wait up to wait_seconds for a command to end; report progress about once a second."""
        cap = self.settings.output_limit_bytes
        deadline = time.monotonic() + wait_seconds
        while True:
            remaining = deadline - time.monotonic()
            report = None
            with anyio.move_on_after(max(0.0, min(remaining, 1.0 if on_progress else remaining))):
                report = await exit_reply.wait()
            if report is not None:
                return self._parse(command_id, report)
            if time.monotonic() >= deadline:
                return self._parse(command_id, await channel.report(command_id, cap))
            if on_progress is not None:
                state = self._parse(command_id, await channel.report(command_id, cap))
                if state.status != "running":
                    return state
                await on_progress(wait_seconds - (deadline - time.monotonic()), wait_seconds, last_line(state))

    async def wait_for_command(
        self, container_id: str, command_id: str, wait_seconds: float, tenant: str = LOCAL_TENANT,
        on_progress: ProgressCallback | None = None, stdout_offset: int | None = None,
        stderr_offset: int | None = None,
    ) -> CommandState:
        """check_container's long-poll: the command's state as soon as it ends, or after
        wait_seconds, with output from the client's byte offsets."""
        try:
            state = await self.read_command(container_id, command_id, tenant, stdout_offset, stderr_offset)
            if state.status == "running" and wait_seconds > 0:
                await self._wait_until_done(self.get(container_id, tenant), command_id, wait_seconds, on_progress)
                state = await self.read_command(container_id, command_id, tenant, stdout_offset, stderr_offset)
        except (SandboxNotFound, SandboxStopped) as exc:
            return self._gone_or_raise(exc, container_id, command_id, tenant)
        return self._seen(container_id, state)

    async def _wait_until_done(
        self, sandbox: Sandbox, command_id: str, wait_seconds: float, on_progress: ProgressCallback | None
    ) -> None:
        """Return when the command ends or wait_seconds pass; progress about once a second."""
        deadline = time.monotonic() + wait_seconds
        channel = await self._channel_for(sandbox)
        if channel is not None:
            try:
                exit_reply = channel.expect_exit(command_id)
                # Asked after registering, so an exit just before cannot be missed; a command
                # started before a restart has nobody to announce its exit, so the loop asks again.
                state = self._parse(command_id, await channel.report(command_id, self.settings.output_limit_bytes))
                while state.status == "running" and time.monotonic() < deadline:
                    state = await self._follow_on_channel(
                        channel, command_id, exit_reply, min(2.0, max(0.0, deadline - time.monotonic())), on_progress
                    )
                return
            except ChannelClosed:
                pass
        while time.monotonic() < deadline:
            await anyio.sleep(min(0.5, max(0.0, deadline - time.monotonic())))
            state = await self._read_command_by_exec(sandbox, command_id)
            if state.status != "running":
                return
            if on_progress is not None:
                await on_progress(wait_seconds - (deadline - time.monotonic()), wait_seconds, last_line(state))

    def _parse(self, command_id: str, report: bytes) -> CommandState:
        try:
            state = parse_report(command_id, report)
        except ValueError as exc:
            raise SandboxError(f"The record of command {command_id} in the sandbox is damaged ({exc}).") from None
        if state is None:
            raise CommandNotFound(f"The sandbox has no command {command_id}. Call check_container without command_id to list its commands.")
        return state

    async def _execute_by_exec(
        self, sandbox: Sandbox, command_id: str, command: bytes, timeout_seconds: int, started_ms: int
    ) -> CommandState:
        """The fallback without a channel: one ``podman exec`` runs the command and reports it."""
        running = _RunningCommand()
        self._running[(sandbox.container_id, command_id)] = running
        self._started(sandbox.container_id, command_id)
        self._background.start_soon(self._run_command, sandbox, command_id, command, timeout_seconds, started_ms, running)
        with anyio.move_on_after(self.settings.sync_wait_seconds):
            await running.done.wait()
        if running.error is not None:
            raise running.error
        if running.state is not None:
            return running.state
        state = await self._read_command_by_exec(sandbox, command_id)
        if state.status != "running" and running.state is not None:
            return running.state
        return state

    async def _run_command(
        self, sandbox: Sandbox, command_id: str, command: bytes, timeout_seconds: int, started_ms: int,
        running: _RunningCommand,
    ) -> None:
        cap = self.settings.output_limit_bytes
        try:
            result = await self._call(
                sandbox, "run", command_id, str(int(timeout_seconds)), str(cap), str(started_ms),
                stdin=command, stdout_limit=2 * cap + 4096, timeout=timeout_seconds + 120,
            )
            state = parse_report(command_id, result.stdout)
            if state is None:
                raise SandboxError(f"Command {command_id} left no record in the sandbox; run it again.")
            running.state = state
        except (SandboxError, ValueError) as exc:
            if sandbox.destroying:
                running.error = SandboxNotFound(sandbox.container_id, " (it was destroyed while the command ran)")
                return
            # podman exec itself failed: the command may never have started, so claim nothing of it.
            self._never_started(sandbox.container_id, command_id)
            if isinstance(exc, SandboxError):
                running.error = exc
            else:
                running.error = SandboxError(
                    f"Could not read the result of command {command_id}: {exc}. Check it with check_container."
                )
        finally:
            running.done.set()
            self._running.pop((sandbox.container_id, command_id), None)

    async def read_command(
        self, container_id: str, command_id: str, tenant: str = LOCAL_TENANT,
        stdout_offset: int | None = None, stderr_offset: int | None = None,
    ) -> CommandState:
        """A command's state: with byte offsets (a client's cursors), exactly the output after
        them; without, the output with its head and tail kept when it is too long."""
        sandbox = self.get(container_id, tenant)
        if not isinstance(command_id, str) or not COMMAND_ID_RE.match(command_id):
            raise CommandNotFound(
                f"{str(command_id)[:80]!r} is not a command_id. Command ids look like 'cmd_0123456789abcdef'; "
                "call check_container without command_id to list the sandbox's commands."
            )
        cursors = stdout_offset is not None or stderr_offset is not None
        state = await self._slice(
            sandbox, command_id, self.settings.output_limit_bytes, stdout_offset or 0, stderr_offset or 0
        )
        return state if cursors else await self._head_and_tail(sandbox, state)

    async def _slice(
        self, sandbox: Sandbox, command_id: str, cap: int, stdout_offset: int, stderr_offset: int
    ) -> CommandState:
        """A command's state with at most cap bytes of each stream, from the given offsets."""
        channel = await self._channel_for(sandbox)
        if channel is not None:
            try:
                report = await channel.report(command_id, cap, stdout_offset, stderr_offset)
                state = parse_report(command_id, report, stdout_offset=stdout_offset, stderr_offset=stderr_offset)
            except ChannelClosed:
                pass
            except ValueError as exc:
                raise SandboxError(f"The record of command {command_id} in the sandbox is damaged ({exc}).") from None
            else:
                if state is None:
                    raise self._no_such_command(sandbox.container_id, command_id)
                return state
        return await self._read_command_by_exec(sandbox, command_id, stdout_offset, stderr_offset, cap)

    async def _head_and_tail(self, sandbox: Sandbox, state: CommandState) -> CommandState:
        """A stream cut at the cap keeps its head and its tail (the end is where errors are)."""
        cap = self.settings.output_limit_bytes
        if not state.truncated:
            return state
        half = cap // 2
        heads = await self._slice(sandbox, state.command_id, half, 0, 0)
        tails = await self._slice(
            sandbox, state.command_id, half, max(0, heads.stdout_bytes - half), max(0, heads.stderr_bytes - half)
        )

        def joined(total: int, whole: str, head: str, tail: str, name: str, path: str,
                   dropped: tuple[int, int] | None) -> str:
            if total <= cap:
                return whole
            omitted = total - 2 * half
            where = f"read them with check_container {name}_offset={half}, or from {path}"
            if dropped:
                where += f" (bytes {dropped[0]:,} to {dropped[1]:,} were not kept)"
            return f"{head}\n[... {omitted:,} bytes of {name} omitted: {where} ...]\n{tail}"

        return replace(
            state,
            stdout=joined(heads.stdout_bytes, state.stdout, heads.stdout, tails.stdout, "stdout", state.stdout_path,
                          tails.stdout_dropped),
            stderr=joined(heads.stderr_bytes, state.stderr, heads.stderr, tails.stderr, "stderr", state.stderr_path,
                          tails.stderr_dropped),
            stdout_dropped=tails.stdout_dropped,
            stderr_dropped=tails.stderr_dropped,
        )

    @staticmethod
    def _no_such_command(container_id: str, command_id: str) -> CommandNotFound:
        return CommandNotFound(
            f"Sandbox {container_id} has no command {command_id}. Call check_container without "
            "command_id to list its commands."
        )

    async def _read_command_by_exec(
        self, sandbox: Sandbox, command_id: str, stdout_offset: int = 0, stderr_offset: int = 0, cap: int | None = None
    ) -> CommandState:
        running = self._running.get((sandbox.container_id, command_id))
        cap = cap or self.settings.output_limit_bytes
        result = await self._call(
            sandbox, "read_command", command_id, str(cap), str(stdout_offset), str(stderr_offset),
            stdout_limit=2 * cap + 4096,
        )
        try:
            state = parse_report(command_id, result.stdout, stdout_offset=stdout_offset, stderr_offset=stderr_offset)
        except ValueError as exc:
            raise SandboxError(f"The record of command {command_id} in the sandbox is damaged ({exc}).") from None
        if state is None:
            raise self._no_such_command(sandbox.container_id, command_id)
        if state.status == "killed" and running is not None and not running.done.is_set():
            # Still being launched: the pid file is not written yet.
            state = replace(state, status="running")
        return state

    async def list_commands(self, container_id: str, tenant: str = LOCAL_TENANT) -> list[CommandSummary]:
        sandbox = self.get(container_id, tenant)
        channel = await self._channel_for(sandbox)
        if channel is not None:
            try:
                return parse_command_list(await channel.list_commands())
            except ChannelClosed:
                pass
        result = await self._call(sandbox, "list_commands", stdout_limit=4 * 1024 * 1024)
        return parse_command_list(result.stdout)

    async def container_status(self, container_id: str, tenant: str = LOCAL_TENANT) -> str:
        sandbox = self.get(container_id, tenant)
        channel = self._channels.get(sandbox.container_id)
        if channel is not None and not channel.closed:
            try:
                await channel.ping()  # the agent answers: the sandbox runs
                return "running"
            except ChannelClosed:
                pass
        result = await self.podman.run(
            "inspect", "--format", "{{.State.Status}}", "--type", "container", sandbox.name, check=False, timeout=30
        )
        if result.exit_code != 0:
            if _is_missing_container(result.stderr):
                self._forget(container_id, GONE_REMOVED)
                raise SandboxNotFound(container_id, " (it was removed outside this server)")
            raise PodmanError(result.argv, result.exit_code, result.stderr)
        return result.stdout.decode(errors="replace").strip() or "unknown"

    # ----- files

    async def write_file(
        self, container_id: str, path: str, data: bytes, mode: int | None = None, tenant: str = LOCAL_TENANT
    ) -> int:
        """Write a file in the sandbox, parents created, no shell quoting; returns its size."""
        sandbox = self.get(container_id, tenant)
        _check_absolute_path(path)
        if len(data) > self.settings.write_max_bytes:
            raise FileNotShareable(
                f"The content is {len(data):,} bytes; write_file takes up to {self.settings.write_max_bytes:,} "
                "(SANDBOX_WRITE_MAX_BYTES). Write it in parts and join them with execute_command (cat a b > c)."
            )
        file_mode = 0o644 if mode is None else mode
        channel = await self._channel_for(sandbox)
        if channel is not None:
            try:
                await channel.put(path, data, file_mode)
                return len(data)
            except ChannelRequestFailed as exc:
                raise FileNotShareable(_write_refusal(path, str(exc))) from None
            except ChannelClosed:
                pass
        result = await self.podman.run(
            "exec", "-i", sandbox.name, "/bin/sh", "-c",
            'mkdir -p "$(dirname "$1")" && [ ! -d "$1" ] && cat > "$1" && chmod "$2" "$1"', "mcp-sandbox",
            path, f"{file_mode:o}", stdin=data, check=False, timeout=120,
        )
        if result.exit_code != 0:
            if _is_missing_container(result.stderr) or _is_not_running(result.stderr):
                self._raise_exec_failure(sandbox, result)
            raise FileNotShareable(_write_refusal(path, result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "refused"))
        return len(data)

    async def create_file_link(self, container_id: str, path: str, tenant: str = LOCAL_TENANT) -> FileLink:
        sandbox = self.get(container_id, tenant)
        _check_absolute_path(path)
        file_id = secrets.token_urlsafe(24)
        verdict_text = None
        channel = await self._channel_for(sandbox)
        if channel is not None:
            try:
                verdict_text = await channel.link(path, self.settings.file_max_bytes, file_id)
            except ChannelClosed:
                pass
        if verdict_text is None:
            result = await self._call(
                sandbox, "link_file", path, str(self.settings.file_max_bytes), file_id, stdout_limit=4096
            )
            verdict_text = result.stdout.decode(errors="replace")
        verdict = verdict_text.strip().split(" ")
        shown = path[:200]
        reasons = {
            "missing": f"{shown!r} does not exist in sandbox {container_id}. Check the path with execute_command (ls -la).",
            "broken-link": f"{shown!r} is a symbolic link whose target does not exist.",
            "directory": f"{shown!r} is a directory; only regular files can be shared. Archive it first "
            f"(e.g. tar czf /tmp/dir.tar.gz -C {shlex.quote(shown)} .) and share the archive.",
            "special": f"{shown!r} is not a regular file (a device, FIFO or socket); only regular files can be shared.",
            "unreadable": f"{shown!r} cannot be read inside the sandbox. Check its permissions.",
            "state-unwritable": f"The sandbox's {DATA_DIR} cannot be written, so no link can be recorded.",
        }
        if verdict[0] == "file" and len(verdict) == 2 and verdict[1].isdigit():
            link = FileLink(file_id, sandbox.container_id, path, int(verdict[1]), _content_type(path))
            self._links[file_id] = link
            return link
        if verdict[0] == "too-big":
            raise FileNotShareable(
                f"{shown!r} is {int(verdict[1]):,} bytes; files up to {self.settings.file_max_bytes:,} bytes can be "
                "shared (SANDBOX_FILE_MAX_BYTES). Compress or split it first."
            )
        raise FileNotShareable(reasons.get(verdict[0], f"Could not check {shown!r} (answer {verdict[0][:40]!r})."))

    async def open_file(self, file_id: str) -> FileDownload:
        """Start streaming a linked file out of its sandbox."""
        link = self._links.get(file_id) if isinstance(file_id, str) else None
        if link is None:
            raise FileLinkNotFound("Unknown file link.")
        sandbox = self._sandboxes.get(link.container_id)
        if sandbox is None or sandbox.expires_at <= time.time():
            raise FileLinkNotFound("The sandbox of this file link no longer exists.")
        argv = self.podman.argv("exec", sandbox.name, "/bin/sh", "-c", BOOTSTRAP, "mcp-sandbox", "serve_file", link.path)
        download = FileDownload(argv, link, self.podman.spawn_options)
        await download.start()
        return download

    # ----- health

    async def health(self) -> dict[str, Any]:
        result = await self.podman.run("version", "--format", "{{.Client.Version}}", timeout=10)
        await self.podman.run("ps", "-q", "--filter", f"label={LABEL_MANAGED}=true", timeout=10)
        if self.limits_problem:
            raise LimitsNotEnforced(self.limits_problem)
        disk = self.disks.limit_bytes if self.disks.enabled else f"unbounded: {self.disks.why_not}"
        return {"podman_version": result.stdout.decode(errors="replace").strip(), "sandboxes": len(self._sandboxes),
                "sandbox_disk_bytes": disk, "limits": "enforced"}


ProgressCallback = Callable[[float, float, str], Awaitable[None]]


def _check_absolute_path(path: str) -> None:
    if not isinstance(path, str) or not path.strip():
        raise FileNotShareable("The path is empty. Pass the absolute path of a file in the sandbox, e.g. /tmp/out.txt.")
    if "\0" in path:
        raise FileNotShareable("The path contains a NUL character. Pass a plain absolute path.")
    if not path.startswith("/"):
        raise FileNotShareable(
            f"The path {path[:200]!r} is relative. Pass an absolute path inside the sandbox, "
            f"e.g. {posixpath.join('/root', path)[:200]!r}."
        )
    if len(path.encode("utf-8", errors="surrogatepass")) > 4096:
        raise FileNotShareable("The path is longer than 4096 bytes. Pass a shorter absolute path.")


def _write_refusal(path: str, reason: str) -> str:
    explained = {
        "is-a-directory": "it is a directory",
        "parent-not-a-directory": "a parent of it is a file, not a directory",
        "cannot-create-parent": "its parent directory cannot be created",
        "bad-path": "the path is not a plain absolute path",
    }.get(reason.split()[0] if reason else "", reason[:200])
    return f"Could not write {path[:200]!r}: {explained}. Pick another path, or check it with execute_command (ls -la)."


def _content_type(path: str) -> str:
    guessed, _ = mimetypes.guess_type(posixpath.basename(path), strict=False)
    if guessed is None:
        return "application/octet-stream"
    if guessed.startswith("text/") or guessed in ("application/json", "application/javascript", "application/xml"):
        return f"{guessed}; charset=utf-8"
    return guessed


DOWNLOAD_CHUNK_BYTES = 512 * 1024


def _widen_pipe(process: anyio.abc.Process) -> None:
    """Give a download's pipe 1 MiB instead of 64 KiB: fewer wake-ups per megabyte."""
    try:
        import fcntl

        transport = process._process._transport  # type: ignore[attr-defined]
        pipe = transport.get_pipe_transport(1).get_extra_info("pipe")
        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, 1024 * 1024)
    except (AttributeError, OSError, ImportError):  # another event loop, or the limit is lower
        pass


class FileDownload:
    """One file streaming out of a sandbox through ``podman exec``; memory stays flat."""

    def __init__(self, argv: list[str], link: FileLink, spawn_options: dict[str, Any]) -> None:
        self.argv = argv
        self.link = link
        self.spawn_options = spawn_options
        self.size = 0
        self._process: anyio.abc.Process | None = None
        self._stdout: BufferedByteReceiveStream | None = None

    @property
    def filename(self) -> str:
        return posixpath.basename(self.link.path.rstrip("/")) or "download"

    async def start(self) -> None:
        logger.debug("run %s", shlex.join(self.argv))
        try:
            self._process = await anyio.open_process(
                self.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                **self.spawn_options,
            )
        except FileNotFoundError:
            raise PodmanUnavailable(self.argv, None, "podman was not found") from None
        assert self._process.stdout is not None
        _widen_pipe(self._process)
        self._stdout = BufferedByteReceiveStream(self._process.stdout)
        try:
            with anyio.fail_after(30):
                header = (await self._stdout.receive_until(b"\n", 200)).decode(errors="replace")
        except (anyio.IncompleteRead, anyio.DelimiterNotFound, anyio.EndOfStream, TimeoutError):
            await self.aclose()
            raise FileLinkNotFound("The file could not be read from its sandbox (the sandbox may be gone).") from None
        except BaseException:
            await self.aclose()
            raise
        verdict = header.split(" ")
        if verdict[0] != "ok" or len(verdict) != 2 or not verdict[1].isdigit():
            await self.aclose()
            raise FileLinkNotFound("The file no longer exists in its sandbox or is no longer a regular file.")
        self.size = int(verdict[1])

    async def chunks(self) -> AsyncIterator[bytes]:
        assert self._stdout is not None
        remaining = self.size
        try:
            while remaining > 0:
                # Pipes hand over 64 KiB at a time; a few of them per HTTP write halves the
                # per-chunk overhead of the ASGI server.
                parts: list[bytes] = []
                gathered = 0
                try:
                    while gathered < DOWNLOAD_CHUNK_BYTES and gathered < remaining:
                        part = await self._stdout.receive(remaining - gathered)
                        parts.append(part)
                        gathered += len(part)
                except (anyio.EndOfStream, anyio.ClosedResourceError):
                    remaining = 0
                if parts:
                    remaining -= gathered
                    yield b"".join(parts)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        process, self._process = self._process, None
        await kill_process(process)
