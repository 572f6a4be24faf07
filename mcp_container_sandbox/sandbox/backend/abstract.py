"""Where a sandbox lives, as the rest of the server sees it: the ``Backend`` protocol (start, list,
inspect and remove a sandbox's container; a process or a byte stream inside it) and the records
it speaks in. ``PodmanBackend`` (podman.py) runs them on this host, ``KubernetesBackend``
(kubernetes/backend.py) as Pods of a cluster. containers.py (one level up) decides what a sandbox is made of; a backend only carries it out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from anyio.abc import ByteStream

from .podman_cli import PodmanResult
from .terminal import Terminal


@dataclass(frozen=True)
class Container:
    """A sandbox's container as the backend lists it."""

    name: str
    labels: Mapping[str, str]
    running: bool
    image: str
    paused: bool = False  # frozen by Podman (a server stopped while taking a snapshot)
    # What servers recorded on it for each other (put_records): "file:<id>" -> path, "port:<token>" -> ...
    records: Mapping[str, str] = field(default_factory=dict)
    ours: bool = False  # made by this very server (where shared): it knows it already
    address: str = ""  # its address where shared (a Pod's IP): what the egress proxy knows it by


@dataclass(frozen=True)
class ContainerSpec:
    """What a sandbox's container is made of. Every backend gives it the product's limits and
    hardening (contract.py) and a minimal init; what varies is here."""

    name: str
    labels: Mapping[str, str]
    command: Sequence[str]
    image: str = ""  # the image to run, or
    rootfs: str = ""  # a root file system prepared on the host (a sandbox's own disk)
    network: str = ""  # "" for the backend's default, "none" for none
    env: Sequence[str] = ()  # NAME=value, when running from a rootfs (an image brings its own)
    workdir: str = ""
    tmpfs: Sequence[str] = ()  # path:options
    volumes: Sequence[str] = ()  # host:path, or a path alone for a volume that goes with the container
    dns: Sequence[str] = ()  # name servers for the sandbox's resolv.conf; () for the network's own


@dataclass(frozen=True)
class BridgeNetwork:
    """A bridge network of the backend's: its name, the host's interface for it, its gateways, and
    the ports of its bridge that are not sandboxes (the Podman backend's anchor, own_netns.py)."""

    name: str
    interface: str
    subnets: tuple[str, ...]
    gateways: tuple[str, ...]
    other_ports: int = 0


@dataclass(frozen=True)
class ImageRoot:
    """What ``podman run IMAGE`` would take from the image, for a container run from a rootfs."""

    image_id: str
    lowerdir: str  # the image's layer folders, topmost first, as an overlay mount takes them
    env: tuple[str, ...]
    workdir: str


@dataclass(frozen=True)
class Usage:
    """What a sandbox has used, from its cgroup: CPU time so far, and memory now."""

    cpu_seconds: float
    memory_bytes: int


