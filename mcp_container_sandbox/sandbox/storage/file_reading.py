"""Reading a sandbox's files without a command: read_file (a bounded slice of a file, paged by
offset) and list_files (a folder's entries, a few levels deep). Both are answered inside the
sandbox (the agent's read and ls requests, or read_file and list_files of the shell library over
podman exec), so paths and symbolic links resolve there, never on the host."""

from __future__ import annotations

import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass

from ..errors import InvalidPath, SandboxError
from ..model import LOCAL_TENANT, Sandbox, utc_iso
from ..runtime.runtimes import Runtimes
from .downloads import check_absolute_path

LIST_MAX_ENTRIES = 1000
LIST_MAX_DEPTH = 10

_WHY = {
    "missing": "{path!r} does not exist in sandbox {container_id}. List its folder with list_files.",
    "broken-link": "{path!r} is a symbolic link whose target does not exist.",
    "unreadable": "{path!r} cannot be read by the sandbox's user (permissions).",
    "directory": "{path!r} is a folder, not a file. List it with list_files.",
    "special": "{path!r} is not a regular file (a device, socket or pipe); read_file reads regular files only.",
    "not-directory": "{path!r} is a file, not a folder. Read it with read_file.",
}


@dataclass(frozen=True)
class FileSlice:
    data: bytes
    size_bytes: int
    offset: int


@dataclass(frozen=True)
class Entry:
    name: str
    path: str
    type: str  # file | dir | symlink | other
    size_bytes: int
    mode: str  # permission bits in octal, e.g. "0644"
    modified_at: str


def _refusal(frame: bytes, path: str, container_id: str) -> SandboxError:
    why = frame.split(b"\n", 1)[0].decode(errors="replace").split(" ", 1)[-1].strip()
    text = _WHY.get(why, "{path!r} could not be read (" + why[:100] + ").")
    return InvalidPath(text.format(path=path[:200], container_id=container_id))


def _type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "symlink"
    return "other"


def parse_listing(frame: bytes, path: str) -> list[Entry]:
    """Lines "<mode hex> <size> <mtime> ./<relative path>" (a name holding a newline continues on the
    next line, which does not start like an entry), as entries under path."""
    lines = frame.split(b"\n")[1:]
    raw: list[list[bytes]] = []
    for line in lines:
        fields = line.split(b" ", 3)
        if (len(fields) == 4 and fields[3].startswith(b"./") and all(fields[i].isalnum() for i in range(3))
                and fields[1].isdigit() and fields[2].isdigit()):
            raw.append(fields)
        elif raw and line:
            raw[-1][3] += b"\n" + line
    entries = []
    base = path.rstrip("/") or "/"
    for mode_hex, size, mtime, rel in raw:
        try:
            mode = int(mode_hex, 16)
        except ValueError:
            continue
        relative = rel[2:].decode("utf-8", errors="replace")
        full = posixpath.join(base, relative)
        entries.append(Entry(posixpath.basename(relative), full, _type(mode), int(size), f"{stat.S_IMODE(mode):04o}",
                             utc_iso(int(mtime))))
    return entries


class FileReader:
    """read_file and list_files over the manager's sandboxes."""

    def __init__(self, read_max_bytes: int, get: Callable[[str, str], Sandbox], runtimes: Runtimes) -> None:
        self.read_max_bytes = read_max_bytes
        self._get, self.runtimes = get, runtimes

    async def read(self, container_id: str, path: str, offset: int = 0, length: int | None = None,
                   tenant: str = LOCAL_TENANT) -> FileSlice:
        """Up to length bytes (at most read_max_bytes) of a regular file from offset."""
        sandbox = self._get(container_id, tenant)
        check_absolute_path(path)
        want = self.read_max_bytes if length is None else min(length, self.read_max_bytes)
        frame = await self.runtimes.ask(sandbox, lambda runtime: runtime.read_file(sandbox, path, offset, want))
        head, _, data = frame.partition(b"\n")
        fields = head.decode(errors="replace").split()
        if fields[:1] != ["ok"] or len(fields) != 3:
            raise _refusal(frame, path, container_id)
        size, n = int(fields[1]), int(fields[2])
        return FileSlice(data[:n], size, offset)

    async def list(self, container_id: str, path: str, depth: int = 1, tenant: str = LOCAL_TENANT
                   ) -> tuple[list[Entry], bool]:
        """A folder's entries, depth levels deep (1: its own), sorted by path; and whether the list
        was cut at LIST_MAX_ENTRIES."""
        sandbox = self._get(container_id, tenant)
        check_absolute_path(path)
        frame = await self.runtimes.ask(
            sandbox, lambda runtime: runtime.list_files(sandbox, path, depth, LIST_MAX_ENTRIES))
        if not frame.startswith(b"ok\n") and frame.strip() != b"ok":
            raise _refusal(frame, path, container_id)
        entries = parse_listing(frame, path)
        truncated = len(entries) > LIST_MAX_ENTRIES
        return sorted(entries[:LIST_MAX_ENTRIES], key=lambda entry: entry.path), truncated
