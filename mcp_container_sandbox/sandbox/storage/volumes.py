"""Named volumes: a tenant's files that outlive sandboxes and are shared between them.

A volume is an ext4 image of its own, loop-mounted on the host, like a sandbox's disk
(backend/disks.py), so its size is enforced by its file system: a write past it is the sandbox's
own "No space left on device", and nothing else on the host fills. Under DIR/<namespace>/.volumes:

    <tenant key>/<name>.img    sparse, formatted ext4, the volume's size
    <tenant key>/<name>.json   its record: name, tenant, size, when made
    <tenant key>/<name>/       the image, loop-mounted; its folder ``files`` is what sandboxes mount

A sandbox mounts ``files`` (bind, read-write or read-only) at the path it asked for; several may at
once, since it is one mount on the host. The mount lasts until the volume is deleted (a reboot
of the host undoes it: the next sandbox that needs it mounts it again). A tenant sees only its own
volumes (the tenant key is a hash of its name). Snapshots never include a volume: it is not in
the sandbox's own files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import anyio

from ..backend.disks import cannot_mount, ensure_free_loop_node, run_tool
from ..backend.podman_cli import system_env
from ..errors import DiskUnavailable, SandboxError, shown
from ..model import VolumeMount
from ..paths import DATA_DIR, STATE_DIR

logger = logging.getLogger("mcp_sandbox.volumes")

# No '.': a volume's files are NAME.img and NAME.json beside its mount folder NAME.
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
MIN_SIZE_MB = 8
# Where a volume may not be mounted: over the system's folders, or in the kernel's or the server's own.
SYSTEM_PATHS = ("/", "/etc", "/bin", "/sbin", "/usr", "/lib", "/lib64", "/var", "/run", "/tmp")
NOT_UNDER = ("/proc", "/sys", "/dev", STATE_DIR, DATA_DIR)
FILES = "files"


class VolumeError(SandboxError):
    """A volume cannot be made, used or deleted as asked; the message says why and what to do."""


class VolumeNotFound(VolumeError):
    def __init__(self, name: str) -> None:
        super().__init__(f"No volume named {shown(name)}. list_volumes shows yours; create_volume makes one.")


@dataclass(frozen=True)
class Volume:
    name: str
    tenant: str
    size_bytes: int
    created_at: float


def tenant_key(tenant: str) -> str:
    return hashlib.sha256(tenant.encode()).hexdigest()[:24]


def check_mount_path(path: object) -> str:
    """A mount path inside a sandbox, normalised; VolumeError says what is wrong with it."""
    if not isinstance(path, str) or not path.startswith("/") or len(path) > 255:
        raise VolumeError(f"A volume's path must be an absolute path inside the sandbox, like '/data'; got "
                          f"{shown(str(path))}.")
    if any(part in (".", "..") for part in path.split("/")) or "\0" in path or ":" in path or "," in path:
        raise VolumeError(f"A volume's path may not hold '.', '..', ':' or ',' parts; got {shown(path)}.")
    normal = str(PurePosixPath(path))
    if normal in SYSTEM_PATHS or any(normal == top or normal.startswith(top + "/") for top in NOT_UNDER):
        raise VolumeError(f"A volume cannot be mounted at {normal}: that path is the system's or the server's. "
                              "Choose a folder of your own, like /data or /workspace/shared.")
    return normal


class Volumes:
    def __init__(self, base: str, namespace: str, max_per_tenant: int, max_bytes: int,
                 users: Callable[[str, str], list[str]]) -> None:
        """``users(tenant, name)``: the container ids of the tenant's sandboxes that mount the volume."""
        self.dir = Path(base) / namespace / ".volumes"
        self.max_per_tenant, self.max_bytes = max_per_tenant, max_bytes
        self.enabled, self.why_not = False, "not probed yet"
        self._users = users
        self._env = system_env()
        self._locks: dict[str, anyio.Lock] = {}
        self._taking: Counter[tuple[str, str]] = Counter()  # volumes of sandboxes being made now

    # ----- where things are

    def _folder(self, tenant: str) -> Path:
        return self.dir / tenant_key(tenant)

    def _image(self, tenant: str, name: str) -> Path:
        return self._folder(tenant) / f"{name}.img"

    def _mount_point(self, tenant: str, name: str) -> Path:
        return self._folder(tenant) / name

    def source(self, tenant: str, name: str) -> Path:
        """What a sandbox mounts: the folder ``files`` of the volume's file system."""
        return self._mount_point(tenant, name) / FILES

    def _lock(self, tenant: str) -> anyio.Lock:
        return self._locks.setdefault(tenant_key(tenant), anyio.Lock())

    # ----- the server's start

    async def probe(self, refused: str = "") -> None:
        """Whether volumes can be made here: root, the tools and loop devices (a small one made,
        mounted and removed). ``refused``: a reason the backend has already (none on Kubernetes)."""
        self.enabled = False
        if refused:
            self.why_not = refused
            return
        if self.max_per_tenant <= 0:
            self.why_not = "SANDBOX_MAX_VOLUMES_PER_TENANT is 0"
            return
        self.why_not = cannot_mount(self._env, "a volume is a loop-mounted file system")
        if self.why_not:
            return
        probe = self.dir / f".probe-{os.getpid()}"
        try:
            probe.mkdir(parents=True, exist_ok=True)
            await self._make_fs(probe / "p.img", MIN_SIZE_MB * 1024 * 1024)
            await self._mount(probe / "p.img", probe / "p")
        except (DiskUnavailable, OSError) as exc:
            self.why_not = f"a trial volume could not be made ({exc})"
        else:
            self.enabled, self.why_not = True, ""
        finally:
            await self._unmount(probe / "p")
            shutil.rmtree(probe, ignore_errors=True)

    # ----- the tools

    def get(self, tenant: str, name: str) -> Volume:
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise VolumeNotFound(str(name))
        try:
            record = json.loads((self._folder(tenant) / f"{name}.json").read_text())
            volume = Volume(record["name"], record["tenant"], int(record["size_bytes"]), float(record["created_at"]))
        except (OSError, ValueError, KeyError, TypeError):
            raise VolumeNotFound(name) from None
        if volume.tenant != tenant or volume.name != name:
            raise VolumeNotFound(name)
        return volume

    def list(self, tenant: str) -> list[Volume]:
        found = []
        folder = self._folder(tenant)
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else ():
            try:
                found.append(self.get(tenant, path.stem))
            except VolumeNotFound:
                continue
        return found

    def listed(self, tenant: str) -> list[tuple[Volume, int | None, list[str]]]:
        """The tenant's volumes, each with the bytes written into it (when mounted) and the sandboxes mounting it."""
        return [(volume, self.used_bytes(tenant, volume.name), self.users(tenant, volume.name))
                for volume in self.list(tenant)]

    def used_bytes(self, tenant: str, name: str) -> int | None:
        """Bytes written into the volume, while it is mounted here (None when it is not)."""
        mount_point = self._mount_point(tenant, name)
        if not os.path.ismount(mount_point):
            return None
        stats = os.statvfs(mount_point)
        return (stats.f_blocks - stats.f_bfree) * stats.f_frsize

    def users(self, tenant: str, name: str) -> list[str]:
        return self._users(tenant, name)

    async def create(self, tenant: str, name: str, size_mb: int) -> Volume:
        self._require()
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise VolumeError(f"A volume's name is 1 to 63 lowercase letters, digits, '_' or '-', starting with a "
                              f"letter or digit; got {shown(str(name))}.")
        largest = self.max_bytes // (1024 * 1024)
        if isinstance(size_mb, bool) or not isinstance(size_mb, int) or not MIN_SIZE_MB <= size_mb <= largest:
            raise VolumeError(f"size_mb must be a whole number from {MIN_SIZE_MB} to {largest} "
                              "(SANDBOX_VOLUME_MAX_BYTES, what one tenant's volumes may hold together).")
        async with self._lock(tenant):
            mine = self.list(tenant)
            if any(volume.name == name for volume in mine):
                raise VolumeError(f"You already have a volume named {name!r}; mount it with create_container(volumes="
                                  "[...]), or delete_volume it first.")
            if len(mine) >= self.max_per_tenant:
                raise VolumeError(f"You have {len(mine)} volumes, the most allowed (SANDBOX_MAX_VOLUMES_PER_TENANT). "
                                  "Delete one you no longer need with delete_volume.")
            held = sum(volume.size_bytes for volume in mine)
            size = size_mb * 1024 * 1024
            if held + size > self.max_bytes:
                raise VolumeError(f"Your volumes hold {held // (1024 * 1024)} MB; {size_mb} MB more would pass the "
                                  f"{largest} MB all of a tenant's volumes may hold (SANDBOX_VOLUME_MAX_BYTES). "
                                  "Ask for less, or delete a volume you no longer need.")
            volume = Volume(name, tenant, size, time.time())
            image = self._image(tenant, name)
            try:
                image.parent.mkdir(parents=True, exist_ok=True)
                await self._make_fs(image, size)
                await self._mount(image, self._mount_point(tenant, name))
                (image.parent / f"{name}.json").write_text(json.dumps(
                    {"name": name, "tenant": tenant, "size_bytes": size, "created_at": volume.created_at}))
            except (DiskUnavailable, OSError) as exc:
                await self._remove(tenant, name)
                raise VolumeError(f"The volume {name!r} could not be made ({exc}); nothing was kept. Try again.") from None
        logger.info("made volume %s (%d MB) for tenant %s", name, size_mb, tenant)
        return volume

    async def delete(self, tenant: str, name: str) -> None:
        async with self._lock(tenant):
            self.get(tenant, name)
            users = self.users(tenant, name)
            if users or self._taking[(tenant, name)]:
                listed = ", ".join(users) or "one being created now"
                raise VolumeError(f"The volume {name!r} is mounted by sandbox(es) {listed}; destroy_container them "
                                  "first, then delete it.")
            await self._remove(tenant, name)
        logger.info("deleted volume %s of tenant %s", name, tenant)

    # ----- sandboxes that mount them

    def check(self, tenant: str, asked: Sequence[VolumeMount]) -> tuple[VolumeMount, ...]:
        """create_container's volumes, checked against the tenant's volumes; VolumeError says what is wrong."""
        if not asked:
            return ()
        self._require()
        mounts = tuple(VolumeMount(m.name, check_mount_path(m.path), m.read_only) for m in asked)
        names = [m.name for m in mounts]
        paths = [m.path for m in mounts]
        for name in names:
            self.get(tenant, name)
        if len(set(names)) != len(names):
            raise VolumeError("Each volume may be mounted once in a sandbox; a volume was named twice in volumes.")
        for path in paths:
            if any(other != path and other.startswith(path.rstrip("/") + "/") for other in paths) or paths.count(path) > 1:
                raise VolumeError(f"Two volumes would be mounted at or under {path}; give each its own folder.")
        return mounts

    @asynccontextmanager
    async def taken(self, tenant: str, mounts: Sequence[VolumeMount]) -> AsyncIterator[tuple[str, ...]]:
        """The volumes mounted on the host and kept from deletion while their sandbox is made;
        yields the bind mounts (``host:path[:ro]``) for the container."""
        keys = [(tenant, m.name) for m in mounts]
        self._taking.update(keys)
        try:
            binds = []
            for mount in mounts:
                await self.ensure_mounted(tenant, mount.name)
                binds.append(f"{self.source(tenant, mount.name)}:{mount.path}" + (":ro" if mount.read_only else ""))
            yield tuple(binds)
        finally:
            self._taking.subtract(keys)
            for key in keys:
                if self._taking[key] <= 0:
                    del self._taking[key]

    async def ensure_mounted(self, tenant: str, name: str) -> None:
        """Mount a volume again where a reboot of the host undid it."""
        mount_point = self._mount_point(tenant, name)
        if os.path.ismount(mount_point):
            return
        async with self._lock(tenant):
            self.get(tenant, name)
            try:
                await self._mount(self._image(tenant, name), mount_point)
            except (DiskUnavailable, OSError) as exc:
                raise VolumeError(f"The volume {name!r} could not be mounted ({exc}). Try again.") from None

    # ----- the host's part

    def _require(self) -> None:
        if not self.enabled:
            raise VolumeError(f"Volumes are not available on this server ({self.why_not}). Keep files in the sandbox "
                              "itself, or ask the server's operator.")

    async def _make_fs(self, image: Path, size: int) -> None:
        with open(image, "wb") as handle:
            handle.truncate(size)
        # 4 KiB blocks whatever the size: under 512 MB mke2fs takes its "small" type, 1 KiB blocks, which
        # wrote a quarter slower (the bench's volume row).
        await run_tool("mkfs.ext4", "-q", "-F", "-b", "4096", "-O", "^has_journal", "-E", "nodiscard", "-m", "0",
                       str(image), env=self._env)

    async def _mount(self, image: Path, mount_point: Path) -> None:
        mount_point.mkdir(parents=True, exist_ok=True)
        if not os.path.ismount(mount_point):
            ensure_free_loop_node()
            await run_tool("mount", "-o", "loop,nodev,nosuid", str(image), str(mount_point), env=self._env)
        files = mount_point / FILES
        files.mkdir(exist_ok=True)
        files.chmod(0o777)  # for whichever user an image runs as

    async def _unmount(self, mount_point: Path) -> None:
        if not os.path.ismount(mount_point):
            return
        try:
            await run_tool("umount", str(mount_point), env=self._env)
        except DiskUnavailable:  # a container still going holds it: it goes with the last of them
            await run_tool("umount", "-l", str(mount_point), env=self._env)

    async def _remove(self, tenant: str, name: str) -> None:
        mount_point = self._mount_point(tenant, name)
        await self._unmount(mount_point)
        if not os.path.ismount(mount_point):
            shutil.rmtree(mount_point, ignore_errors=True)
        (self._folder(tenant) / f"{name}.json").unlink(missing_ok=True)
        self._image(tenant, name).unlink(missing_ok=True)
