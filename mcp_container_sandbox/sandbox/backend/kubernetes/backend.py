"""The Kubernetes backend: sandboxes as Pods of a cluster, driven through its API (api.py) and the
API server's pods/exec sessions (exec_stream.py). It implements ``Backend`` (../abstract.py).

What maps and how (docs/kubernetes.md):
- a sandbox is a Pod (pod.py) with the product's limits; it is made, listed by label, read and deleted
  through the API; the records a restarted server finds it by are the Pod's annotations;
- every process in it (the agent's channel, the exec fallback, a file's download, a terminal, a
  preview connection through the agent's relay) is an exec session: nothing runs on the server's
  host, and any replica reaches any sandbox;
- what a Pod has not: a writable layer on this host (snapshots and forks), the cgroup freezer, a
  disk of its own (the Pod's ephemeral-storage limit stands for it), the cgroup's usage figures and
  a bridge network of the server's (egress is the cluster's NetworkPolicy, chosen by a label).
"""

from __future__ import annotations

import logging
import re
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteStream

from ....settings import KubernetesSettings
from ...errors import DiskUnavailable, PortClosed, SandboxError, SandboxStopped, SnapshotFailed
from ...model import LABEL_EXPIRES, LABEL_MADE_UNDER, LABEL_POOLED
from ...paths import AGENT_PATH
from ..abstract import BridgeNetwork, Container, ContainerSpec, ImageRoot, Usage
from ..podman_cli import PodmanResult
from ..terminal import SHELL
from .api import ApiError, Cluster, Conflict, Expired, KubeApi
from .exec_stream import ExecFailed, ExecStream, exec_path
from .pod import CONTAINER, DEADLINE_GRACE_SECONDS, LABEL_EGRESS, SELECTED_BY, egress_label, sandbox_pod
from .terminal import PodTerminal

logger = logging.getLogger("mcp_sandbox.kubernetes")

START_SECONDS = 300.0  # a Pod's image pull and scheduling
POLL_SECONDS = (0.05, 1.0)  # a starting Pod is read again after this, doubling up to that
RECORDS = "records.mcp-sandbox"  # the prefix of the annotations that carry servers' records (put_records)
FOLLOW_RETRY_SECONDS = 2.0
MADE_BY = "mcp-sandbox.server-instance"  # the server process that made a Pod (Container.ours)
# A Pod that waits for one of these will not start by waiting longer.
STUCK = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError",
         "CreateContainerError", "RunContainerError")
NOT_HERE = "on the Kubernetes backend"