class Backend(Protocol):
    name: str  # "podman", "kubernetes": what an error or /health names
    # Whether a process in a sandbox can be a host process (exec_argv: podman exec); False where only
    # open_stream reaches inside (an exec session over the Kubernetes API).
    host_processes: bool
    # Whether several servers share the sandboxes (a cluster's): each follows the others' (follow) and
    # what they record on a sandbox (put_records). False: one server's sandboxes, its state on its host.
    shared: bool

    async def start(self, spec: ContainerSpec, layer: Path | None = None) -> str:
        """Start a sandbox's container, its writable layer first filled from a snapshot's archive
        (layers.py) when given; returns what the backend warned about (may be "")."""

    async def writable_layer(self, name: str) -> tuple[str, str]:
        """The folder on this host that holds what the container changed (an overlay's upper
        folder; "" when its storage keeps none), and the id of the image under it."""

    async def freeze(self, name: str) -> bool:
        """Stop every process of the container where it stands (False: it was not running)."""

    async def connect(self, name: str, port: int) -> ByteStream:
        """A TCP connection to 127.0.0.1:port inside the container's own network namespace (no
        port published anywhere); PortClosed when nothing listens there."""

    async def thaw(self, name: str) -> None:
        """Let the container's processes carry on if they are frozen (also when a server that
        stopped meanwhile froze them); costs next to nothing when they are not."""

    async def restart(self, name: str) -> None:
        """Start a stopped container again (after a reboot of the host)."""

    async def remove(self, name: str) -> PodmanResult:
        """Remove a container and what goes with it; a container already gone is no failure."""

    async def list(self, labels: Mapping[str, str]) -> list[Container]:
        """The containers carrying all these labels."""

    async def put_records(self, name: str, records: Mapping[str, str | None]) -> None:
        """Record on the sandbox what other servers must know of it (None removes a record); nothing
        where the backend is not shared."""

    async def claim(self, name: str, labels: Mapping[str, str]) -> bool:
        """Where shared: hand a pooled sandbox out with these labels, if no other server did first (False
        then). Elsewhere True: the one server holding it has claimed it already."""

    def follow(self, labels: Mapping[str, str]) -> AsyncIterator[tuple[str, Container]]:
        """Where shared: every container with these labels as it is now ("ADDED"), then each change
        ("ADDED", "MODIFIED", "DELETED") as it comes, for as long as it is read."""

    async def status(self, name: str) -> PodmanResult:
        """The container's state ("running", "exited", ...) on stdout."""

    async def exec(self, name: str, *argv: str, stdin: bytes | None = None, stdout_limit: int = 1024 * 1024,
                   timeout: float = 60) -> PodmanResult:
        """Run a process in the sandbox to its end; a failure is in the result, not raised."""

    def exec_argv(self, name: str, *argv: str, interactive: bool = False, pass_fd: bool = False) -> list[str]:
        """The host command line of a long-lived process in the sandbox (a byte stream both ways).
        With ``pass_fd``: the command's stdin (a socket) reaches the process as its descriptor 3
        instead, and nothing relays its bytes; the command fails at once, saying so on stderr,
        where the backend cannot pass it."""

    async def open_stream(self, name: str, *argv: str) -> ByteStream:
        """A process in the sandbox whose stdin and stdout are the stream (closing it ends the process);
        what the process wrote to stderr is in the stream's ``stderr`` once it has ended, if kept."""

    def usage(self, name: str) -> Usage | None:
        """The sandbox's CPU time and memory from its cgroup; None where they cannot be read."""

    async def open_terminal(self, name: str, cols: int, rows: int) -> Terminal:
        """A terminal session of its own in the sandbox (a login shell), ``cols`` x ``rows``."""

    async def image_id(self, image: str) -> str:
        """The id of an image as the backend has it, "" when it has none."""

    async def host_info(self) -> dict[str, Any]:
        """What the backend says of its host (for the limits check); {} when it cannot say."""

    async def bridge_network(self, name: str, labels: Mapping[str, str]) -> BridgeNetwork:
        """The bridge network of that name, made (with a resolver on its gateway) if missing."""

    async def network_users(self, name: str) -> list[str]:
        """The containers attached to a network (none when it does not exist)."""

    async def network_names(self) -> list[str]:
        """The networks there are."""

    async def address(self, name: str, network: str) -> str:
        """The container's IPv4 address on the network ("" when it has none)."""

    async def network_addresses(self, network: str) -> set[str] | None:
        """The addresses the network's containers hold now; None when Podman could not say for sure."""

    async def image_root(self, image: str) -> ImageRoot:
        """The image's layers on this host (pulled when absent), for a sandbox disk to sit on;
        DiskUnavailable when the storage keeps them where an overlay cannot reach them."""

    async def keep_image(self, image: str, image_id: str) -> None:
        """Keep the image from removal while sandboxes run from its layers."""

    async def version(self) -> str:
        """The backend's version; raises when it does not answer (health)."""
