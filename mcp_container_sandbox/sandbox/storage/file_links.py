"""File links and files: write a file into a sandbox, share one as a URL (a link recorded inside
the sandbox, so a restarted server finds it), and stream a linked file out."""

from __future__ import annotations

import logging
import secrets
import shlex
from collections.abc import Callable, Mapping
from typing import Any

import anyio

from ..backend.abstract import Backend
from ..errors import FileLinkNotFound, FileNotShareable, FileNotWritable, SandboxError
from ..model import FILE_ID_RE, LOCAL_TENANT, FileLink, Sandbox
from ..paths import DATA_DIR
from ..runtime.helpers import BOOTSTRAP
from ..runtime.runtimes import Runtimes
from .downloads import FileDownload, check_absolute_path, content_type

logger = logging.getLogger("mcp_sandbox.links")
ADOPT_TRIES = 4


class FileLinks:
    """The file links of the manager's sandboxes, and the file operations behind them."""

    def __init__(
        self, file_max_bytes: int, write_max_bytes: int, get: Callable[[str, str], Sandbox],
        live: Callable[[str], Sandbox | None], runtimes: Runtimes, backend: Backend,
        spawn_options: Callable[[], dict[str, Any]],
    ) -> None:
        self.file_max_bytes, self.write_max_bytes = file_max_bytes, write_max_bytes
        self._get, self._live, self.runtimes = get, live, runtimes
        self._backend, self._spawn_options = backend, spawn_options
        self._links: dict[str, FileLink] = {}

    def forget(self, container_id: str) -> None:
        """The sandbox is gone, and its links with it."""
        for file_id in [f for f, link in self._links.items() if link.container_id == container_id]:
            del self._links[file_id]

    async def adopt(self, sandbox: Sandbox) -> None:
        """Read back the links a sandbox recorded (after a restart of the server). A read that
        fails (a restart adopts every sandbox at once) is tried again: links dropped here are gone."""
        for attempt in range(ADOPT_TRIES):
            try:
                result = await self.runtimes.exec_runtime.call(sandbox, "list_links", stdout_limit=16 * 1024 * 1024)
                break
            except SandboxError as exc:
                logger.warning("could not read file links of sandbox %s (attempt %d of %d): %s", sandbox.container_id,
                               attempt + 1, ADOPT_TRIES, exc)
                if attempt + 1 == ADOPT_TRIES or self._live(sandbox.container_id) is None:
                    return
                await anyio.sleep(0.5 * 2**attempt)
        fields = result.stdout.split(b"\0")
        for file_id_raw, path_raw in zip(fields[0::2], fields[1::2]):
            file_id = file_id_raw.decode("ascii", errors="replace")
            path = path_raw.decode("utf-8", errors="replace")
            if FILE_ID_RE.match(file_id) and path.startswith("/"):
                self._links[file_id] = FileLink(file_id, sandbox.container_id, path, 0, content_type(path))

    def learn(self, container_id: str, records: Mapping[str, str]) -> None:
        """The links another server made for a sandbox, from its records ("file:<id>" -> path)."""
        for record, path in records.items():
            kind, _, file_id = record.partition(":")
            if kind == "file" and FILE_ID_RE.match(file_id) and file_id not in self._links and path.startswith("/"):
                self._links[file_id] = FileLink(file_id, container_id, path, 0, content_type(path))

    async def write_file(
        self, container_id: str, path: str, data: bytes, mode: int | None = None, tenant: str = LOCAL_TENANT
    ) -> int:
        """Write a file in the sandbox, parents created, no shell quoting; returns its size."""
        sandbox = self._get(container_id, tenant)
        check_absolute_path(path)
        if len(data) > self.write_max_bytes:
            raise FileNotWritable(
                f"The content is {len(data):,} bytes; write_file takes up to {self.write_max_bytes:,} "
                "(SANDBOX_WRITE_MAX_BYTES). Write it in parts and join them with execute_command (cat a b > c)."
            )
        file_mode = 0o644 if mode is None else mode
        await self.runtimes.ask(sandbox, lambda runtime: runtime.put(sandbox, path, data, file_mode))
        return len(data)

    async def create_file_link(self, container_id: str, path: str, tenant: str = LOCAL_TENANT) -> FileLink:
        sandbox = self._get(container_id, tenant)
        check_absolute_path(path)
        file_id = secrets.token_urlsafe(24)
        verdict_text = await self.runtimes.ask(
            sandbox, lambda runtime: runtime.link(sandbox, path, self.file_max_bytes, file_id))
        verdict = verdict_text.strip().split(" ")
        shown = path[:200]
        reasons = {
            "missing": f"{shown!r} does not exist in sandbox {container_id}. Check the path with execute_command (ls -la).",
            "broken-link": f"{shown!r} is a symbolic link whose target does not exist.",
            "directory": f"{shown!r} is a directory; only regular files can be shared. Archive it first "
            f"(e.g. tar czf /tmp/dir.tar.gz -C {shlex.quote(shown)} .) and share the archive.",
            "special": f"{shown!r} is not a regular file (a device, FIFO or socket); only regular files can be shared.",
            "unreadable": f"{shown!r} cannot be read inside the sandbox. Check its permissions.",
            "state-unwritable": f"The sandbox's {DATA_DIR} cannot be written, so no link can be recorded.",
        }
        if verdict[0] == "file" and len(verdict) == 2 and verdict[1].isdigit():
            link = FileLink(file_id, sandbox.container_id, path, int(verdict[1]), content_type(path))
            if self._backend.shared:  # any server serves the link (the sandbox's own record is for restarts)
                await self._backend.put_records(sandbox.name, {f"file:{file_id}": path})
            self._links[file_id] = link
            return link
        if verdict[0] == "too-big":
            raise FileNotShareable(
                f"{shown!r} is {int(verdict[1]):,} bytes; files up to {self.file_max_bytes:,} bytes can be "
                "shared (SANDBOX_FILE_MAX_BYTES). Compress or split it first."
            )
        raise FileNotShareable(reasons.get(verdict[0], f"Could not check {shown!r} (answer {verdict[0][:40]!r})."))

    async def open_file(self, file_id: str) -> FileDownload:
        """Start streaming a linked file out of its sandbox."""
        link = self._links.get(file_id) if isinstance(file_id, str) else None
        if link is None:
            raise FileLinkNotFound("Unknown file link.")
        sandbox = self._live(link.container_id)
        if sandbox is None or sandbox.expired():
            raise FileLinkNotFound("The sandbox of this file link no longer exists.")
        argv = ["/bin/sh", "-c", BOOTSTRAP, "mcp-sandbox", "serve_file", link.path]
        if self._backend.host_processes:
            download = FileDownload(self._backend.exec_argv(sandbox.name, *argv), link, self._spawn_options())
        else:
            download = FileDownload(argv, link, open_stream=lambda: self._backend.open_stream(sandbox.name, *argv))
        await download.start()
        return download