class KubernetesBackend:
    """Sandboxes as Pods in one namespace of a cluster."""

    name = "kubernetes"
    host_processes = False
    shared = True  # the cluster holds the sandboxes and their records: any number of servers share them

    def __init__(self, settings: KubernetesSettings, cluster: Cluster, *, disk_bytes: int = 0,
                 egress_policy: str = "public") -> None:
        self.settings, self.cluster = settings, cluster
        self.api = KubeApi(cluster, settings.namespace)
        self.disk_bytes, self.egress_policy = disk_bytes, egress_policy
        self.instance = secrets.token_hex(8)  # this server process, on the Pods it makes (Container.ours)
        self._ws_base = cluster.server.replace("https://", "wss://", 1).replace("http://", "ws://", 1)
        self._ssl = self._exec_ssl(cluster)

    @staticmethod
    def _exec_ssl(cluster: Cluster) -> ssl.SSLContext | None:
        if not cluster.server.startswith("https://"):
            return None
        context = cluster.ssl_context if isinstance(cluster.ssl_context, ssl.SSLContext) else ssl.create_default_context()
        if cluster.ssl_context is False:
            context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
        if cluster.client_cert:
            context.load_cert_chain(*cluster.client_cert)
        return context

    # ----- a sandbox's Pod

    async def start(self, spec: ContainerSpec, layer: Path | None = None) -> str:
        if layer is not None:
            raise SnapshotFailed(f"A sandbox cannot start from a snapshot {NOT_HERE} (docs/kubernetes.md).")
        manifest = sandbox_pod(spec, self.settings.namespace, self.disk_bytes, _lifetime(spec.labels),
                               self.settings.runtime_class, self.settings.node_selector, self.settings.tolerations,
                               egress_label(spec, self.egress_policy))
        manifest["metadata"]["annotations"][MADE_BY] = self.instance
        await self.api.create_pod(manifest)
        try:
            await self._until_running(spec.name, spec.image)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.remove(spec.name)
            raise
        return ""

    async def _until_running(self, name: str, image: str) -> None:
        deadline, pause = time.monotonic() + START_SECONDS, POLL_SECONDS[0]
        while True:
            pod = await self.api.get_pod(name)
            if pod is None:
                raise SandboxError(f"The sandbox's Pod {name} vanished while it started (deleted, or evicted); try again.")
            phase, waiting = _phase(pod), _waiting(pod)
            if phase == "Running" and _container_running(pod):
                return
            if phase in ("Succeeded", "Failed"):
                raise SandboxError(f"The sandbox's Pod {name} ended as it started ({_why_ended(pod)}).")
            if waiting and waiting[0] in STUCK:
                hint = (f" The cluster could not pull the image {image!r}: check its name and the nodes' access "
                        "to its registry." if "Image" in waiting[0] else "")
                raise SandboxError(f"The sandbox's Pod {name} cannot start: {waiting[0]}: {waiting[1][:300]}.{hint}")
            if time.monotonic() > deadline:
                raise SandboxError(f"The sandbox's Pod {name} did not start within {START_SECONDS:.0f} s (phase "
                                   f"{phase or 'unknown'}{': ' + waiting[0] if waiting else ''}); the cluster may "
                                   "lack room on the sandbox nodes. Try again later.")
            await anyio.sleep(pause)
            pause = min(pause * 2, POLL_SECONDS[1])

    async def restart(self, name: str) -> None:
        pod = await self.api.get_pod(name)
        if pod is not None and _phase(pod) == "Pending":  # still starting (made just before a restart)
            await self._until_running(name, "")
            return
        raise SandboxStopped(f"The sandbox's Pod {name} has ended ({_why_ended(pod) if pod else 'gone'}); a Pod "
                             "does not start again.")

    async def remove(self, name: str) -> PodmanResult:
        argv = ["kubernetes", "delete", "pod", name]
        try:
            found = await self.api.delete_pod(name)
        except ApiError as exc:
            return PodmanResult(argv, 1, b"", str(exc))
        return PodmanResult(argv, 0, b"" if found else b"gone already", "")

    async def list(self, labels: Mapping[str, str]) -> list[Container]:
        pods, _ = await self.api.list_pods(labels)
        return [self._container(pod) for pod in pods if not pod["metadata"].get("deletionTimestamp")]

    def _container(self, pod: Mapping[str, Any]) -> Container:
        annotations = dict(pod["metadata"].get("annotations") or {})
        records = {}
        for key, value in annotations.items():
            if key.startswith(RECORDS + "/") and key.endswith(".r"):
                kind, _, record = key[len(RECORDS) + 1:-2].partition(".")
                records[f"{kind}:{record}"] = value
        labels = {key: value for key, value in annotations.items() if not key.startswith(RECORDS + "/")}
        return Container(pod["metadata"]["name"], labels, _phase(pod) == "Running", _image(pod), records=records,
                         ours=annotations.get(MADE_BY) == self.instance,
                         address=str((pod.get("status") or {}).get("podIP") or ""))

    async def put_records(self, name: str, records: Mapping[str, str | None]) -> None:
        await self.api.patch_pod(name, {"metadata": {"annotations": {
            _record_annotation(record): value for record, value in records.items()}}})

    async def set_egress(self, name: str, egress: str) -> None:
        """The label the sandboxes' NetworkPolicies select the Pod by (LABEL_EGRESS): "proxied" puts it
        behind the servers' proxy."""
        await self.api.patch_pod(name, {"metadata": {"labels": {LABEL_EGRESS: egress}}})

    async def claim(self, name: str, labels: Mapping[str, str]) -> bool:
        """A merge patch conditioned on the resourceVersion the Pod was read at with its pooled label:
        of two servers claiming it, one wins and the other (409) is told False. Its selector labels and
        records become the claimer's, and it gets its deadline (a field that may be set once)."""
        pod = await self.api.get_pod(name)
        if pod is None or pod["metadata"].get("deletionTimestamp") or \
                (pod["metadata"].get("labels") or {}).get(LABEL_POOLED) != "true":
            return False
        selected = {key: labels.get(key) for key in (pod["metadata"].get("labels") or {}) if key in SELECTED_BY}
        patch: dict[str, Any] = {"metadata": {
            "labels": {**selected, **{key: value for key, value in labels.items() if key in SELECTED_BY}},
            "annotations": {**{key: None for key in (pod["metadata"].get("annotations") or {})
                               if key in (LABEL_POOLED, LABEL_MADE_UNDER)},
                            **labels, MADE_BY: self.instance}}}
        lifetime = _lifetime(labels)
        if lifetime is not None:
            patch["spec"] = {"activeDeadlineSeconds": lifetime + DEADLINE_GRACE_SECONDS}
        try:
            await self.api.patch_pod(name, patch, pod["metadata"]["resourceVersion"])
        except Conflict:
            return False
        return True

    async def follow(self, labels: Mapping[str, str]) -> AsyncIterator[tuple[str, Container]]:
        """A list, then a watch from its version; listed again after a 410 or a broken watch."""
        while True:
            try:
                pods, version = await self.api.list_pods(labels)
                for pod in pods:
                    yield ("DELETED" if pod["metadata"].get("deletionTimestamp") else "ADDED"), self._container(pod)
                async for kind, pod in self.api.watch_pods(labels, version):
                    yield ("DELETED" if pod["metadata"].get("deletionTimestamp") else kind), self._container(pod)
            except (ApiError, ValueError, KeyError) as exc:  # ValueError, KeyError: a watch event cut short
                if not isinstance(exc, Expired):
                    logger.warning("following the sandboxes' Pods: %s; listing again in %.0f s", exc, FOLLOW_RETRY_SECONDS)
                    await anyio.sleep(FOLLOW_RETRY_SECONDS)

    async def status(self, name: str) -> PodmanResult:
        argv = ["kubernetes", "get", "pod", name]
        try:
            pod = await self.api.get_pod(name)
        except ApiError as exc:
            return PodmanResult(argv, 1, b"", str(exc))
        if pod is None or pod["metadata"].get("deletionTimestamp"):
            return PodmanResult(argv, 1, b"", f"no such container: the Pod {name} does not exist")
        state = {"Running": "running", "Pending": "created"}.get(_phase(pod), "exited")
        return PodmanResult(argv, 0, state.encode() + b"\n", "")

    # ----- processes inside, all over exec sessions

    async def _session(self, name: str, argv: tuple[str, ...] | list[str], *, stdin: bool = True,
                       tty: bool = False) -> ExecStream:
        path = exec_path(self.settings.namespace, name, CONTAINER, argv, stdin=stdin, tty=tty)
        return await ExecStream.open(self._ws_base + path, {**self.cluster.headers, **self.cluster.bearer()}, self._ssl)

    async def open_stream(self, name: str, *argv: str) -> ByteStream:
        return await self._session(name, argv)

    async def exec(self, name: str, *argv: str, stdin: bytes | None = None, stdout_limit: int = 1024 * 1024,
                   timeout: float = 60) -> PodmanResult:
        # Stdin of a known length, ended by the process's own head -c: under v4.channel.k8s.io a
        # client cannot close stdin alone, and this reads the same under v5.
        command = ("/bin/sh", "-c", 'head -c "$0" | "$@"', str(len(stdin)), *argv) if stdin is not None else argv
        shown = ["kubernetes", "exec", name, *argv]
        try:
            session = await self._session(name, command, stdin=stdin is not None)
        except ExecFailed as exc:
            return PodmanResult(shown, 1, b"", _exec_refusal(str(exc)))
        kept = bytearray()
        try:
            with anyio.fail_after(timeout):
                if stdin:
                    await session.send(stdin)
                while True:
                    try:
                        data = await session.receive()
                    except anyio.EndOfStream:
                        break
                    kept += data[: max(0, stdout_limit - len(kept))]
        except TimeoutError:
            return PodmanResult(shown, 124, bytes(kept), f"the exec session did not end within {timeout:.0f} s")
        except anyio.BrokenResourceError:
            pass
        finally:
            await session.aclose()
        code = session.exit_code
        stderr = session.stderr.decode(errors="replace")
        if code is None:
            said = (session.status or {}).get("message", "")
            return PodmanResult(shown, 1, bytes(kept), _exec_refusal(f"{said} {stderr}".strip()))
        return PodmanResult(shown, code, bytes(kept), stderr)

    def exec_argv(self, name: str, *argv: str, interactive: bool = False, pass_fd: bool = False) -> list[str]:
        raise SandboxError(f"no process in a sandbox runs on the server's host {NOT_HERE}: use open_stream")

    async def open_terminal(self, name: str, cols: int, rows: int) -> PodTerminal:
        session = await self._session(name, ("env", "TERM=xterm-256color", *SHELL), tty=True)
        terminal = PodTerminal(session)
        await terminal.resize(cols, rows)
        return terminal

    async def connect(self, name: str, port: int) -> ByteStream:
        """Through the agent's relay in the sandbox (as Podman's fallback does): any replica reaches any
        sandbox with pods/exec alone, where pods/portforward would need a verb more and no NetworkPolicy."""
        try:
            session = await self._session(name, (AGENT_PATH, "relay", str(port)))
        except ExecFailed as exc:
            raise SandboxStopped(f"The sandbox cannot be reached ({exc}).") from None
        said = b""
        with anyio.move_on_after(30):
            while len(said) < 3:
                try:
                    said += await session.receive(3 - len(said))
                except (anyio.EndOfStream, anyio.BrokenResourceError):
                    break
        if said == b"ok\n":
            return session
        await session.aclose()
        reason = session.stderr.decode(errors="replace").strip().removeprefix("relay: ") or "no answer"
        if "refused" in reason.lower():
            raise PortClosed(port, reason)
        raise SandboxError(f"The connection to port {port} in the sandbox failed ({reason[:300]}). Try again.")

    # ----- what a Pod has not

    async def writable_layer(self, name: str) -> tuple[str, str]:
        raise SnapshotFailed(f"Snapshots are not available {NOT_HERE}: a Pod's files are on its node, not on the "
                             "server's host (docs/kubernetes.md). Copy what you need out with create_file_link.")

    async def freeze(self, name: str) -> bool:
        raise SnapshotFailed(f"A sandbox cannot be frozen {NOT_HERE}.")

    async def thaw(self, name: str) -> None:
        return None  # nothing is ever frozen

    def usage(self, name: str) -> Usage | None:
        return None  # the Pod's cgroup is on its node (the metrics API would be a Role verb more)

    async def image_id(self, image: str) -> str:
        return image  # each node pulls by name; the server never holds an image of its own

    async def host_info(self) -> dict[str, Any]:
        return {}

    async def version(self) -> str:
        return await self.api.version()

    async def bridge_network(self, name: str, labels: Mapping[str, str]) -> BridgeNetwork:
        raise SandboxError(f"there is no bridge network of the server's {NOT_HERE}: egress is NetworkPolicy")

    async def network_users(self, name: str) -> list[str]:
        return []

    async def network_names(self) -> list[str]:
        return []

    async def address(self, name: str, network: str) -> str:
        pod = await self.api.get_pod(name)
        return str(((pod or {}).get("status") or {}).get("podIP") or "")

    async def network_addresses(self, network: str) -> set[str] | None:
        return None

    async def image_root(self, image: str) -> ImageRoot:
        raise DiskUnavailable(f"sandbox disks are Podman's only; {NOT_HERE} the Pod's ephemeral-storage limit stands "
                              "for one")

    async def keep_image(self, image: str, image_id: str) -> None:
        return None

    async def aclose(self) -> None:
        await self.api.aclose()


