"""Sandboxes as Podman containers: the package's public face (``from sandbox import ...``).

Layout: see the README's Layout section (which module owns what, and which way imports go).
"""

from .config import LIMIT_FLAGS, LIMITS, LIMITS_IN_WORDS, MEMORY_MB, ULIMIT_FLAGS, SandboxSettings, ServerSettings
from .errors import FileLinkNotFound, PortClosed, PortLinkNotFound, SandboxError, machinery_failure
from .limits import why_limits_fail
from .manager import SandboxManager
from .model import FILE_ID_RE, LOCAL_TENANT, TENANT_RE, utc_iso
from .podman import system_env
from .pool import changed_settings
from .ports import PortLink
from .records import CommandState, killed_by
from .snapshots import Snapshot
from .tasks import BackgroundTasks

__all__ = [
    "FILE_ID_RE", "LIMITS", "LIMITS_IN_WORDS", "LIMIT_FLAGS", "MEMORY_MB", "LOCAL_TENANT", "TENANT_RE", "ULIMIT_FLAGS", "BackgroundTasks",
    "CommandState", "FileLinkNotFound", "PortClosed", "PortLinkNotFound", "PortLink", "SandboxError", "SandboxManager", "SandboxSettings", "ServerSettings", "Snapshot",
    "changed_settings",
    "killed_by", "machinery_failure", "system_env", "utc_iso", "why_limits_fail",
]
