"""Where a sandbox lives: start, list, inspect and remove its container, and a byte stream into it.

``Backend`` is the seam a second home for sandboxes (Kubernetes pods) plugs into; ``PodmanBackend``
is the one we have. The manager decides what a sandbox is made of (limits, labels, its disk);
the backend only knows how to make, find and remove it, and how to run a process inside.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import PodmanError
from .podman import Podman, PodmanResult, is_missing_container


@dataclass(frozen=True)
class Container:
    """A sandbox's container as the backend lists it."""

    name: str
    labels: Mapping[str, str]
    running: bool
    image: str


class Backend(Protocol):
    async def start(self, name: str, flags: Sequence[str], labels: Mapping[str, str], network: str,
                    image_args: Sequence[str]) -> str:
        """Start a sandbox's container; returns what the backend warned about (may be "")."""

    async def restart(self, name: str) -> None:
        """Start a stopped container again (after a reboot of the host)."""

    async def remove(self, name: str) -> PodmanResult:
        """Remove a container and what goes with it; a container already gone is no failure."""

    async def list(self, labels: Mapping[str, str]) -> list[Container]:
        """The containers carrying all these labels."""

    async def status(self, name: str) -> PodmanResult:
        """The container's state ("running", "exited", ...) on stdout."""

    async def exec(self, name: str, *argv: str, stdin: bytes | None = None, stdout_limit: int = 1024 * 1024,
                   timeout: float = 60) -> PodmanResult:
        """Run a process in the sandbox to its end; a failure is in the result, not raised."""

    def exec_argv(self, name: str, *argv: str, interactive: bool = False) -> list[str]:
        """The host command line of a long-lived process in the sandbox (a byte stream both ways)."""

    async def image_id(self, image: str) -> str:
        """The id of an image as the backend has it, "" when it has none."""

    async def host_info(self) -> dict[str, Any]:
        """What the backend says of its host (for the limits check); {} when it cannot say."""

    async def version(self) -> str:
        """The backend's version; raises when it does not answer (health)."""


class PodmanBackend:
    """Sandboxes as containers of the local Podman."""

    def __init__(self, podman: Podman) -> None:
        self.podman = podman

    async def start(self, name: str, flags: Sequence[str], labels: Mapping[str, str], network: str,
                    image_args: Sequence[str]) -> str:
        args = ["run", "-d", "--name", name, *flags]
        for key, value in labels.items():
            args += ["--label", f"{key}={value}"]
        if network:
            args += ["--network", network]
        started = await self.podman.run(*args, *image_args, timeout=300)
        return started.stderr

    async def restart(self, name: str) -> None:
        await self.podman.run("start", name, timeout=60)

    async def remove(self, name: str) -> PodmanResult:
        return await self.podman.run("rm", "-f", "-v", "-t", "0", "--", name, check=False, timeout=120)

    async def list(self, labels: Mapping[str, str]) -> list[Container]:
        filters = [arg for key, value in labels.items() for arg in ("--filter", f"label={key}={value}")]
        result = await self.podman.run("ps", "-a", "--format", "json", *filters)
        containers = []
        for entry in json.loads(result.stdout or b"[]") or []:
            names = entry.get("Names") or []
            containers.append(Container(names[0] if names else entry.get("Id", ""), entry.get("Labels") or {},
                                        entry.get("State") == "running", entry.get("Image", "")))
        return containers

    async def status(self, name: str) -> PodmanResult:
        return await self.podman.run(
            "inspect", "--format", "{{.State.Status}}", "--type", "container", name, check=False, timeout=30
        )

    async def exec(self, name: str, *argv: str, stdin: bytes | None = None, stdout_limit: int = 1024 * 1024,
                   timeout: float = 60) -> PodmanResult:
        interactive = ["-i"] if stdin is not None else []
        return await self.podman.run("exec", *interactive, name, *argv, stdin=stdin, stdout_limit=stdout_limit,
                                     check=False, timeout=timeout)

    def exec_argv(self, name: str, *argv: str, interactive: bool = False) -> list[str]:
        return self.podman.argv("exec", *(["-i"] if interactive else []), name, *argv)

    async def image_id(self, image: str) -> str:
        inspected = await self.podman.run("image", "inspect", "--format", "{{.Id}}", "--", image, check=False, timeout=60)
        return inspected.stdout.decode(errors="replace").strip() if inspected.exit_code == 0 else ""

    async def host_info(self) -> dict[str, Any]:
        result = await self.podman.run("info", "--format", "json", check=False, timeout=60)
        try:
            return json.loads(result.stdout or b"{}") if result.exit_code == 0 else {}
        except ValueError:
            return {}

    async def version(self) -> str:
        result = await self.podman.run("version", "--format", "{{.Client.Version}}", timeout=10)
        return result.stdout.decode(errors="replace").strip()


def removal_failed(result: PodmanResult) -> PodmanError | None:
    """The error of a removal that failed for a reason other than the container being gone."""
    if result.exit_code != 0 and not is_missing_container(result.stderr):
        return PodmanError(result.argv, result.exit_code, result.stderr, "Try destroy_container again.")
    return None
