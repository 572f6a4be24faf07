"""What every sandbox gets in its state folder (paths.STATE_DIR): the shell library
(sandbox-lib.sh, shipped beside this module) and the agent binary, and the one-line scripts that
install and source them."""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile
import time
from importlib import resources
from pathlib import Path

from ..paths import AGENT_PATH, LIB_PATH, STATE_DIR

SANDBOX_LIB = resources.files(__package__).joinpath("sandbox-lib.sh").read_text(encoding="utf-8")

# Exit code 120: the library is missing (the sandbox was just started, or someone removed it).
LIB_MISSING = 120
# Exit code 121: the library could not write a command's records or output files.
RECORDS_UNWRITABLE = 121
BOOTSTRAP = f'[ -r {LIB_PATH} ] || exit {LIB_MISSING}; . {LIB_PATH}; "$@"'
INSTALL_HELPERS = f"mkdir -p {STATE_DIR} && tar -x -f - -C {STATE_DIR}"


def helpers_digest(agent: Path | None) -> str:
    """Names the helpers a sandbox gets: a new agent or library makes a new digest."""
    digest = hashlib.sha256(SANDBOX_LIB.encode())
    if agent is not None:
        digest.update(agent.read_bytes())
    return digest.hexdigest()[:16]


def helpers_files(agent: Path | None) -> list[tuple[str, bytes, int]]:
    """What every sandbox gets in STATE_DIR, as (name, content, mode): the shell library and the agent."""
    files = [(posixpath.basename(LIB_PATH), SANDBOX_LIB.encode(), 0o644)]
    if agent is not None:
        files.append((posixpath.basename(AGENT_PATH), agent.read_bytes(), 0o755))
    return files


def helpers_tar(files: list[tuple[str, bytes, int]]) -> bytes:
    """A tar stream of the helpers (helpers_files), for an install through podman exec."""
    stream = io.BytesIO()
    with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    return stream.getvalue()
