"""The part of the sandbox manager's facade that works inside a sandbox: its commands
(runtime/commands.py) and its files (storage/file_links.py, storage/file_reading.py). Each
method hands the call to the part that does it; SandboxManager (manager.py) holds the parts."""

from __future__ import annotations

from .model import LOCAL_TENANT, FileLink
from .runtime.command_records import CommandState, CommandSummary
from .runtime.commands import CommandRunner, ProgressCallback
from .storage.downloads import FileDownload
from .storage.file_links import FileLinks
from .storage.file_reading import Entry, FileReader, FileSlice


class InsideSandboxes:
    commands: CommandRunner
    links: FileLinks
    reader: FileReader

    # ----- commands (commands.py)

    async def execute(
        self, container_id: str, command: str, timeout_seconds: int, tenant: str = LOCAL_TENANT,
        on_progress: ProgressCallback | None = None, stdin: bytes | None = None, keep_stdin_open: bool = False,
        tty: bool = False,
    ) -> CommandState:
        return await self.commands.execute(container_id, command, timeout_seconds, tenant, on_progress, stdin,
                                           keep_stdin_open, tty)

    async def write_stdin(
        self, container_id: str, command_id: str, data: bytes, close: bool, tenant: str = LOCAL_TENANT
    ) -> tuple[CommandState, int]:
        return await self.commands.write_stdin(container_id, command_id, data, close, tenant)

    async def send_signal(self, container_id: str, command_id: str, signal: str, tenant: str = LOCAL_TENANT
                          ) -> tuple[CommandState, str]:
        return await self.commands.send_signal(container_id, command_id, signal, tenant)

    async def wait_for_command(self, container_id: str, command_id: str, wait_seconds: float,
                               tenant: str = LOCAL_TENANT, on_progress: ProgressCallback | None = None,
                               stdout_offset: int | None = None, stderr_offset: int | None = None) -> CommandState:
        return await self.commands.wait_for_command(container_id, command_id, wait_seconds, tenant, on_progress,
                                                    stdout_offset, stderr_offset)

    async def read_command(self, container_id: str, command_id: str, tenant: str = LOCAL_TENANT,
                           stdout_offset: int | None = None, stderr_offset: int | None = None) -> CommandState:
        return await self.commands.read_command(container_id, command_id, tenant, stdout_offset, stderr_offset)

    async def list_commands(self, container_id: str, tenant: str = LOCAL_TENANT) -> list[CommandSummary]:
        return await self.commands.list_commands(container_id, tenant)

    async def running_commands(self, container_id: str, tenant: str = LOCAL_TENANT) -> list[str]:
        return await self.commands.running_commands(container_id, tenant)

    def known_running_commands(self, container_id: str) -> list[str] | None:  # None: only the sandbox can tell
        return self.commands.known_running(container_id)

    def gone_command(
        self, container_id: str, command_id: str, tenant: str = LOCAL_TENANT, stopped: bool = False
    ) -> CommandState | None:
        return self.commands.gone_command(container_id, command_id, tenant, stopped)

    # ----- files (storage/file_links.py)

    async def write_file(
        self, container_id: str, path: str, data: bytes, mode: int | None = None, tenant: str = LOCAL_TENANT
    ) -> int:
        return await self.links.write_file(container_id, path, data, mode, tenant)

    async def create_file_link(self, container_id: str, path: str, tenant: str = LOCAL_TENANT) -> FileLink:
        return await self.links.create_file_link(container_id, path, tenant)

    async def open_file(self, file_id: str) -> FileDownload:
        return await self.links.open_file(file_id)

    async def read_file(self, container_id: str, path: str, offset: int = 0, length: int | None = None,
                        tenant: str = LOCAL_TENANT) -> FileSlice:
        return await self.reader.read(container_id, path, offset, length, tenant)

    async def list_files(self, container_id: str, path: str, depth: int = 1, tenant: str = LOCAL_TENANT
                         ) -> tuple[list[Entry], bool]:
        return await self.reader.list(container_id, path, depth, tenant)
