"""What a sandbox is to the server: its record, its labels in Podman, its file links."""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from datetime import UTC, datetime

from .clock import clock

LABEL_MANAGED = "mcp-sandbox.managed"
LABEL_NAMESPACE = "mcp-sandbox.namespace"
LABEL_CREATED = "mcp-sandbox.created-at"
LABEL_EXPIRES = "mcp-sandbox.expires-at"
LABEL_TENANT = "mcp-sandbox.tenant"
LABEL_IMAGE = "mcp-sandbox.image"  # a sandbox on its own disk runs from a rootfs: Podman knows no image
LABEL_POOLED = "mcp-sandbox.pooled"  # started ahead of demand; its lifetime is in CLAIM_PATH once handed out
# What shaped the sandbox (image id, runtime, network, limits, disk, helpers): a pooled sandbox
# is handed out only while this matches the server's configuration (see made_under).
LABEL_MADE_UNDER = "mcp-sandbox.made-under"
LABEL_NETWORK = "mcp-sandbox.network"  # the network it joined: "none", or a network's name ("" Podman's default)
LABEL_VOLUMES = "mcp-sandbox.volumes"  # the volumes it mounts, as JSON [[name, path, read_only], ...]
NAME_PREFIX = "mcp-sandbox-"
LOCAL_TENANT = "local"  # everyone, when the server has no tokens
TENANT_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
CONTAINER_ID_RE = re.compile(r"^[0-9a-f]{32}$")
FILE_ID_RE = re.compile(r"^[A-Za-z0-9_-]{32,64}$")


@functools.lru_cache(maxsize=16384)  # list_containers formats every sandbox's two times at each call
def utc_iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class VolumeMount:
    """One of a tenant's volumes (storage/volumes.py) in one sandbox: where, and whether it may write."""

    name: str
    path: str
    read_only: bool = False


def volumes_label(mounts: tuple[VolumeMount, ...]) -> str:
    return json.dumps([[m.name, m.path, m.read_only] for m in mounts], separators=(",", ":"))


def volumes_from_label(value: str) -> tuple[VolumeMount, ...]:
    try:
        listed = json.loads(value) if value else []
    except ValueError:
        return ()
    return tuple(VolumeMount(str(m[0]), str(m[1]), bool(m[2])) for m in listed
                 if isinstance(m, list) and len(m) == 3) if isinstance(listed, list) else ()


@dataclass
class Sandbox:
    container_id: str
    image: str
    created_at: float
    expires_at: float
    destroying: bool = False
    tenant: str = LOCAL_TENANT
    # Set when the server starts destroying it: what a command that was running is told.
    gone_why: str = ""
    network: str = ""  # as LABEL_NETWORK
    address: str = ""  # its IPv4 address on that network, once asked (the egress proxy knows it by it)
    volumes: tuple[VolumeMount, ...] = ()

    @property
    def name(self) -> str:
        return NAME_PREFIX + self.container_id

    def seconds_remaining(self, now: float | None = None) -> int:
        """Seconds left of its lifetime (``now`` from clock.now(), for a look at many)."""
        return max(0, int(self.expires_at - (clock.now() if now is None else now)))

    def expired(self, now: float | None = None) -> bool:
        """Past its lifetime (``now`` from clock.now(), for a look at many)."""
        return self.expires_at <= (clock.now() if now is None else now)


@dataclass(frozen=True)
class FileLink:
    file_id: str
    container_id: str
    path: str
    size_bytes: int
    content_type: str