def _lifetime(labels: Mapping[str, str]) -> int | None:
    """Seconds from now to the sandbox's end, from its labels; None for a pooled one (no end yet)."""
    if labels.get(LABEL_POOLED) == "true":
        return None
    try:
        return max(1, int(float(labels[LABEL_EXPIRES]) - time.time()))
    except (KeyError, ValueError):
        return None


def _record_annotation(record: str) -> str:
    """A record ("file:<id>", "port:<token>") as an annotation's key: records.mcp-sandbox/<kind>.<key>.r
    (a key's name must start and end with a letter or digit, which an id may not)."""
    kind, _, key = record.partition(":")
    name = f"{kind}.{key}.r"
    if len(name) > 63 or not re.fullmatch(r"[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9]", name):
        raise ValueError(f"{record!r} cannot be an annotation's key")
    return f"{RECORDS}/{name}"


def _phase(pod: Mapping[str, Any]) -> str:
    return str((pod.get("status") or {}).get("phase") or "")


def _statuses(pod: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [s for s in (pod.get("status") or {}).get("containerStatuses") or () if s.get("name") == CONTAINER]


def _container_running(pod: Mapping[str, Any]) -> bool:
    statuses = _statuses(pod)
    return not statuses or bool((statuses[0].get("state") or {}).get("running"))


def _waiting(pod: Mapping[str, Any]) -> tuple[str, str] | None:
    for status in _statuses(pod):
        waiting = (status.get("state") or {}).get("waiting")
        if waiting:
            return str(waiting.get("reason") or ""), str(waiting.get("message") or "")
    return None


def _why_ended(pod: Mapping[str, Any]) -> str:
    status = pod.get("status") or {}
    for container in _statuses(pod):
        ended = (container.get("state") or {}).get("terminated")
        if ended:
            return f"its container ended: {ended.get('reason') or 'exit code ' + str(ended.get('exitCode'))}"
    said = ": ".join(str(status[key]) for key in ("reason", "message") if status.get(key))
    return said[:500] or f"phase {_phase(pod) or 'unknown'}"


def _image(pod: Mapping[str, Any]) -> str:
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return str(containers[0].get("image") or "")


def _exec_refusal(said: str) -> str:
    """An exec session's refusal, said as Podman says a missing or stopped container (what callers match)."""
    lowered = said.lower()
    if "not found" in lowered:
        return f"no such container: {said[:500]}"
    if "not running" in lowered or "completed pod" in lowered or "terminated" in lowered:
        return f"container is not running: {said[:500]}"
    return said[:500] or "the exec session failed"

