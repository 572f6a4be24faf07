"""What a sandbox's container is made of, and its making and removal: the product's limits and
hardening, the labels a restarted server finds it by, its own disk (disks.py) or a volume for
the server's files, and the helpers installed inside. The backend (backend/) carries it out."""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from ..settings import SandboxSettings
from .backend.abstract import Backend, ContainerSpec
from .backend.disks import SandboxDisks
from .backend.podman import removal_failed
from .clock import clock
from .contract import HARDENING_FLAGS, LIMIT_FLAGS, ULIMIT_FLAGS
from .errors import DiskUnavailable, PodmanError, SandboxError, SnapshotFailed
from .limits import LimitsCheck
from .model import (
    LABEL_CREATED,
    LABEL_EXPIRES,
    LABEL_IMAGE,
    LABEL_MADE_UNDER,
    LABEL_MANAGED,
    LABEL_NAMESPACE,
    LABEL_NETWORK,
    LABEL_POOLED,
    LABEL_TENANT,
    LABEL_VOLUMES,
    LOCAL_TENANT,
    Sandbox,
    VolumeMount,
    volumes_label,
)
from .network.egress import Egress
from .network.egress_rules import BRIDGE_MAX_PORTS
from .paths import DATA_DIR, HELPERS_COPY, MAIN_WITH_HELPERS, STATE_TMPFS
from .runtime.runtimes import ExecRuntime
from .storage.volumes import Volumes


class SandboxContainers:
    def __init__(
        self, settings: SandboxSettings, backend: Backend, disks: SandboxDisks, limits: LimitsCheck, egress: Egress,
        exec_runtime: ExecRuntime, helpers_digest: Callable[[], str],
        helper_files: Callable[[], list[tuple[str, bytes, int]]] = list,
    ) -> None:
        self.settings, self.backend, self.disks, self.limits, self.egress = settings, backend, disks, limits, egress
        self.exec_runtime = exec_runtime
        self._helpers_digest, self._helper_files = helpers_digest, helper_files
        self._made_under: dict[str, str] | None = None
        self.volumes: Volumes | None = None  # set by the manager: mounted again before a restart

    async def made_under(self) -> dict[str, str]:
        """Everything that shapes a sandbox of the default kind, as a pooled one records it."""
        if self._made_under is None or not self._made_under["image_id"]:
            self._made_under = {
                "image": self.settings.image,
                "image_id": await self.backend.image_id(self.settings.image),
                "runtime": self.settings.runtime,
                "network": self.egress.network,
                "egress": " ".join((self.egress.policy, *self.egress.allow_cidrs)),
                "dns": " ".join(self.egress.dns),
                "flags": " ".join((*LIMIT_FLAGS, *ULIMIT_FLAGS, *HARDENING_FLAGS, STATE_TMPFS)),
                "disk_bytes": str(self.disks.limit_bytes if self.disks.enabled else 0),
                "helpers": self._helpers_digest(),
            }
        return self._made_under

    async def start(
        self, image: str, pooled: bool, tenant: str = LOCAL_TENANT, ttl: int | None = None, network: str | None = None,
        layer: Path | None = None, mounts: tuple[VolumeMount, ...] = (), binds: tuple[str, ...] = (),
    ) -> Sandbox:
        """A new sandbox, running, its limits verified and its helpers installed; nothing is left
        behind when it fails. With layer (a snapshot's archive), its files start as the snapshot's;
        mounts: the tenant's volumes it mounts, at the host folders of binds (storage/volumes.py)."""
        container_id = secrets.token_hex(16)
        created = clock.now()
        sandbox = Sandbox(container_id, image, created, created + (ttl or self.settings.ttl_seconds), tenant=tenant,
                          network=network or await self.egress.network_for_new(), volumes=mounts)
        labels = await self._labels(sandbox, pooled)
        try:
            # DATA_DIR: on the sandbox's disk, or on an anonymous volume that goes with the container
            # (podman rm -v).
            spec = sandbox_spec(sandbox, labels, self.egress.dns_for(sandbox.network))
            helpers_placed = False
            if self.disks.enabled:
                root = await self.disks.create(sandbox.name, image, layer)
                spec = replace(spec, image="", rootfs=str(self.disks.root(sandbox.name)), env=root.env,
                               workdir=root.workdir, volumes=(f"{self.disks.data(sandbox.name)}:{DATA_DIR}",))
                layer = None
                # The helpers go onto the disk from here, and the container's main process puts
                # them in place: a podman exec less for every new sandbox.
                if self._helper_files():
                    self.disks.place(sandbox.name, HELPERS_COPY, self._helper_files())
                    spec = replace(spec, command=("/bin/sh", "-c", MAIN_WITH_HELPERS))
                    helpers_placed = True
            spec = replace(spec, volumes=(*spec.volumes, *binds))
            warnings = await self.backend.start(spec, layer)
            self.egress.hold_bridge_address(sandbox.network)
        except SnapshotFailed:
            await self.remove(sandbox.name)
            raise
        except DiskUnavailable as exc:
            raise SandboxError(f"Could not prepare the sandbox's disk: {exc}. Try again; if it persists, an "
                               "operator can set SANDBOX_DISK_LIMIT_BYTES=0 to run sandboxes without one.") from None
        except PodmanError as exc:
            await self.remove(sandbox.name)
            raise _start_failure(exc, sandbox, image) from None
        try:
            await self.limits.verify(sandbox, warnings)
            if not helpers_placed:
                await self.exec_runtime.install_helpers(sandbox)
        except SandboxError:
            await self.remove(sandbox.name)
            raise
        return sandbox

    async def _labels(self, sandbox: Sandbox, pooled: bool) -> dict[str, str]:
        return sandbox_labels(sandbox, self.settings.namespace, await self.made_under() if pooled else None)

    async def restart(self, sandbox: Sandbox) -> None:
        """Start a stopped sandbox again (after a reboot of the host), its disk mounted first."""
        if self.disks.exists(sandbox.name):  # mounts do not survive a reboot of the host
            await self.disks.remount(sandbox.name, sandbox.image)
        for mount in sandbox.volumes if self.volumes is not None else ():
            await self.volumes.ensure_mounted(sandbox.tenant, mount.name)
        await self.backend.restart(sandbox.name)

    async def remove(self, name: str, check: bool = False) -> None:
        """Remove a sandbox's container and then its disk; with check, a failure is raised."""
        if not name:
            return
        failure = removal_failed(await self.backend.remove(name))
        if failure is not None:
            if check:
                raise failure
            return
        await self.disks.release(name)


