"""A sandbox's Pod, as ``mcp-container-sandbox kube pod-manifest`` prints it, run by ``podman kube play``
(the one engine that runs Pod YAML on these machines) and removed after."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# This machine's Podman cannot raise rlimits (ENVIRONMENT.md): the pod's infra container gets the
# bounded ones the server's own containers are started with.
CONTAINERS_CONF = '[containers]\ndefault_ulimits = ["nofile=1024:1024", "nproc=32768:32768"]\n'


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
