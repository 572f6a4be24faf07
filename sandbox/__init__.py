"""Sandboxes as Podman containers: the package's public face (``from sandbox import ...``).

Layout (imports point down this list, never up):
  manager    SandboxManager, the facade: create, adopt, reap, destroy; delegates to the modules below
  commands   run a command, follow it, read its output back
  links      write files, share them as links, stream them out
  pool       the warm pool and its rule (a pooled sandbox matches the configuration in force)
  limits     whether Podman applies the limits here
  gone       what was running when a sandbox went away
  runtime    what runs inside: the agent's channel and podman exec behind one interface
  backend    where a sandbox lives: start, list, remove, exec (Podman)
  records    what a sandbox records about its commands (the in-sandbox shell library) and how it is read
  channel    sandbox-agent's protocol over podman exec -i
  disks      each sandbox's own disk: a loop-mounted ext4 image under the overlay it runs from
  files      path checks, content types, a download's byte stream
  podman     the podman CLI helper
  tasks      background tasks
  model      a sandbox's record, labels and file links
  config     the product's limits and the settings read from the environment
  errors     one tree of failures, each message saying what to do next
  layout     where the server keeps its things inside every sandbox
"""

from .config import LIMIT_FLAGS, LIMITS, ULIMIT_FLAGS, SandboxSettings, ServerSettings
from .errors import FileLinkNotFound, SandboxError, machinery_failure
from .limits import why_limits_fail
from .manager import SandboxManager
from .model import FILE_ID_RE, LOCAL_TENANT, TENANT_RE, utc_iso
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