def sandbox_labels(sandbox: Sandbox, namespace: str, made_under: dict[str, str] | None = None) -> dict[str, str]:
    """What a restarted server finds the sandbox by: its lifetime, image and network, and its tenant,
    or for a pooled one (``made_under`` given) what it was made under."""
    labels = {
        LABEL_MANAGED: "true",
        LABEL_NAMESPACE: namespace,
        LABEL_CREATED: f"{sandbox.created_at:.3f}",
        LABEL_EXPIRES: f"{sandbox.expires_at:.3f}",
        LABEL_IMAGE: sandbox.image,
        LABEL_NETWORK: sandbox.network,
    }
    if sandbox.volumes:
        labels[LABEL_VOLUMES] = volumes_label(sandbox.volumes)
    if made_under is not None:
        labels[LABEL_POOLED] = "true"
        labels[LABEL_MADE_UNDER] = json.dumps(made_under, sort_keys=True, separators=(",", ":"))
    else:
        labels[LABEL_TENANT] = sandbox.tenant
    return labels


def sandbox_spec(sandbox: Sandbox, labels: dict[str, str], dns: tuple[str, ...] = ()) -> ContainerSpec:
    """A sandbox's container, run from its image: it only waits; the server's state tmpfs, and its data
    folder (DATA_DIR) on a mount of its own, never in the image's tree (which may be read-only to
    the sandbox's root). A sandbox disk changes this to run from the disk's root (start)."""
    return ContainerSpec(sandbox.name, labels, ("sleep", "2147483647"), image=sandbox.image, network=sandbox.network,
                         tmpfs=(STATE_TMPFS,), volumes=(DATA_DIR,), dns=dns)


def _start_failure(exc: PodmanError, sandbox: Sandbox, image: str) -> PodmanError:
    """Podman's failure to start a sandbox, said as what to do about it where the cause is known."""
    if "exchange full" in exc.stderr.lower():  # netavark adding the veth to a bridge at BR_MAX_PORTS
        return PodmanError(
            exc.argv, exc.exit_code, exc.stderr,
            f"The bridge of the sandbox network {sandbox.network!r} is full: Linux puts at most "
            f"{BRIDGE_MAX_PORTS} ports on a bridge, one for each sandbox with a network (the warm pool's "
            "included; ports other programs left there count too). Try again, or create this one with "
            "network=false; an operator can lower SANDBOX_NETWORK_SANDBOXES, after which new sandboxes go to "
            "the next network sooner.",
        )
    if "num_locks" in exc.stderr:  # libpod's lock per container, from a fixed number
        return PodmanError(
            exc.argv, exc.exit_code, exc.stderr,
            "Podman has no lock left for another container: it keeps at most num_locks of them (2,048 unless "
            "containers.conf raises it). Destroy sandboxes you no longer need; an operator can run "
            "scripts/setup.sh while nothing uses Podman, which raises it to 16,384.",
        )
    if "image not known" in exc.stderr or "pull" in exc.stderr.lower() or "manifest" in exc.stderr.lower():
        return PodmanError(
            exc.argv, exc.exit_code, exc.stderr,
            f"The image {image!r} is not available on this host and could not be pulled. "
            "An operator can load it (scripts/setup.sh builds an offline image).",
        )
    return exc
