"""The sandbox manager: the facade the server talks to. It wires the parts together and keeps
what joins them: create (creation.py), destroy (endings.py), and a sandbox's life (lifecycle.py);
its commands and files are handed on by manager_inside.py.

Every sandbox is a container started with the exact limits of the product contract and
labelled so that a restarted server can find it again. What a restart must find lives
where a restart finds it: lifetimes in Podman labels; commands, their output and exit
codes, and file links inside the sandbox (see runtime/command_runtime/command_records.py). The server's memory only
caches what it can read back.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import anyio.to_thread
from anyio.abc import ByteStream

from ..settings import SandboxSettings
from .backend.abstract import Backend, Usage
from .backend.disks import SandboxDisks
from .backend.kubernetes.api import Cluster
from .backend.kubernetes.backend import KubernetesBackend
from .backend.podman import PodmanBackend
from .backend.podman_cli import Podman, check_event_loop, system_env
from .backend.terminal import Terminal
from .background import BackgroundTasks
from .containers import SandboxContainers
from .creation import Creation
from .egress_changes import EgressChanges
from .endings import Endings
from .errors import SandboxError
from .health import HealthProbe
from .idempotency import IdempotencyKeys
from .lifecycle import Lifecycle
from .lifetimes import Lifetimes
from .limits import LimitsCheck
from .manager_inside import InsideSandboxes
from .model import LOCAL_TENANT, Sandbox, VolumeMount
from .network.cluster_egress import ClusterEgress
from .network.egress import Egress
from .network.preview_links import PortLink, PortLinks
from .pool import WarmPool
from .registry import SandboxRegistry
from .removals import DRAIN_SECONDS, Removals
from .runtime.channel import find_agent_binary
from .runtime.commands import CommandRunner
from .runtime.gone_commands import GONE_DESTROYED, GONE_REMOVED, GoneCommands
from .runtime.helpers import helpers_digest, helpers_files, helpers_tar
from .runtime.runtimes import AgentChannels, ExecRuntime, Runtimes
from .storage.file_links import FileLinks
from .storage.file_reading import FileReader
from .storage.snapshots import Snapshot, Snapshots
from .storage.volumes import Volume, Volumes

logger = logging.getLogger("mcp_sandbox.manager")


def chosen_backend(settings: SandboxSettings, podman: Podman) -> Backend:
    """Where sandboxes live, as SANDBOX_BACKEND says; ValueError when a cluster is asked for and none is named."""
    if settings.backend == "kubernetes":
        cluster = Cluster.find(dict(settings.kubernetes.cluster_env))
        return KubernetesBackend(settings.kubernetes, cluster, disk_bytes=settings.disk_limit_bytes,
                                 egress_policy=settings.egress)
    return PodmanBackend.with_api(podman, settings.podman_api, settings.netns)


async def reach_cluster(backend: KubernetesBackend, settings: SandboxSettings) -> None:
    """A server told to run sandboxes on a cluster it cannot reach does not start."""
    try:
        version = await backend.version()
    except SandboxError as exc:
        raise SandboxError(f"SANDBOX_BACKEND=kubernetes, but {exc}. Check KUBECONFIG (or the service account "
                           "the server runs under) and that the cluster is up; docs/kubernetes.md.") from None
    logger.info("sandboxes are Pods in namespace %s of Kubernetes %s", settings.kubernetes.namespace, version)


class SandboxManager(InsideSandboxes):
    """Creates, tracks, reaps and destroys sandboxes; runs commands; serves files."""

    def __init__(self, settings: SandboxSettings, backend: Backend | None = None) -> None:
        """``backend``: where sandboxes live; Podman's unless given (tests/support has a stand-in)."""
        self.settings = settings
        self.podman = Podman(settings.podman, settings.runtime, timeout_cap=settings.podman_timeout_seconds)
        self.backend: Backend = backend if backend is not None else chosen_backend(settings, self.podman)
        self.disks = SandboxDisks(settings.disk_dir, settings.namespace, settings.disk_limit_bytes, self.backend)
        # Why sandboxes cannot be given their limits here ("" while they can): decided at start
        # from Podman's own account, and again from the first sandbox's cgroup.
        self.limits = LimitsCheck(self.backend)
        self.egress = (ClusterEgress if self.backend.name == "kubernetes" else Egress)(settings, self.backend, system_env())
        self.snapshots = Snapshots(
            Path(settings.state_dir) / settings.namespace / "snapshots", settings.snapshot_ttl_seconds,
            settings.max_snapshots_per_tenant, settings.snapshot_max_bytes, self.backend, self.disks,
            settings.runtime, system_env())
        # A tenant asking after a sandbox that expired hears where its files went.
        self.registry = SandboxRegistry(settings.max_containers, settings.max_per_tenant,
                                        lambda container_id, tenant: self.endings.gone_note(container_id, tenant))
        # Per sandbox, the commands last seen running (with their output so far); kept in a
        # tombstone when the sandbox goes, so their end can be told as reason sandbox_gone.
        self._gone = GoneCommands()
        self._background = BackgroundTasks()
        # The agent binary and what each sandbox gets: found (or built) at start, never at import.
        self._agent: Path | None = None
        self._helpers = b""  # as a tar stream, for podman exec
        self._helper_files: list[tuple[str, bytes, int]] = []  # as files, for a sandbox's disk
        self._helpers_digest = ""
        exec_runtime = ExecRuntime(
            self.backend, lambda: self._helpers, lambda container_id: self.endings.forget(container_id, GONE_REMOVED),
            self._background.start_soon, self._gone.never_started,
        )
        self.channels = AgentChannels(
            self.backend, exec_runtime, lambda: self.podman.spawn_options, self._background.start_soon,
            settings.output_file_max_bytes, settings.max_channels, settings.channel_idle_seconds,
        )
        self.runtimes = Runtimes(self.channels, exec_runtime)
        self.containers = SandboxContainers(
            settings, self.backend, self.disks, self.limits, self.egress, exec_runtime, lambda: self._helpers_digest,
            lambda: self._helper_files,
        )
        self.commands = CommandRunner(settings, self.registry.get, self.registry.live, self.runtimes, self._gone)
        self.commands.sole = not self.backend.shared  # other servers start commands in shared sandboxes too
        self.reader = FileReader(settings.read_max_bytes, self.registry.get, self.runtimes)
        self.links = FileLinks(
            settings.file_max_bytes, settings.write_max_bytes, self.registry.get, self.registry.live, self.runtimes,
            self.backend, lambda: self.podman.spawn_options,
        )
        self.volumes = Volumes(settings.disk_dir, settings.namespace, settings.max_volumes_per_tenant,
                               settings.volume_max_bytes, self.registry.mounting)
        self.containers.volumes = self.volumes
        self.egress_changes = EgressChanges(self.egress, self.backend, self.runtimes)
        self.ports = PortLinks(Path(settings.state_dir) / settings.namespace / "ports", settings.max_ports,
                               self.registry.get, self.registry.live, self.backend)
        self._wire_comings_and_goings(settings)

    def _wire_comings_and_goings(self, settings: SandboxSettings) -> None:
        """The parts that make sandboxes (creation, the pool), end them (endings, removals) and keep
        them across restarts (lifecycle, lifetimes), over the parts made before."""
        self.lifetimes = Lifetimes(Path(settings.state_dir) / settings.namespace / "lifetimes")
        self.creation = Creation(settings, self.backend, self.registry, self.containers, self.snapshots, self.egress,
                                 self.limits, self.channels, self.runtimes, self.commands, self.lifetimes,
                                 self._background.start_soon)
        self.pool = self.creation.pool = WarmPool(
            settings.pool_size, self.creation.make_pooled, self.creation.claim_pooled, self.creation.discard,
            lambda: not self.limits.problem, settings.pool_max, settings.pool_idle_seconds, self.creation.room,
            Path(settings.state_dir) / settings.namespace / "pool-demand.json")
        self.health_probe = HealthProbe(self.backend, self.limits, self.disks, self.registry, self.egress, self.pool)
        self.channels.pooled = self.pool.holds
        self.endings = Endings(self.registry, self._gone, self.containers, self.disks, self.channels, self.commands,
                               self.links, self.snapshots, self.ports, self.egress, self.lifetimes, self._background)
        # destroy_container answers at once; the container goes in the background (removals.py).
        self.removals = self.endings.removals = Removals(
            Path(settings.state_dir) / settings.namespace / "removing", self.endings.remove_destroyed, self._background)
        self.lifecycle = Lifecycle(self.containers, self.registry, self.pool, self.links, self.channels,
                                   self.snapshots, self.ports, self.destroy, self.endings.forget, self.removals,
                                   self.lifetimes)
        keys = IdempotencyKeys(Path(settings.state_dir) / settings.namespace / "idempotency")
        self.creation.keys = self.endings.keys = self.lifecycle.keys = keys
        self.creation.volumes = self.volumes
        self.creation.removals = self.removals
        self.creation.discard_created = lambda sandbox: self.destroy(sandbox.container_id, sandbox.tenant)

    # ----- the server's own life

    async def start(self) -> None:
        """Adopt this namespace's sandboxes, destroy expired ones, start the reaper."""
        check_event_loop()
        await self._background.start()
        if isinstance(self.backend, PodmanBackend):
            await self.backend.open()
        self._agent = await anyio.to_thread.run_sync(find_agent_binary, self.settings.agent_path)
        if self._agent is None:
            logger.warning("no sandbox agent binary (build it with scripts/setup.sh or set SANDBOX_AGENT); "
                           "every command will cost a podman exec")
        self._helper_files = helpers_files(self._agent)
        self._helpers = helpers_tar(self._helper_files)
        self._helpers_digest = helpers_digest(self._agent)
        self.channels.enabled = self._agent is not None
        self.pool.reset()  # rebuilt from Podman by adopt(), as big as the last server's was
        if isinstance(self.backend, KubernetesBackend):
            await reach_cluster(self.backend, self.settings)
            self.disks.why_not = (f"on Kubernetes the Pod's ephemeral-storage limit ({self.settings.disk_limit_bytes} "
                                  "bytes, SANDBOX_DISK_LIMIT_BYTES) stands for it: the kubelet evicts a Pod past it")
        else:
            await self.disks.probe()
        if self.disks.enabled:
            logger.info("each sandbox gets a disk of its own: %d bytes", self.disks.limit_bytes)
        elif self.backend.name != "kubernetes":
            logger.warning("sandbox disk use is NOT bounded (%s): a sandbox can fill the disk under Podman's "
                           "storage", self.disks.why_not)
        await self.volumes.probe(f"the {self.backend.name} backend keeps no volumes" if self.backend.shared else "")
        await self.limits.check_host()
        await self.egress.start()
        await anyio.to_thread.run_sync(self.snapshots.load)
        await anyio.to_thread.run_sync(self.ports.load)
        try:
            await self.lifecycle.adopt()
        except SandboxError as exc:
            logger.warning("could not adopt existing sandboxes: %s", exc)
        if self.disks.enabled:
            await self.disks.release_spares()  # what a server that died left
            self._background.start_soon(self.disks.keep_spares)
        self._background.start_soon(self.lifecycle.reap_forever)
        if self.backend.shared:
            self._background.start_soon(self.lifecycle.follow_others)
        if self.settings.pool_size > 0:
            self._background.start_soon(self.pool.fill_forever)

    async def stop(self) -> None:
        """Stop following commands; sandboxes and their commands go on for the next start.
        Removals under way get a while to finish; the next start finishes the rest."""
        await self.removals.drain(DRAIN_SECONDS)
        await self.channels.close_all()
        await self.egress.stop()
        await self._background.stop()
        self.pool.save_demand()
        await self.disks.release_spares()
        if isinstance(self.backend, (PodmanBackend, KubernetesBackend)):
            await self.backend.aclose()
        self.podman.close()

    # ----- sandboxes

    def get(self, container_id: str, tenant: str = LOCAL_TENANT) -> Sandbox:
        return self.registry.get(container_id, tenant)

    def list(self, tenant: str = LOCAL_TENANT) -> list[Sandbox]:
        return self.registry.list(tenant)

    def usage(self, container_id: str, tenant: str = LOCAL_TENANT) -> Usage | None:
        """CPU time and memory from the sandbox's cgroup (None where the backend cannot tell)."""
        return self.backend.usage(self.get(container_id, tenant).name)

    def list_all(self) -> list[Sandbox]:
        """Every tenant's live sandboxes (the console's admin view)."""
        return [s for s in self.registry.all() if not s.destroying and not s.expired()]

    async def open_terminal(self, container_id: str, tenant: str = LOCAL_TENANT, cols: int = 80, rows: int = 24) -> Terminal:
        """A terminal session of a person's own in the sandbox: a login shell, under its limits."""
        return await self.backend.open_terminal(self.get(container_id, tenant).name, cols, rows)

    async def create(self, image: str | None = None, tenant: str = LOCAL_TENANT, ttl_seconds: int | None = None,
                     network: bool | None = None, allow_domains: list[str] | None = None,
                     snapshot_id: str | None = None, snapshot_on_expiry: bool = False,
                     idempotency_key: str | None = None, volumes: tuple[VolumeMount, ...] = (),
                     secrets: tuple[dict[str, str], ...] = ()) -> Sandbox:
        """A sandbox for the tenant (creation.py says how each argument shapes it)."""
        return await self.creation.create(image, tenant, ttl_seconds, network, allow_domains, snapshot_id,
                                          snapshot_on_expiry, idempotency_key, volumes, secrets)

    async def destroy(self, container_id: str, tenant: str = LOCAL_TENANT, why: str = GONE_DESTROYED) -> None:
        await self.endings.destroy(container_id, tenant, why)

    def extend(self, container_id: str, seconds: int, tenant: str = LOCAL_TENANT) -> Sandbox:
        return self.lifecycle.extend(self.get(container_id, tenant), seconds)

    async def set_egress(self, container_id: str, network: bool | None, allow_domains: list[str] | None,
                         tenant: str = LOCAL_TENANT) -> None:
        await self.egress_changes.set(self.get(container_id, tenant), network, allow_domains)

    def egress_of(self, container_id: str, tenant: str = LOCAL_TENANT) -> dict[str, object]:
        return self.egress.of(self.get(container_id, tenant).network, container_id)

    def snapshot_on_expiry(self, container_id: str, tenant: str = LOCAL_TENANT) -> bool:
        """Whether the sandbox's files are kept in a snapshot when it expires."""
        return self.snapshots.marked(self.get(container_id, tenant).container_id)

    async def container_status(self, container_id: str, tenant: str = LOCAL_TENANT) -> str:
        """The sandbox's state; an open channel's agent answers for it, else Podman (no channel is opened)."""
        sandbox = self.get(container_id, tenant)
        return await self.runtimes.ask(sandbox, lambda runtime: runtime.status(sandbox), open_channel=False)

    # ----- snapshots (snapshots.py)

    async def snapshot(self, container_id: str, name: str | None = None, tenant: str = LOCAL_TENANT) -> Snapshot:
        return await self.snapshots.take(self.get(container_id, tenant), name)

    def list_snapshots(self, tenant: str = LOCAL_TENANT) -> list[Snapshot]:
        return self.snapshots.list(tenant)

    def delete_snapshot(self, snapshot_id: str, tenant: str = LOCAL_TENANT) -> None:
        self.snapshots.delete(snapshot_id, tenant)

    # ----- volumes (storage/volumes.py)

    async def create_volume(self, name: str, size_mb: int, tenant: str = LOCAL_TENANT) -> Volume:
        return await self.volumes.create(tenant, name, size_mb)

    def list_volumes(self, tenant: str = LOCAL_TENANT) -> list[tuple[Volume, int | None, list[str]]]:
        return self.volumes.listed(tenant)

    async def delete_volume(self, name: str, tenant: str = LOCAL_TENANT) -> None:
        await self.volumes.delete(tenant, name)

    # ----- preview links (network/preview_links.py)

    async def expose_port(self, container_id: str, port: int, tenant: str = LOCAL_TENANT) -> PortLink:
        return await self.ports.expose(container_id, port, tenant)

    def port_links(self, container_id: str, tenant: str = LOCAL_TENANT) -> list[PortLink]:
        return self.ports.of(self.get(container_id, tenant).container_id)

    async def open_port(self, token: str) -> tuple[PortLink, ByteStream]:
        return await self.ports.open(token)

    def find_port_link(self, token: str) -> PortLink:
        """The live link of a preview token (PortLinkNotFound when there is none)."""
        return self.ports.find(token)[0]

    # ----- health

    async def health(self) -> dict[str, Any]:
        """Whether Podman answers, and what this server runs with (health.py)."""
        return await self.health_probe.health()
