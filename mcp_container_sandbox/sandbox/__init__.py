"""The sandbox domain: sandboxes as Podman containers, and what runs, connects and is kept in them.
It knows Podman (and, next, Kubernetes) and nothing of MCP or HTTP. This is its public face:
``SandboxManager`` (manager.py) is the facade the tool layer and the HTTP side call; the rest are
the records and errors they see.

    backend/   where a sandbox lives: the Backend protocol, Podman, disks, layers, namespaces
    runtime/   what runs inside: the agent channel, the podman exec fallback, command records
    network/   egress policy and proxy, preview links
    storage/   snapshots, file links and downloads, reading files
    (here)     the facade and what joins the parts: creation, the pool, lifecycle, quotas
"""

from ..settings import SandboxSettings
from .backend.abstract import Backend, Usage
from .backend.terminal import Terminal
from .background import BackgroundTasks
from .contract import LIMIT_FLAGS, LIMITS, LIMITS_IN_WORDS, MEMORY_MB, ULIMIT_FLAGS
from .errors import (
    FileLinkNotFound,
    PortClosed,
    PortLinkNotFound,
    SandboxError,
    SandboxNotFound,
)
from .clock import clock as lifetime_clock  # (the submodule keeps the name clock)
from .manager import SandboxManager
from .model import FILE_ID_RE, LOCAL_TENANT, TENANT_RE, FileLink, Sandbox, VolumeMount, utc_iso
from .network.preview_links import PortLink
from .runtime.command_records import CommandState, CommandSummary, killed_by
from .storage.file_reading import Entry, FileSlice
from .storage.snapshots import Snapshot

__all__ = [
    "FILE_ID_RE", "LIMITS", "LIMITS_IN_WORDS", "LIMIT_FLAGS", "LOCAL_TENANT", "MEMORY_MB", "TENANT_RE", "ULIMIT_FLAGS",
    "Backend", "BackgroundTasks", "CommandState", "CommandSummary", "Entry", "FileLink", "FileLinkNotFound", "FileSlice",
    "PortClosed", "PortLink", "PortLinkNotFound", "Sandbox", "SandboxError", "SandboxManager", "SandboxNotFound", "SandboxSettings",
    "Snapshot", "Terminal", "Usage", "VolumeMount", "killed_by", "lifetime_clock", "utc_iso",
]
