"""Snapshots: a sandbox's files kept beyond its life, and new sandboxes forked from them.

A snapshot is the sandbox's writable layer (everything written, changed or deleted since its
image) as one archive (layers.py), taken on the host while the sandbox is frozen (the cgroup
freezer, ``podman pause``) so that it is consistent, then thawed: the sandbox carries on. It
is kept with a small record beside it in the server's state folder:

    <SANDBOX_STATE_DIR>/<namespace>/snapshots/<snapshot_id>.tar    the layer
    <SANDBOX_STATE_DIR>/<namespace>/snapshots/<snapshot_id>.json   who owns it, its base image, when it expires
    <SANDBOX_STATE_DIR>/<namespace>/snapshots/on-expiry/<container_id>   "snapshot this one when it expires"

so that snapshots survive restarts of the server and of the host. Processes and memory are not
part of a snapshot (checkpointing them with CRIU does not work on hosts of this kind).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import anyio

from ..backend.abstract import Backend
from ..backend.disks import SandboxDisks
from ..backend.layers import pack
from ..errors import (
    SandboxError,
    SnapshotFailed,
    SnapshotLimitReached,
    SnapshotNotFound,
    SnapshotTooLarge,
)
from ..model import CONTAINER_ID_RE, Sandbox, utc_iso

logger = logging.getLogger("mcp_sandbox.snapshots")

SNAPSHOT_ID_RE = re.compile(r"^snap-[0-9a-f]{32}$")
MAX_NAME_CHARS = 128
# Snapshots never take the volume they are kept on below this share of free space.
KEEP_FREE_FRACTION = 0.10
REASON_REQUESTED, REASON_EXPIRED = "requested", "expired"


@dataclass(frozen=True)
class Snapshot:
    snapshot_id: str
    name: str
    tenant: str
    size_bytes: int
    created_at: float
    expires_at: float
    source_container_id: str
    reason: str  # REASON_REQUESTED or REASON_EXPIRED
    image: str  # the base image, as the source sandbox named it
    image_id: str  # and the id it was made from: a fork sits on the same layers


class Snapshots:
    def __init__(self, settings_dir: Path, ttl_seconds: int, max_per_tenant: int, max_bytes: int,
                 backend: Backend, disks: SandboxDisks, runtime: str, env: dict[str, str]) -> None:
        self.dir = settings_dir
        self.ttl_seconds, self.max_per_tenant, self.max_bytes = ttl_seconds, max_per_tenant, max_bytes
        self.backend, self.disks, self._runtime, self._env = backend, disks, runtime, env
        self._index: dict[str, Snapshot] = {}
        # One snapshot is written at a time: the quotas and the host's free space are checked
        # against what is really there.
        self._writing = anyio.Lock()
        # Sandboxes whose snapshot at expiry failed: what check_container then says (this run only).
        self._expiry_failed: dict[str, tuple[str, str]] = {}
        self._kept_images: set[str] = set()  # image ids already kept from removal (backend.keep_image)

    # ----- the record on the host

    @property
    def _marks(self) -> Path:
        return self.dir / "on-expiry"

    def archive(self, snapshot: Snapshot) -> Path:
        return self.dir / f"{snapshot.snapshot_id}.tar"

    def load(self) -> None:
        """Read the snapshots kept by earlier runs; drop half-written ones and expired ones."""
        self._index.clear()
        if not self.dir.is_dir():
            return
        for part in self.dir.glob("*.part"):
            part.unlink(missing_ok=True)
        for record in self.dir.glob("snap-*.json"):
            try:
                snapshot = Snapshot(**json.loads(record.read_text()))
            except (OSError, ValueError, TypeError) as exc:
                logger.warning("removing unreadable snapshot record %s: %s", record.name, exc)
                self._remove_files(record.stem)
                continue
            if SNAPSHOT_ID_RE.match(snapshot.snapshot_id) and (self.dir / f"{snapshot.snapshot_id}.tar").exists():
                self._index[snapshot.snapshot_id] = snapshot
            else:
                self._remove_files(record.stem)
        for archive in self.dir.glob("snap-*.tar"):
            if archive.stem not in self._index:
                archive.unlink(missing_ok=True)
        self.reap_expired()
        if self._index:
            logger.info("kept %d snapshot(s) from earlier runs", len(self._index))

    def _remove_files(self, snapshot_id: str) -> None:
        for suffix in (".tar", ".json", ".tar.part", ".json.part"):
            (self.dir / f"{snapshot_id}{suffix}").unlink(missing_ok=True)

    def _save(self, snapshot: Snapshot) -> None:
        part = self.dir / f"{snapshot.snapshot_id}.json.part"
        part.write_text(json.dumps(asdict(snapshot)))
        os.chmod(part, 0o600)
        part.rename(self.dir / f"{snapshot.snapshot_id}.json")

    # ----- what tenants see

    def get(self, snapshot_id: str, tenant: str) -> Snapshot:
        """The tenant's snapshot; another tenant's is answered exactly like one that does not exist."""
        snapshot = self._index.get(snapshot_id) if isinstance(snapshot_id, str) else None
        if snapshot is None or snapshot.tenant != tenant:
            raise SnapshotNotFound(str(snapshot_id))
        if snapshot.expires_at <= time.time():
            raise SnapshotNotFound(snapshot_id, f" (it expired at {utc_iso(snapshot.expires_at)})")
        return snapshot

    def list(self, tenant: str) -> list[Snapshot]:
        now = time.time()
        return sorted((s for s in self._index.values() if s.tenant == tenant and s.expires_at > now),
                      key=lambda s: s.created_at)

    def delete(self, snapshot_id: str, tenant: str) -> None:
        snapshot = self.get(snapshot_id, tenant)
        self._index.pop(snapshot.snapshot_id, None)
        self._remove_files(snapshot.snapshot_id)
        logger.info("deleted snapshot %s", snapshot.snapshot_id)

    def reap_expired(self, now: float | None = None) -> list[str]:
        now = time.time() if now is None else now
        expired = [s.snapshot_id for s in self._index.values() if s.expires_at <= now]
        for snapshot_id in expired:
            self._index.pop(snapshot_id, None)
            self._remove_files(snapshot_id)
            logger.info("snapshot %s expired; removed it", snapshot_id)
        return expired

    def kept_from(self, container_id: str, tenant: str) -> str:
        """What a gone sandbox of the tenant left: where its files went at expiry, for the message
        about it ("" when nothing is known)."""
        for snapshot in self._index.values():
            if snapshot.source_container_id == container_id and snapshot.tenant == tenant \
                    and snapshot.reason == REASON_EXPIRED and snapshot.expires_at > time.time():
                return (f" (it reached the end of its lifetime; its files were kept in snapshot "
                        f"{snapshot.snapshot_id} until {utc_iso(snapshot.expires_at)}: "
                        f"create_container(snapshot_id='{snapshot.snapshot_id}') continues from them)")
        failed = self._expiry_failed.get(container_id)
        if failed is not None and failed[0] == tenant:
            return f" (it reached the end of its lifetime; its files could not be kept: {failed[1]})"
        return ""

    async def base_image(self, snapshot: Snapshot) -> str:
        """The image a fork of the snapshot runs on: its name while that still names the same
        image, else the image by its id (kept from removal while snapshots use it)."""
        if not snapshot.image_id or await self.backend.image_id(snapshot.image) == snapshot.image_id:
            return snapshot.image
        if await self.backend.image_id(snapshot.image_id):
            return snapshot.image_id
        raise SnapshotFailed(f"The image the snapshot was taken on ({snapshot.image!r}, id {snapshot.image_id[:12]}) "
                             "is no longer on this host, and its files sit on that image; an operator can load it again.")

    # ----- a snapshot when the sandbox expires

    def mark(self, container_id: str) -> None:
        self._marks.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self._marks / container_id).touch()

    def marked(self, container_id: str) -> bool:
        return CONTAINER_ID_RE.match(container_id) is not None and (self._marks / container_id).exists()

    def unmark(self, container_id: str) -> None:
        if CONTAINER_ID_RE.match(container_id):
            (self._marks / container_id).unlink(missing_ok=True)

    def keep_marks(self, container_ids: set[str]) -> None:
        """Forget the marks of sandboxes that are no more (called after adoption)."""
        if self._marks.is_dir():
            for mark in self._marks.iterdir():
                if mark.name not in container_ids:
                    mark.unlink(missing_ok=True)

    async def take_at_expiry(self, sandbox: Sandbox, running: bool = True) -> str:
        """The snapshot of a marked sandbox whose lifetime ended; returns what its gone-message
        adds ("" when it was not marked). A failure is logged and told, never raised."""
        if not self.marked(sandbox.container_id):
            return ""
        try:
            snapshot = await self.take(sandbox, None, REASON_EXPIRED, running)
        except SandboxError as exc:
            logger.error("sandbox %s expired; its snapshot failed: %s", sandbox.container_id, exc)
            self._expiry_failed[sandbox.container_id] = (sandbox.tenant, str(exc))
            return f"; its files could not be kept: {exc}"
        finally:
            self.unmark(sandbox.container_id)
        return (f"; its files were kept in snapshot {snapshot.snapshot_id} "
                f"(create_container(snapshot_id='{snapshot.snapshot_id}') continues from them)")

    # ----- taking one

    async def take(self, sandbox: Sandbox, name: str | None, reason: str = REASON_REQUESTED,
                   running: bool = True) -> Snapshot:
        """Snapshot the sandbox's files as they are now; it is frozen meanwhile, then carries on."""
        name = check_name(name)
        async with self._writing:
            cap, binding = self._room(sandbox.tenant)
            upper, image_id = await self._layer(sandbox)
            snapshot_id = "snap-" + secrets.token_hex(16)
            part = self.dir / f"{snapshot_id}.tar.part"
            if image_id not in self._kept_images:  # forks need its layers
                await self.backend.keep_image(sandbox.image, image_id)
                self._kept_images.add(image_id)
            started = time.monotonic()
            try:
                frozen = running and await self._freeze(sandbox)
                try:
                    size = await pack(upper, part, cap, self._env)
                finally:
                    if frozen:
                        with anyio.CancelScope(shield=True):
                            await self.backend.thaw(sandbox.name)
            except SnapshotTooLarge as exc:
                raise SnapshotLimitReached(binding.format(size=exc.size_bytes)) from None
            os.chmod(part, 0o600)
            part.rename(self.dir / f"{snapshot_id}.tar")
            now = time.time()
            snapshot = Snapshot(snapshot_id, name or f"{sandbox.container_id[:8]}-{reason}", sandbox.tenant, size,
                                now, now + self.ttl_seconds, sandbox.container_id, reason, sandbox.image, image_id)
            self._save(snapshot)
            self._index[snapshot_id] = snapshot
        logger.info("snapshot %s of sandbox %s (%s): %d bytes in %.0f ms", snapshot_id, sandbox.container_id,
                    reason, size, (time.monotonic() - started) * 1000)
        return snapshot

    def _room(self, tenant: str) -> tuple[int, str]:
        """How many bytes the next snapshot of the tenant may take, and what to say when it takes more."""
        mine = self.list(tenant)
        if len(mine) >= self.max_per_tenant:
            raise SnapshotLimitReached(
                f"You already have {len(mine)} snapshots, the most one client may keep "
                "(SANDBOX_MAX_SNAPSHOTS_PER_TENANT). Delete one you no longer need with delete_snapshot.")
        used = sum(s.size_bytes for s in mine)
        left = self.max_bytes - used
        if left <= 0:
            raise SnapshotLimitReached(
                f"Your snapshots already hold {used} bytes, the most one client may keep (SANDBOX_SNAPSHOT_MAX_BYTES "
                f"= {self.max_bytes}). Delete snapshots you no longer need with delete_snapshot.")
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            stat = os.statvfs(self.dir)
            host_left = stat.f_bavail * stat.f_frsize - int(stat.f_blocks * stat.f_frsize * KEEP_FREE_FRACTION)
        except OSError:
            host_left = left
        if host_left < left:
            if host_left <= 0:
                raise SnapshotLimitReached(
                    "The server's disk is too full to keep a snapshot (snapshots leave 10% of it free). Delete "
                    "snapshots you no longer need with delete_snapshot; an operator can free space.")
            return host_left, ("The snapshot would take {size} bytes or more, beyond the room left on the server's "
                               "disk (snapshots leave 10% of it free). Remove large files you do not need from the "
                               "sandbox (or delete old snapshots) and try again.")
        return left, (f"The snapshot would take {{size}} bytes or more, beyond the {left} bytes left of your "
                      f"snapshot quota (SANDBOX_SNAPSHOT_MAX_BYTES = {self.max_bytes}; your snapshots hold {used}). "
                      "Delete snapshots you no longer need with delete_snapshot, or remove large files you do not "
                      "need from the sandbox first.")

    async def _layer(self, sandbox: Sandbox) -> tuple[Path, str]:
        """The sandbox's writable layer on this host, and the id of the image under it."""
        if self.disks.enabled and self.disks.exists(sandbox.name):
            if not os.path.ismount(self.disks.dir / sandbox.name / "fs"):
                await self.disks.remount(sandbox.name, sandbox.image)
            return self.disks.upper(sandbox.name), (await self.disks.image_root(sandbox.image)).image_id
        upper, image_id = await self.backend.writable_layer(sandbox.name)
        if not upper:
            raise SnapshotFailed(
                "Snapshots need the sandbox's files in an overlay (a disk of its own, or Podman's overlay storage); "
                "this server has neither (Podman stores containers with another driver and sandboxes get no disks "
                "of their own). An operator can give sandboxes disks (run the server as root with loop devices).")
        return Path(upper), image_id

    async def _freeze(self, sandbox: Sandbox) -> bool:
        if self._runtime:  # gVisor keeps written data in its own cache until a sync
            await self.backend.exec(sandbox.name, "sync", timeout=60)
        return await self.backend.freeze(sandbox.name)


def check_name(name: str | None) -> str:
    if name is None:
        return ""
    if len(name) > MAX_NAME_CHARS or not name.isprintable():
        raise SandboxError(
            f"A snapshot's name is at most {MAX_NAME_CHARS} printable characters (this one has {len(name)}); "
            "give a shorter one, or omit it.")
    return name.strip()
