"""The sandbox manager: creates, tracks, reaps and destroys sandboxes; runs commands; shares files.

Every sandbox is a container started with the exact limits of the product contract and
labelled so that a restarted server can find it again. What a restart must find lives
where a restart finds it: lifetimes in Podman labels; commands, their output and exit
codes, and file links inside the sandbox (see records.py). The server's memory only
caches what it can read back.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread

from .backend import Backend, PodmanBackend, removal_failed
from .channel import find_agent_binary
from .commands import CommandRunner, ProgressCallback
from .config import (
    HARDENING_FLAGS,
    LIMIT_FLAGS,
    ULIMIT_FLAGS,
    SandboxSettings,
)
from .disks import SandboxDisks
from .errors import (
    ChannelClosed,
    DiskUnavailable,
    ImageNotAllowed,
    PodmanError,
    SandboxError,
    SandboxLimitReached,
    SandboxNotFound,
)
from .files import FileDownload
from .gone import GONE_DESTROYED, GONE_EXPIRED, GONE_REMOVED, GoneCommands
from .layout import CLAIM_PATH, DATA_DIR, STATE_TMPFS
from .limits import LimitsCheck
from .links import FileLinks
from .model import (
    CONTAINER_ID_RE,
    LABEL_CREATED,
    LABEL_EXPIRES,
    LABEL_IMAGE,
    LABEL_MADE_UNDER,
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    LABEL_POOLED,
    LABEL_TENANT,
    LOCAL_TENANT,
    NAME_PREFIX,
    TENANT_RE,
    FileLink,
    Sandbox,
)
from .podman import (
    Podman,
    is_missing_container,
)
from .pool import WarmPool, changed_settings
from .records import (
    CommandState,
    CommandSummary,
    helpers_digest,
    helpers_tar,
)
from .runtime import AgentChannels, AgentRuntime, ExecRuntime, Runtime
from .tasks import BackgroundTasks

T = TypeVar("T")

logger = logging.getLogger("mcp_sandbox.manager")

# --------------------------------------------------------------------------- the manager


class SandboxManager:
    """Creates, tracks, reaps and destroys sandboxes; runs commands; serves files."""

    def __init__(self, settings: SandboxSettings) -> None:
        self.settings = settings
        self.podman = Podman(settings.podman, settings.runtime)
        self.backend: Backend = PodmanBackend(self.podman)
        self.disks = SandboxDisks(
            settings.disk_dir, settings.namespace, settings.disk_limit_bytes, self.podman.run, self.podman.env
        )
        # Why sandboxes cannot be given their limits here ("" while they can): decided at start
        # from Podman's own account, and again from the first sandbox's cgroup.
        self.limits = LimitsCheck(self.backend)
        self._made_under: dict[str, str] | None = None
        self._sandboxes: dict[str, Sandbox] = {}
        # Per sandbox, the commands last seen running (with their output so far); kept in a
        # tombstone when the sandbox goes, so their end can be told as reason sandbox_gone.
        self._gone = GoneCommands()
        self._creating = 0
        self._creating_by_tenant: dict[str, int] = {}
        self._lock = anyio.Lock()
        self._background = BackgroundTasks()
        # The agent binary and what each sandbox gets: found (or built) at start, never at import.
        self._agent: Path | None = None
        self._helpers = b""
        self._helpers_digest = ""
        self.exec_runtime = ExecRuntime(
            self.backend, lambda: self._helpers, lambda container_id: self._forget(container_id, GONE_REMOVED)
        )
        self.channels = AgentChannels(
            self.backend, self.exec_runtime, lambda: self.podman.spawn_options, self._background.start_soon,
            settings.output_file_max_bytes, settings.max_channels, settings.channel_idle_seconds,
        )
        self.commands = CommandRunner(
            settings, self.get, self._sandboxes.get, self.channels, self.exec_runtime, self._request,
            self._background.start_soon, self._gone,
        )
        self.links = FileLinks(
            settings.file_max_bytes, settings.write_max_bytes, self.get, self._sandboxes.get, self._request,
            self.exec_runtime, self.backend.exec_argv, lambda: self.podman.spawn_options,
        )
        self.pool = WarmPool(settings.pool_size, self._make_pooled, self._claim_pooled, self._discard,
                             lambda: not self.limits.problem)

    # ----- lifecycle

    async def start(self) -> None:
        """Adopt this namespace's sandboxes, destroy expired ones, start the reaper."""
        await self._background.start()
        self._agent = await anyio.to_thread.run_sync(find_agent_binary, self.settings.agent_path)
        if self._agent is None:
            logger.warning(
                "no sandbox agent binary (build it with scripts/setup.sh or set SANDBOX_AGENT); "
                "every command will cost a podman exec"
            )
        self._helpers = helpers_tar(self._agent)
        self._helpers_digest = helpers_digest(self._agent)
        self.channels.enabled = self._agent is not None
        self.pool.reset()  # rebuilt from Podman by adopt()
        await self.disks.probe()
        if self.disks.enabled:
            logger.info("each sandbox gets a disk of its own: %d bytes", self.disks.limit_bytes)
        else:
            logger.warning("sandbox disk use is NOT bounded (%s): a sandbox can fill the disk under Podman's "
                           "storage", self.disks.why_not)
        await self.limits.check_host()
        try:
            await self.adopt()
        except SandboxError as exc:
            logger.warning("could not adopt existing sandboxes: %s", exc)
        self._background.start_soon(self._reap_forever)
        if self.settings.pool_size > 0:
            self._background.start_soon(self.pool.fill_forever)

    async def stop(self) -> None:
        """Stop following commands; sandboxes and their commands go on for the next start."""
        await self.channels.close_all()
        await self._background.stop()
        self.podman.close()

    async def adopt(self) -> list[str]:
        entries = await self.backend.list({LABEL_MANAGED: "true", LABEL_NAMESPACE: self.settings.namespace})
        adopted: list[str] = []
        now = time.time()
        for entry in entries:
            name, labels = entry.name, entry.labels
            container_id = name[len(NAME_PREFIX):] if name.startswith(NAME_PREFIX) else ""
            try:
                created = float(labels.get(LABEL_CREATED, "nan"))
                expires = float(labels.get(LABEL_EXPIRES, "nan"))
            except ValueError:
                created = expires = float("nan")
            if not CONTAINER_ID_RE.match(container_id) or not math.isfinite(expires) or expires <= now:
                logger.info("destroying expired or unreadable sandbox %s", name)
                await self._remove_container(name)
                continue
            tenant = labels.get(LABEL_TENANT, LOCAL_TENANT)
            sandbox = Sandbox(container_id, labels.get(LABEL_IMAGE) or entry.image, created, expires,
                              tenant=tenant if TENANT_RE.match(tenant) else LOCAL_TENANT)
            pooled = labels.get(LABEL_POOLED) == "true"
            if not entry.running:
                try:
                    if self.disks.exists(sandbox.name):  # mounts do not survive a reboot of the host
                        await self.disks.remount(sandbox.name, sandbox.image)
                    await self.backend.restart(sandbox.name)
                except (PodmanError, DiskUnavailable) as exc:
                    logger.warning("sandbox %s could not be restarted, destroying it: %s", name, exc)
                    await self._remove_container(sandbox.name)
                    continue
            if pooled and not await self._adopt_pooled(sandbox, labels.get(LABEL_MADE_UNDER, "")):
                continue
            self._sandboxes[container_id] = sandbox
            adopted.append(container_id)
        listed = {entry.name for entry in entries}
        for name in self.disks.names() - listed:
            logger.info("removing the disk of sandbox %s, whose container is gone", name)
            await self.disks.release(name)
        async with anyio.create_task_group() as tg:
            for container_id in adopted:
                tg.start_soon(self.links.adopt, self._sandboxes[container_id])
        if adopted:
            logger.info("adopted %d sandbox(es)", len(adopted))
        return adopted

    async def _adopt_pooled(self, sandbox: Sandbox, made_under: str) -> bool:
        """A pooled sandbox was handed out if it holds a claim: then it is adopted with the
        claim's lifetime (True), whatever changed since. Unclaimed, it rejoins the pool if it was
        made under the configuration in force now, else it is destroyed (False)."""
        result = await self.backend.exec(sandbox.name, "cat", CLAIM_PATH, timeout=30, stdout_limit=1024)
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
        unclaimed = result.exit_code != 0 and not is_missing_container(result.stderr)
        if not (unclaimed and not changed and not self.limits.problem and self.pool.adopt(sandbox)):
            await self._remove_container(sandbox.name)
        return False

    async def made_under(self) -> dict[str, str]:
        """Everything that shapes a sandbox of the default kind, as a pooled one records it."""
        if self._made_under is None or not self._made_under["image_id"]:
            self._made_under = {
                "image": self.settings.image,
                "image_id": await self.backend.image_id(self.settings.image),
                "runtime": self.settings.runtime,
                "network": self.settings.network,
                "flags": " ".join((*LIMIT_FLAGS, *ULIMIT_FLAGS, *HARDENING_FLAGS, STATE_TMPFS)),
                "disk_bytes": str(self.disks.limit_bytes if self.disks.enabled else 0),
                "helpers": self._helpers_digest,
            }
        return self._made_under

    async def _reap_forever(self) -> None:
        last_sync = time.monotonic()
        while True:
            await anyio.sleep(self.settings.reap_interval_seconds)
            await self.reap_expired()
            await self.channels.close_idle()
            if time.monotonic() - last_sync > 30:
                last_sync = time.monotonic()
                await self._forget_vanished()

    async def reap_expired(self) -> list[str]:
        now = time.time()
        await self.pool.drop_expired(now)
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
            alive = {entry.name for entry in await self.backend.list({LABEL_NAMESPACE: self.settings.namespace})}
        except SandboxError as exc:
            logger.warning("could not list sandboxes: %s", exc)
            return
        for container_id, sandbox in list(self._sandboxes.items()):
            if sandbox.name not in alive and sandbox.created_at < time.time() - 5:
                self._forget(container_id, GONE_REMOVED)

    def _forget(self, container_id: str, why: str) -> None:
        sandbox = self._sandboxes.pop(container_id, None)
        self._gone.bury(container_id, sandbox, why)
        if sandbox is not None and why == GONE_REMOVED:  # its container is gone: so may its disk be
            self._background.start_soon(self.disks.release, sandbox.name)
        self.channels.forget(container_id)
        self.links.forget(container_id)

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
        self.limits.require()
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
            sandbox = await self.pool.take(tenant, ttl) if pooled else None
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

    async def _make_pooled(self) -> Sandbox:
        sandbox = await self._start_container(self.settings.image, pooled=True)
        await self.channels.get(sandbox)  # a pooled sandbox answers its first command at once
        return sandbox

    async def _claim_pooled(self, sandbox: Sandbox, claim: bytes) -> None:
        await self._request(sandbox, lambda runtime: runtime.put(sandbox, CLAIM_PATH, claim, 0o644))

    async def _discard(self, sandbox: Sandbox) -> None:
        await self.channels.close(sandbox.container_id)
        await self._remove_container(sandbox.name)

    async def _start_container(
        self, image: str, pooled: bool, tenant: str = LOCAL_TENANT, ttl: int | None = None, network: str | None = None
    ) -> Sandbox:
        container_id = secrets.token_hex(16)
        created = time.time()
        sandbox = Sandbox(container_id, image, created, created + (ttl or self.settings.ttl_seconds), tenant=tenant)
        flags = ["--hostname", "sandbox", "--init", *LIMIT_FLAGS, *ULIMIT_FLAGS, *HARDENING_FLAGS,
                 "--tmpfs", STATE_TMPFS]
        labels = {
            LABEL_MANAGED: "true",
            LABEL_NAMESPACE: self.settings.namespace,
            LABEL_CREATED: f"{created:.3f}",
            LABEL_EXPIRES: f"{sandbox.expires_at:.3f}",
            LABEL_IMAGE: image,
        }
        if pooled:
            labels[LABEL_POOLED] = "true"
            labels[LABEL_MADE_UNDER] = json.dumps(await self.made_under(), sort_keys=True, separators=(",", ":"))
        else:
            labels[LABEL_TENANT] = tenant
        try:
            # The server's own files (DATA_DIR) live on a mount of their own, never in the image's
            # tree, which may be read-only to the sandbox's root: on the sandbox's disk, or on an
            # anonymous volume that goes with the container (podman rm -v).
            if self.disks.enabled:
                image_args = [*await self.disks.create(sandbox.name, image, DATA_DIR), "sleep", "2147483647"]
            else:
                image_args = ["--volume", DATA_DIR, "--entrypoint", "sleep", image, "2147483647"]
            warnings = await self.backend.start(
                sandbox.name, flags, labels, network or self.settings.network, image_args
            )
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
            await self.limits.verify(sandbox, warnings)
            await self.exec_runtime.install_helpers(sandbox)
        except SandboxError:
            await self._remove_container(sandbox.name)
            raise
        return sandbox

    async def destroy(self, container_id: str, tenant: str = LOCAL_TENANT, why: str = GONE_DESTROYED) -> None:
        sandbox = self._sandboxes.get(container_id) if isinstance(container_id, str) else None
        if sandbox is None or sandbox.tenant != tenant:
            raise SandboxNotFound(str(container_id))
        sandbox.destroying, sandbox.gone_why = True, why
        await self.channels.close(container_id)
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
        failure = removal_failed(await self.backend.remove(name))
        if failure is not None:
            if check:
                raise failure
            return
        await self.disks.release(name)

    # ----- runtimes: the agent's channel, else podman exec, decided here

    async def _request(self, sandbox: Sandbox, ask: Callable[[Runtime], Awaitable[T]]) -> T:
        """Ask the sandbox through its agent's channel when one is open, else through podman exec;
        a channel that closes during the request hands it to podman exec (requests are idempotent)."""
        channel = await self.channels.get(sandbox)
        if channel is not None:
            try:
                return await ask(AgentRuntime(channel))
            except ChannelClosed:
                pass
        return await ask(self.exec_runtime)

    # ----- commands (commands.py)

    async def execute(
        self, container_id: str, command: str, timeout_seconds: int, tenant: str = LOCAL_TENANT,
        on_progress: ProgressCallback | None = None,
    ) -> CommandState:
        return await self.commands.execute(container_id, command, timeout_seconds, tenant, on_progress)

    async def wait_for_command(
        self, container_id: str, command_id: str, wait_seconds: float, tenant: str = LOCAL_TENANT,
        on_progress: ProgressCallback | None = None, stdout_offset: int | None = None,
        stderr_offset: int | None = None,
    ) -> CommandState:
        return await self.commands.wait_for_command(
            container_id, command_id, wait_seconds, tenant, on_progress, stdout_offset, stderr_offset
        )

    async def read_command(
        self, container_id: str, command_id: str, tenant: str = LOCAL_TENANT,
        stdout_offset: int | None = None, stderr_offset: int | None = None,
    ) -> CommandState:
        return await self.commands.read_command(container_id, command_id, tenant, stdout_offset, stderr_offset)

    async def list_commands(self, container_id: str, tenant: str = LOCAL_TENANT) -> list[CommandSummary]:
        return await self.commands.list_commands(container_id, tenant)

    def gone_command(
        self, container_id: str, command_id: str, tenant: str = LOCAL_TENANT, stopped: bool = False
    ) -> CommandState | None:
        return self.commands.gone_command(container_id, command_id, tenant, stopped)

    async def container_status(self, container_id: str, tenant: str = LOCAL_TENANT) -> str:
        sandbox = self.get(container_id, tenant)
        channel = self.channels.open_one(sandbox.container_id)
        if channel is not None:
            try:
                await channel.ping()  # the agent answers: the sandbox runs
                return "running"
            except ChannelClosed:
                pass
        result = await self.backend.status(sandbox.name)
        if result.exit_code != 0:
            if is_missing_container(result.stderr):
                self._forget(container_id, GONE_REMOVED)
                raise SandboxNotFound(container_id, " (it was removed outside this server)")
            raise PodmanError(result.argv, result.exit_code, result.stderr)
        return result.stdout.decode(errors="replace").strip() or "unknown"

    # ----- files (links.py)

    async def write_file(
        self, container_id: str, path: str, data: bytes, mode: int | None = None, tenant: str = LOCAL_TENANT
    ) -> int:
        return await self.links.write_file(container_id, path, data, mode, tenant)

    async def create_file_link(self, container_id: str, path: str, tenant: str = LOCAL_TENANT) -> FileLink:
        return await self.links.create_file_link(container_id, path, tenant)

    async def open_file(self, file_id: str) -> FileDownload:
        return await self.links.open_file(file_id)

    # ----- health

    async def health(self) -> dict[str, Any]:
        version = await self.backend.version()
        await self.backend.list({LABEL_MANAGED: "true"})
        self.limits.require()
        disk = self.disks.limit_bytes if self.disks.enabled else f"unbounded: {self.disks.why_not}"
        return {"podman_version": version, "sandboxes": len(self._sandboxes),
                "sandbox_disk_bytes": disk, "limits": "enforced"}

