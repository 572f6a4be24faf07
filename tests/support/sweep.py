"""For tests and benchmarks: remove what a run left on the host after its sandboxes were removed
behind the server's back (``podman rm`` by label), and build the test app they put into
sandboxes. Not used by the server."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from mcp_container_sandbox.sandbox.backend.netns import delete_namespace
from mcp_container_sandbox.sandbox.backend.own_netns import NETNS_PREFIX, ORPHAN_SECONDS, held_addresses_args, orphans
from mcp_container_sandbox.sandbox.backend.podman_images import LABEL_HOLDS_IMAGE


def release_namespace(base: str, namespace: str) -> None:
    """Unmount and delete every disk of a namespace whose containers are gone: for the sweeps of
    tests and benchmarks, which remove their sandboxes with ``podman rm`` behind the server's back."""
    directory = Path(base) / namespace
    if not directory.is_dir():
        return
    volumes = list((directory / ".volumes").glob("*/*"))  # storage/volumes.py: <tenant key>/<name>
    for disk in directory.iterdir():
        for mount_point in (disk / "root", disk / "fs", *(volumes if disk.name == ".volumes" else ())):
            if os.path.ismount(mount_point) and subprocess.run(["umount", str(mount_point)]).returncode != 0:
                subprocess.run(["umount", "-l", str(mount_point)])
    shutil.rmtree(directory, ignore_errors=True)


def image_holders() -> set[str]:
    """The image holders on this host, for the sweeps of tests and benchmarks, which remove the
    ones their run made."""
    listed = subprocess.run(["podman", "ps", "-a", "--format", "{{.Names}}", "--filter", f"label={LABEL_HOLDS_IMAGE}"],
                            capture_output=True, text=True)
    return set(listed.stdout.split())


def remove_image_holders(keep: set[str]) -> None:
    """Remove the image holders made since ``keep`` was listed with image_holders()."""
    made = image_holders() - keep
    if made:
        subprocess.run(["podman", "rm", "-f", *made], capture_output=True)


def release_network_namespaces(min_age: float = 10) -> None:
    """Delete the sandbox network namespaces (backend/own_netns.py) no container holds any more and older
    than ``min_age`` seconds: for the sweeps of tests and benchmarks, which remove sandboxes with
    ``podman rm`` behind the server's back (by default any older than 10 s: a server's pool refilling
    meanwhile may have made one for a container not made yet)."""
    listed = subprocess.run(["podman", *held_addresses_args()], capture_output=True, text=True)
    if listed.returncode == 0:
        in_use = (NETNS_PREFIX + address for address in listed.stdout.split())
        for name in orphans(in_use, now=time.time() + ORPHAN_SECONDS - min_age):
            delete_namespace(name)


def build_static(source: Path, dest: Path) -> bytes:
    """A static binary of a C program (musl-gcc, else gcc), which runs in any sandbox image."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    said = ""
    for compiler in ("musl-gcc", "gcc"):
        built = subprocess.run([compiler, "-static", "-O2", "-o", str(dest), str(source)], capture_output=True, text=True)
        if built.returncode == 0:
            return dest.read_bytes()
        said = built.stderr
    raise RuntimeError(f"could not build {source.name}: {said[-2000:]}")
