"""The Pod a sandbox is: one container with the product's exact limits (contract.py) as Kubernetes
says them, from the same ContainerSpec a Podman container is made from.

- CPU and memory: requests = limits (500m, 256Mi): Guaranteed QoS, so the kubelet gives the Pod a
  CFS quota of 50000/100000 and a memory limit of 256 MiB, exactly as ``podman run`` does.
- The container drops every capability, may not gain privileges (no_new_privs) and runs under the
  runtime's default seccomp profile; the Pod mounts no service account token and gets no service
  environment variables (nothing of the cluster is handed to what runs inside).
- The process limit (100) has no per-Pod field: it is the kubelet's ``podPidsLimit``, set on the
  nodes of the sandbox pool (docs/kubernetes.md); the server never claims it where it cannot see it.
- The state tmpfs is a memory ``emptyDir`` with its size limit; the server's data folder an
  ``emptyDir`` on the node's disk; the sandbox's disk is its ``ephemeral-storage`` limit (the kubelet
  evicts a Pod past it: no ENOSPC, see docs/kubernetes.md).
- The lifetime: ``activeDeadlineSeconds`` a while after the end the reaper enforces, so a sandbox
  ends even when no server is running.
- Labels carry what the server selects by (managed, namespace, pooled, tenant); every label of the
  spec is also an annotation, which holds values no label may (an image name, a JSON record)."""

from __future__ import annotations

import re
from typing import Any

from ...contract import CPUS, MEMORY_MB
from ..abstract import ContainerSpec

CONTAINER = "sandbox"
# What the server lists and claims sandboxes by: label values of at most 63 characters.
SELECTED_BY = ("mcp-sandbox.managed", "mcp-sandbox.namespace", "mcp-sandbox.pooled", "mcp-sandbox.tenant")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
LABEL_EGRESS = "mcp-sandbox.egress"  # what the sandboxes' NetworkPolicies select by (deploy/kubernetes/)
DEADLINE_GRACE_SECONDS = 300  # the reaper ends a sandbox first (and can snapshot it); the deadline is the backstop
TERMINATION_GRACE_SECONDS = 2  # a destroyed sandbox goes at once, as podman rm -f


def quantity(size: str) -> str:
    """A size as tmpfs options write it (64m, 1g, 65536) as a Kubernetes quantity (64Mi, 1Gi, 65536)."""
    match = re.fullmatch(r"(\d+)([kmg]?)", size.strip().lower())
    if match is None:
        raise ValueError(f"not a size: {size!r}")
    number, unit = match.groups()
    return number + {"": "", "k": "Ki", "m": "Mi", "g": "Gi"}[unit]


def _tmpfs_volume(index: int, tmpfs: str) -> tuple[dict[str, Any], dict[str, Any]]:
    path, _, options = tmpfs.partition(":")
    sizes = [option.split("=", 1)[1] for option in options.split(",") if option.startswith("size=")]
    empty_dir: dict[str, Any] = {"medium": "Memory"}
    if sizes:
        empty_dir["sizeLimit"] = quantity(sizes[0])
    return {"name": f"tmpfs-{index}", "emptyDir": empty_dir}, {"name": f"tmpfs-{index}", "mountPath": path}


def _data_volume(index: int, volume: str) -> tuple[dict[str, Any], dict[str, Any]]:
    if ":" in volume:
        raise ValueError(f"a Pod has no host folders to mount ({volume!r}): sandbox disks are Podman's only")
    return {"name": f"data-{index}", "emptyDir": {}}, {"name": f"data-{index}", "mountPath": volume}


def _labels(spec: ContainerSpec) -> dict[str, str]:
    labels = {key: value for key, value in spec.labels.items() if key in SELECTED_BY}
    for key, value in labels.items():
        if len(value) > 63 or not LABEL_VALUE.match(value):
            raise ValueError(f"label {key}={value!r} is not a Kubernetes label value (63 characters at most, "
                             "letters, digits, '-', '_', '.')")
    return labels


def egress_label(spec: ContainerSpec, policy: str) -> str:
    """The egress a sandbox's Pod gets: none when it has no network, else the server's policy."""
    return "none" if spec.network == "none" else policy


def sandbox_pod(spec: ContainerSpec, namespace: str, disk_bytes: int = 0, lifetime_seconds: int | None = None,
                runtime_class: str = "", node_selector: tuple[tuple[str, str], ...] = (),
                tolerations: tuple[tuple[str, str, str], ...] = (), egress: str = "") -> dict[str, Any]:
    """The Pod of a sandbox. ``disk_bytes``: its ephemeral-storage (0: none set); ``lifetime_seconds``:
    from now until its end (None: no deadline yet, as for a pooled one until it is claimed); ``egress``:
    the policy its NetworkPolicies select it by (LABEL_EGRESS)."""
    if spec.rootfs:
        raise ValueError("a Pod runs an image: a sandbox disk's root file system is Podman's only")
    volumes, mounts = [], []
    for index, tmpfs in enumerate(spec.tmpfs):
        volume, mount = _tmpfs_volume(index, tmpfs)
        volumes.append(volume)
        mounts.append(mount)
    for index, path in enumerate(spec.volumes):
        volume, mount = _data_volume(index, path)
        volumes.append(volume)
        mounts.append(mount)
    resources = {"cpu": f"{int(CPUS * 1000)}m", "memory": f"{MEMORY_MB}Mi"}
    if disk_bytes:
        resources["ephemeral-storage"] = str(disk_bytes)
    container: dict[str, Any] = {
        "name": CONTAINER, "image": spec.image, "command": list(spec.command),
        "resources": {"requests": dict(resources), "limits": dict(resources)},
        "securityContext": {"capabilities": {"drop": ["ALL"]}, "allowPrivilegeEscalation": False,
                            "privileged": False, "seccompProfile": {"type": "RuntimeDefault"}},
        "volumeMounts": mounts,
    }
    if spec.env:
        container["env"] = [{"name": name, "value": value} for name, _, value in (e.partition("=") for e in spec.env)]
    if spec.workdir:
        container["workingDir"] = spec.workdir
    pod_spec: dict[str, Any] = {
        "containers": [container], "volumes": volumes, "restartPolicy": "Never",
        "automountServiceAccountToken": False, "enableServiceLinks": False,
        "terminationGracePeriodSeconds": TERMINATION_GRACE_SECONDS,
    }
    if lifetime_seconds is not None:
        pod_spec["activeDeadlineSeconds"] = max(1, int(lifetime_seconds)) + DEADLINE_GRACE_SECONDS
    if runtime_class:
        pod_spec["runtimeClassName"] = runtime_class
    if node_selector:
        pod_spec["nodeSelector"] = dict(node_selector)
    if tolerations:
        pod_spec["tolerations"] = [_toleration(*toleration) for toleration in tolerations]
    if spec.dns:
        pod_spec["dnsPolicy"] = "None"
        pod_spec["dnsConfig"] = {"nameservers": list(spec.dns)}
    labels = _labels(spec)
    if egress:
        labels[LABEL_EGRESS] = egress
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": spec.name, "namespace": namespace, "labels": labels,
                     "annotations": dict(spec.labels)},
        "spec": pod_spec,
    }


def _toleration(key: str, value: str, effect: str) -> dict[str, str]:
    toleration = {"key": key, "operator": "Equal" if value else "Exists"}
    if value:
        toleration["value"] = value
    if effect:
        toleration["effect"] = effect
    return toleration
