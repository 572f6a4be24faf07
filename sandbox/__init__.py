"""Sandboxes as Podman containers: the package's public face (``from sandbox import ...``).

Layout (imports point down this list, never up):
  manager    SandboxManager: creates, tracks, reaps and destroys sandboxes; runs commands; shares files
  pool       the warm pool's rule (a pooled sandbox matches the configuration in force)
  files      path checks, content types, downloads streamed out of a sandbox
  records    what a sandbox records about its commands (the in-sandbox shell library) and how it is read
  channel    the persistent command channel: sandbox-agent's protocol over podman exec -i
  disks      each sandbox's own disk: a loop-mounted ext4 image under the overlay it runs from
  podman     the podman CLI helper, and what Podman says about the host
  tasks      background tasks
  model      a sandbox's record, labels and file links
  config     the product's limits and the settings read from the environment
  errors     one tree of failures, each message saying what to do next
  layout     where the server keeps its things inside every sandbox
"""

from .config import LIMIT_FLAGS, LIMITS, ULIMIT_FLAGS, SandboxSettings, ServerSettings
from .errors import FileLinkNotFound, SandboxError, machinery_failure
from .manager import SandboxManager
from .model import FILE_ID_RE, LOCAL_TENANT, TENANT_RE, utc_iso
from .limits import why_limits_fail
from .podman import system_env
from .pool import changed_settings
from .records import CommandState
from .tasks import BackgroundTasks

__all__ = [
    "FILE_ID_RE", "LIMITS", "LIMIT_FLAGS", "LOCAL_TENANT", "TENANT_RE", "ULIMIT_FLAGS", "BackgroundTasks",
    "CommandState", "FileLinkNotFound", "SandboxError", "SandboxManager", "SandboxSettings", "ServerSettings",
    "changed_settings",
    "machinery_failure", "system_env", "utc_iso", "why_limits_fail",
]
