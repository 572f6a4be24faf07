"""A sandbox's Pod, as ``mcp-container-sandbox kube pod-manifest`` prints it, run by ``podman kube play``
(the one engine that runs Pod YAML on these machines) and removed after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

KUBE_NETWORK = "podman-default-kube-network"  # where podman kube play puts Pods

# This machine's Podman cannot raise rlimits (ENVIRONMENT.md): the pod's infra container gets the
# bounded ones the server's own containers are started with.
def containers_conf() -> str:
    """A containers.conf for podman kube play: the host's (CONTAINERS_CONF replaces it whole, and its
    engine's num_locks must stay the host's, whose locks are shared), with the ulimits this machine needs."""
    merged: dict[str, dict[str, Any]] = {}
    for path in [Path("/etc/containers/containers.conf"), *sorted(Path("/etc/containers/containers.conf.d").glob("*.conf"))]:
        if path.is_file():
            for section, values in tomllib.loads(path.read_text()).items():
                merged.setdefault(section, {}).update(values)
    merged.setdefault("containers", {})["default_ulimits"] = ["nofile=1024:1024", "nproc=32768:32768"]
    return "".join(_toml_table(section, values) for section, values in merged.items())


def _toml_table(name: str, values: dict[str, Any]) -> str:
    """A TOML table of strings, numbers, booleans and lists of them (JSON writes those as TOML does),
    its sub-tables after it."""
    plain = "".join(f"{key} = {json.dumps(value)}\n" for key, value in values.items() if not isinstance(value, dict))
    return f"[{name}]\n{plain}" + "".join(_toml_table(f"{name}.{key}", value)
                                          for key, value in values.items() if isinstance(value, dict))


CONTAINERS_CONF = containers_conf()


def printed_pod(namespace: str) -> dict[str, Any]:
    env = {**os.environ, "SANDBOX_NAMESPACE": namespace}
    printed = subprocess.run([sys.executable, "-m", "mcp_container_sandbox", "kube", "pod-manifest"], env=env,
                             capture_output=True, text=True, check=True, timeout=60).stdout
    return json.loads(printed)


@contextmanager
def kube_played(pod: dict[str, Any], folder: Path) -> Iterator[str]:
    """The Pod running under podman kube play; yields its name (its container: ``<name>-sandbox``)."""
    name = pod["metadata"]["name"]
    manifest, conf = folder / f"{name}.json", folder / f"{name}.conf"
    manifest.write_text(json.dumps(pod))
    conf.write_text(CONTAINERS_CONF)
    played = subprocess.run(["podman", "kube", "play", str(manifest)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "CONTAINERS_CONF": str(conf)})
    try:
        assert played.returncode == 0, played.stderr
        yield name
    finally:
        subprocess.run(["podman", "pod", "rm", "-f", "-t", "0", name], capture_output=True, timeout=120)


class PodRunner:
    """The kubelet's part for the API stand-in (tests/support/kube_api.py): a Pod created through the API
    runs under podman kube play, and its exec sessions go into it (kubelet_exec.py)."""

    def __init__(self, folder: Path) -> None:
        from support.kubelet_exec import KubeletExec

        self.folder = folder
        self.kubelet = KubeletExec(set())
        self.played: set[str] = set()
        (folder / "containers.conf").write_text(CONTAINERS_CONF)

    @staticmethod
    def played_name(name: str) -> str:
        return name

    def play(self, pod: dict[str, Any]) -> str:
        """Run the Pod; "" when it runs, else what kube play said."""
        name = pod["metadata"]["name"]
        # podman kube play 4.3 makes an emptyDir a named volume shared by every Pod that names it alike;
        # a kubelet gives each Pod its own: the stand-in names them after the Pod.
        for volume in pod["spec"].get("volumes") or ():
            volume["name"] = f"{name}-{volume['name']}"
        for mount in pod["spec"]["containers"][0].get("volumeMounts") or ():
            mount["name"] = f"{name}-{mount['name']}"
        # podman kube play 4.3 refuses an annotation longer than 63 characters (a label's limit; the API
        # server takes 256 KiB of them): what it runs goes without those; the API's record keeps them.
        annotations = pod["metadata"].get("annotations") or {}
        pod["metadata"]["annotations"] = {key: value for key, value in annotations.items() if len(value) <= 63}
        manifest = self.folder / f"{name}.json"
        manifest.write_text(json.dumps(pod))
        self.played.add(name)
        played = subprocess.run(["podman", "kube", "play", str(manifest)], capture_output=True, text=True, timeout=300,
                                env={**os.environ, "CONTAINERS_CONF": str(self.folder / "containers.conf")})
        return "" if played.returncode == 0 else played.stderr or f"kube play exited with {played.returncode}"

    @staticmethod
    def address(name: str) -> str:
        """The Pod's address on kube play's network (its status.podIP)."""
        inspected = subprocess.run(["podman", "inspect", f"{name}-sandbox", "--format",
                                    "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}"],
                                   capture_output=True, text=True, timeout=60)
        return (inspected.stdout.split() or [""])[0]

    def remove(self, name: str) -> None:
        if name not in self.played:
            return
        self.played.discard(name)
        subprocess.run(["podman", "pod", "rm", "-f", "-t", "0", name], capture_output=True, timeout=120)
        volumes = subprocess.run(["podman", "volume", "ls", "-q", "--filter", f"name={name}-"], capture_output=True,
                                 text=True, timeout=60).stdout.split()
        if volumes:
            subprocess.run(["podman", "volume", "rm", "-f", *volumes], capture_output=True, timeout=120)
