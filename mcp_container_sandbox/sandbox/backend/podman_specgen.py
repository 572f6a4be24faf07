"""A sandbox's container as Podman's REST API takes it: the libpod ``SpecGenerator`` that
``podman run`` itself builds from ``run_args`` (podman.py) and sends when it talks to a service
(what ``podman --remote run`` sends, field for field, for the flags a sandbox is made with).
tests/integration/test_podman_api.py holds the two to the same container by ``podman inspect``."""

from __future__ import annotations

from typing import Any

from ..contract import CPUS, MEMORY_LIMIT_BYTES, PIDS, ULIMIT_FLAGS
from .abstract import ContainerSpec

CPU_PERIOD = 100_000  # what --cpus is turned into: a quota per period of 100 ms


def rlimits() -> list[dict[str, Any]]:
    """ULIMIT_FLAGS ("--ulimit", "nofile=1024:1024", ...) as the API's rlimits."""
    limits = []
    for flag in ULIMIT_FLAGS[1::2]:
        kind, values = flag.split("=", 1)
        soft, _, hard = values.partition(":")
        limits.append({"type": kind, "soft": int(soft), "hard": int(hard or soft)})
    return limits


def _mounts(spec: ContainerSpec) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """--tmpfs and --volume as the API's mounts, and the volumes that go with the container."""
    mounts: list[dict[str, Any]] = []
    for value in spec.tmpfs:
        destination, _, options = value.partition(":")
        mounts.append({"destination": destination, "type": "tmpfs", "source": "tmpfs",
                       "options": [option for option in options.split(",") if option]})
    anonymous: list[dict[str, Any]] = []
    for value in spec.volumes:
        parts = value.split(":")
        if len(parts) == 1:
            anonymous.append({"Name": "", "Dest": parts[0]})
            continue
        mount: dict[str, Any] = {"destination": parts[1], "type": "bind", "source": parts[0]}
        if len(parts) > 2:
            mount["options"] = parts[2].split(",")
        mounts.append(mount)
    return mounts, anonymous


def spec_generator(spec: ContainerSpec, runtime: str = "") -> dict[str, Any]:
    """The body of ``POST /libpod/containers/create`` for a sandbox: always the product's limits."""
    mounts, anonymous = _mounts(spec)
    body: dict[str, Any] = {
        "name": spec.name, "hostname": "sandbox", "labels": dict(spec.labels), "init": True,
        "annotations": {"io.kubernetes.cri-o.TTY": "false"}, "httpproxy": True, "stop_timeout": 10,
        "systemd": "true", "sdnotifyMode": "container", "manage_password": True, "umask": "0022",
        "image_volume_mode": "anonymous", "seccomp_policy": "default", "cgroups_mode": "enabled",
        "use_image_hosts": False,
        # LIMIT_FLAGS, HARDENING_FLAGS and ULIMIT_FLAGS (contract.py), as podman run turns them into the spec
        "resource_limits": {
            "memory": {"limit": MEMORY_LIMIT_BYTES, "swap": MEMORY_LIMIT_BYTES},
            "cpu": {"quota": int(CPUS * CPU_PERIOD), "period": CPU_PERIOD},
            "pids": {"limit": PIDS},
        },
        "cap_drop": ["ALL"], "no_new_privileges": True, "r_limits": rlimits(),
        "log_configuration": {"driver": "none"},
        "mounts": mounts,
    }
    if anonymous:
        body["volumes"] = anonymous
    if spec.network == "none":
        body["netns"], body["Networks"] = {"nsmode": "none"}, {}
    elif spec.network.startswith("ns:"):  # a namespace of the server's (own_netns.py)
        body["netns"] = {"nsmode": "path", "value": spec.network[3:]}
    elif spec.network:
        body["netns"], body["Networks"] = {"nsmode": "bridge"}, {spec.network: {}}
    if spec.dns:
        body["dns_server"] = list(spec.dns)
    if spec.env:
        body["env"] = dict(entry.split("=", 1) if "=" in entry else (entry, "") for entry in spec.env)
    if spec.workdir:
        body["work_dir"] = spec.workdir
    if runtime:
        body["oci_runtime"] = runtime
    command = list(spec.command)
    if spec.rootfs:
        body.update(rootfs=spec.rootfs, image="", command=command)
    else:  # the image's own entrypoint would not run our command
        body.update(image=spec.image, raw_image_name=spec.image, entrypoint=command[:1], command=command[1:])
    return body
